"""Crash safety with real processes killed by SIGKILL: training resumes exactly, generation completes its
file, an export is never left half-written.

The tiny world (random 1-layer Llama, random BERT sentence embedder, 48 reviews in a CSV, keyword personas)
and its train.py runs come from tests/helpers.py (World; the session fixture ``tiny_world`` in conftest.py);
the config is configs/quickstart.yaml with only models, data and sizes replaced, so checkpoints, logger and
export go where a user's would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import gate_tensors, popen, wait_for, wait_ok

from mop.export import GateExport, _recover_interrupted, read_export_config, save_pretrained

# every test here waits for real train.py / generate.py processes (the tiny world's three runs, then killed
# and resumed ones): about 2 minutes of CPU on 2 cores, so they run with the slow tier (CI runs every test)
pytestmark = pytest.mark.slow


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------ training
def test_training_killed_mid_epoch_resumes_to_the_uninterrupted_result(tiny_world):
    """kill -9 during epoch 2 (the last), then `train.py fit --ckpt_path last`: same gate, checkpoint and
    metrics."""
    w = tiny_world
    name = "killed"
    ckpt = w.run_dir(name) / "runs/tiny/checkpoints/last.ckpt"
    proc = w.start_train(name)
    try:
        assert wait_for(ckpt.exists, proc), ("no checkpoint was written:\n"
                                             + (w.root / f"{name}.log").read_text()[-3000:])
    finally:
        _kill(proc)  # the first last.ckpt is written at the end of epoch 1: the kill lands in epoch 2
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _ckpt(ckpt)
    assert killed_at["epoch"] == 0 and killed_at["global_step"] > 0  # the end of epoch 1 of 2
    gate_dir = w.run_dir(name) / "runs/tiny/gate"
    assert not gate_dir.exists()  # nothing exported by a run that did not finish
    # --ckpt_path last finds <default_root_dir>/checkpoints/last.ckpt (not a folder named by a new logger
    # run id)
    resume = popen(["train.py", "fit", "-c", str(w.config), "--validate_before_fit", "false",
                    "--ckpt_path", "last"],
                   w.run_dir(name), w.cache, w.root / "resume.log")
    out = wait_ok(resume, w.root / "resume.log")
    assert "last checkpoint: runs/tiny/checkpoints/last.ckpt" in out

    ref = w.finished("ref")
    ref_gate, got_gate = gate_tensors(ref / "runs/tiny/gate"), gate_tensors(gate_dir)
    assert ref_gate.keys() == got_gate.keys()
    diff = max(float((ref_gate[k] - got_gate[k]).abs().max()) for k in ref_gate)
    assert diff == 0.0, f"resumed gate differs from the uninterrupted one by {diff}"
    ref_ckpt, got_ckpt = _ckpt(ref / "runs/tiny/checkpoints/last.ckpt"), _ckpt(ckpt)
    assert got_ckpt["epoch"] == ref_ckpt["epoch"] == 1 and got_ckpt["global_step"] == ref_ckpt["global_step"]
    for key, value in ref_ckpt["state_dict"].items():
        assert torch.equal(got_ckpt["state_dict"][key], value), key
    # the optimiser state resumed too (Adam moments), and the validation / training metrics are the same
    # numbers
    ref_opt, got_opt = ref_ckpt["optimizer_states"][0]["state"], got_ckpt["optimizer_states"][0]["state"]
    assert all(torch.equal(ref_opt[p]["exp_avg_sq"], got_opt[p]["exp_avg_sq"]) for p in ref_opt)
    ref_metrics = read_export_config(ref / "runs/tiny/gate")["metrics"]
    got_metrics = read_export_config(gate_dir)["metrics"]
    assert "val/nll_per_token" in ref_metrics and "train/nll_epoch" in ref_metrics
    assert got_metrics == ref_metrics
    # and training did move the gate (the comparison is not between two untouched initialisations)
    start = killed_at["state_dict"]["gate.W_x.weight"]
    assert not torch.equal(start, ref_ckpt["state_dict"]["gate.W_x.weight"])


def test_resuming_from_a_checkpoint_file_keeps_the_settings_given_now(tiny_world, tmp_path):
    """Lightning 2.6 would replace --model.* by the checkpoint's hparams: a new export_dir is honoured."""
    import shutil

    w = tiny_world
    ref = w.finished("ref")
    ckpt = tmp_path / "ref-last.ckpt"
    shutil.copy(ref / "runs/tiny/checkpoints/last.ckpt", ckpt)  # the ref run's files stay untouched
    before = gate_tensors(ref / "runs/tiny/gate")
    new_gate = tmp_path / "gate-e3"
    proc = popen(["train.py", "fit", "-c", str(w.config), "--validate_before_fit", "false", "--ckpt_path",
                  str(ckpt), "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path / "run"),
                  "--model.export_dir", str(new_gate)], tmp_path, w.cache, tmp_path / "resume.log")
    out = wait_ok(proc, tmp_path / "resume.log")
    assert f"exported gate: {new_gate}" in out
    assert f"model.export_dir = '{new_gate}'" in out  # the difference from the checkpoint's run is told
    assert (new_gate / "config.json").exists()
    after = gate_tensors(ref / "runs/tiny/gate")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the old export was not overwritten
    assert _ckpt(tmp_path / "run/checkpoints/last.ckpt")["epoch"] == 2  # the third epoch ran


def test_training_resumed_mid_epoch_repeats_the_uninterrupted_run(tiny_world_files, tmp_path):
    """From a checkpoint written in the middle of an epoch (every_n_train_steps), a resumed run trains on the
    epoch's remaining batches only, with the same exploration draws, and ends with the uninterrupted run's
    gate and step count: mid-epoch 1, mid-epoch 2, and mid-epoch 2 of a run that was itself resumed from a
    finished one-epoch run (whose checkpoints Lightning 2.6 reads as "epoch not started"). Exactly, with the
    prefix cache off; with it on, to ~1e-8."""
    import yaml

    w = tiny_world_files
    cfg = yaml.safe_load(w.config.read_text())
    cfg["trainer"]["callbacks"][0]["init_args"].update(every_n_train_steps=1, save_top_k=-1)
    # prefix key/values kept across steps were computed in whichever batch first met them, which a resumed
    # run does not repeat (differences of ~1e-8): off, so that equality here is exact
    cfg["model"]["prefix_cache_mb"] = 0
    config = tmp_path / "steps.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(name: str, *extra: str):
        return popen(["train.py", "fit", "-c", str(config), "--validate_before_fit", "false", *extra],
                     tmp_path / name, w.cache, tmp_path / f"{name}.log")

    def ckpts(name: str) -> Path:
        return tmp_path / name / "runs/tiny/checkpoints"

    def gate(name: str) -> dict:
        return gate_tensors(tmp_path / name / "runs/tiny/gate")

    full, one = start("full"), start("one", "--trainer.max_epochs", "1")
    wait_ok(full, tmp_path / "full.log")
    wait_ok(one, tmp_path / "one.log")
    steps = _ckpt(ckpts("one") / "last.ckpt")["global_step"]  # batches per epoch
    assert steps >= 4 and _ckpt(ckpts("full") / "last.ckpt")["global_step"] == 2 * steps
    runs = {"mid1": ckpts("full") / "epoch=0-step=2.ckpt",
            "mid2": ckpts("full") / f"epoch=1-step={steps + 2}.ckpt",
            "then2": ckpts("one") / "last.ckpt"}
    procs = {name: start(name, "--ckpt_path", str(path)) for name, path in runs.items()}
    for name, proc in procs.items():
        wait_ok(proc, tmp_path / f"{name}.log")
    runs["again_mid2"] = ckpts("then2") / f"epoch=1-step={steps + 2}.ckpt"
    wait_ok(start("again_mid2", "--ckpt_path", str(runs["again_mid2"])), tmp_path / "again_mid2.log")
    ref = gate("full")
    diffs = {name: max(float((ref[k] - gate(name)[k]).abs().max()) for k in ref) for name in runs}
    assert all(d == 0.0 for d in diffs.values()), f"gates differ from the full run's by {diffs}"
    val = {name: read_export_config(tmp_path / name / "runs/tiny/gate")["metrics"].get("val/nll_per_token")
           for name in ["full", *runs]}
    # every run validated at the end of its last epoch, on the same gate
    assert val["full"] is not None and all(v == val["full"] for v in val.values()), val
    for name in runs:
        assert _ckpt(ckpts(name) / "last.ckpt")["global_step"] == 2 * steps, name


# ---------------------------------------------------------------------------------------------- generation
def _rows(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "the output ends in a torn line"
    return [json.loads(line) for line in data.decode().splitlines()]  # every line valid JSON


def test_generation_killed_then_rerun_gives_exactly_the_uninterrupted_rows(tiny_world, tmp_path, monkeypatch):
    from mop.cli import main

    w = tiny_world
    gate = w.finished("ref") / "runs/tiny/gate"
    n = 16
    args = ["--gating", str(gate), "--model", str(w.lm), "--data", str(w.config), "--split", "test",
            "--num-samples", str(n), "--batch-size", "2", "--max-new-tokens", "16", "--stop",
            "--no-progress", "--seed", "3"]
    out = tmp_path / "out.jsonl"
    proc = popen(["generate.py", *args, "--output", str(out)], tmp_path, w.cache, tmp_path / "gen.log")
    try:
        assert wait_for(lambda: out.exists() and out.read_bytes().count(b"\n") >= 3, proc), \
            (tmp_path / "gen.log").read_text()[-3000:]
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    before = out.read_bytes().count(b"\n")
    assert 3 <= before < n
    monkeypatch.setenv("MOP_CACHE", str(w.cache))
    assert main(["generate", *args, "--output", str(out)]) == 0  # the re-run (same command) resumes
    rows = _rows(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == n and len(set(ids)) == n
    assert main(["generate", *args, "--output", str(tmp_path / "ref.jsonl")]) == 0  # uninterrupted
    ref = {r["id"]: r for r in _rows(tmp_path / "ref.jsonl")}
    assert {r["id"]: r for r in rows} == ref
    assert len({r["text"] for r in ref.values()}) > n // 2  # real, varied samples
    assert len({r["persona_id"] for r in ref.values()}) > 1


# -------------------------------------------------------------------------------------------------- export
def _log_tau(export_dir: Path) -> float:
    got = GateExport.from_pretrained(export_dir)  # verifies the checksums of every file
    values = got.gate.log_tau.unique()
    assert values.numel() == 1
    return float(values[0])


def _writer(source: Path, out: Path, mode: str, log: Path, cache: Path) -> subprocess.Popen:
    return popen([str(Path(__file__).with_name("export_writer.py")), str(source), str(out), mode], out.parent,
                 cache, log)


def _saved(log: Path) -> list[int]:
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("saved ")]


def test_export_killed_at_random_times_leaves_a_complete_export(tiny_world, tmp_path):
    """Three writers re-save an export in a loop and are killed at random instants: what is left at the export
    path always loads (checksums verified) and is the last or the next save; temporary folders are hidden and
    the next save removes them."""
    w = tiny_world
    source = w.finished("ref") / "runs/tiny/gate"
    rng = random.Random(0)
    writers = []
    for n in range(3):
        parent = tmp_path / f"w{n}"
        parent.mkdir()
        out = parent / "gate"
        GateExport.from_pretrained(source).save_pretrained(out)  # the previous export: log_tau as trained
        log = tmp_path / f"w{n}.log"
        writers.append((_writer(source, out, "loop", log, w.cache), out, log, rng.randint(2, 40)))
    for proc, out, log, stop_after in writers:
        try:
            assert wait_for(lambda: len(_saved(log)) >= stop_after, proc, poll=0.001), log.read_text()[-3000:]
            # a random instant within the next save or so
            wait_for(lambda: False, proc, timeout=rng.uniform(0, 0.02), poll=0.001)
        finally:
            _kill(proc)
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        last = max(_saved(log))
        assert _log_tau(out) in (float(last), float(last + 1))
        names = sorted(p.name for p in out.parent.iterdir())
        assert [x for x in names if not x.startswith(".")] == ["gate"], names
        save_pretrained_again = GateExport.from_pretrained(out)
        save_pretrained_again.save_pretrained(out)  # the next save cleans up after the dead writer
        assert sorted(p.name for p in out.parent.iterdir()) == ["gate"]


def test_export_killed_between_the_two_renames_of_the_fallback_is_recovered(tiny_world, tmp_path):
    """Where the file system cannot exchange two folders atomically, the old export is moved aside for an
    instant; a writer killed right then leaves it complete under a hidden name, and the next save restores
    it."""
    w = tiny_world
    source = w.finished("ref") / "runs/tiny/gate"
    out = tmp_path / "gate"
    GateExport.from_pretrained(source).save_pretrained(out)
    before = gate_tensors(out)["log_tau"]
    log = tmp_path / "window.log"
    proc = _writer(source, out, "window", log, w.cache)
    try:
        assert wait_for(lambda: "window" in log.read_text(), proc, poll=0.001), log.read_text()[-3000:]
    finally:
        _kill(proc)
    assert not out.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".gate.") and p.name.endswith(".old")]
    assert len(aside) == 1
    _recover_interrupted(out)  # what the next save_pretrained does first
    assert torch.equal(GateExport.from_pretrained(out).gate.log_tau, before)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".log")) == ["gate"]


def test_save_pretrained_swaps_atomically_and_keeps_nothing_else(tiny_world, tmp_path):
    """In-process: a save over an existing export replaces it completely, and the loaded result is the new
    one."""
    w = tiny_world
    export = GateExport.from_pretrained(w.finished("ref") / "runs/tiny/gate")
    out = tmp_path / "gate"
    export.save_pretrained(out)
    with torch.no_grad():
        export.gate.log_tau.fill_(0.25)
    save_pretrained(out, gate=export.gate, personas=export.personas, persona_emb=export.persona_emb,
                    pool=export.exemplars, index=export.index, config=export.gate_config)
    assert _log_tau(out) == 0.25
    assert [p.name for p in tmp_path.iterdir()] == ["gate"]

