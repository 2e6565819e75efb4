"""train.py as a user runs it: the quickstart config end to end on a small slice (real SmolLM2 + MiniLM)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import REPO, assert_one_line_error, run_cli


def _overrides(tmp_path, *extra):
    return ["train.py", "fit", "-c", str(REPO / "configs/quickstart.yaml"),
            "--data.personas.synthesizer", "keywords", "--data.dataset.max_records", "{train: 24, val: 8}",
            "--data.artifacts_dir", str(tmp_path / "artifacts"),
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--model.export_dir",
            str(tmp_path / "gate"), "--data.personas.num_personas", "4", "--trainer.max_epochs", "1", *extra]


@pytest.mark.slow
def test_quickstart_slice_trains_and_exports(tmp_path):
    proc = run_cli(*_overrides(tmp_path), cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    untrained = float(re.search(r"untrained gate: ([\d.]+)", proc.stdout).group(1))
    trained = float(re.search(r"\s+trained gate: +([\d.]+)", proc.stdout).group(1))
    assert trained < untrained
    cfg = json.loads((tmp_path / "gate" / "config.json").read_text())
    assert cfg["num_personas"] == 4 and cfg["embed_dim"] == 384
    assert sum(p.stat().st_size for p in (tmp_path / "gate").iterdir()) < 5_000_000  # no LM weights
    csvs = list((tmp_path / "runs").glob("metrics-*.csv"))
    assert csvs and "val/nll_per_token" in csvs[0].read_text().splitlines()[0]
    # a second run reuses the artifacts (personas, embeddings, index) instead of rebuilding them; it keeps
    # its best epoch by validation NLL (configs/trainer/keep_best.yaml), says where, and the checkpoint
    # exports
    again = run_cli(*_overrides(tmp_path, "--validate_before_fit", "false", "-c",
                                str(REPO / "configs/trainer/keep_best.yaml"), "--trainer.max_epochs", "2"),
                    cwd=tmp_path, timeout=1200)
    assert again.returncode == 0 and "embedding responses" not in again.stderr, again.stderr[-3000:]
    assert len(list((tmp_path / "artifacts").iterdir())) == 2  # one artifacts folder + its lock
    best = re.search(r"best checkpoint \(val/nll_per_token ([\d.]+)\): (\S+) ", again.stdout)
    assert best, again.stdout[-2000:]
    rows = max((tmp_path / "runs").glob("metrics-*.csv"), key=lambda p: p.stat().st_mtime).read_text()
    header, *lines = [line.split(",") for line in rows.splitlines()]
    col = header.index("val/nll_per_token")
    vals = [float(r[col]) for r in lines if r[col]]
    assert len(vals) == 2 and float(best.group(1)) == pytest.approx(min(vals), abs=1e-4)
    ckpt = Path(best.group(2))  # the epoch of the lowest val NLL (vals are in epoch order), not just any
    assert ckpt.name == f"best-epoch={vals.index(min(vals))}.ckpt" and ckpt.is_file()
    out = run_cli("export", str(ckpt), str(tmp_path / "best"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "best" / "config.json").read_text())["num_personas"] == 4


@pytest.mark.slow  # a fresh train.py process imports Lightning (about 12 s on 2 cores); the bad-input matrix
# (tests/test_bad_inputs.py) checks train.py's config errors in the default tier
def test_bad_config_value_is_one_line(tmp_path):
    proc = run_cli("train.py", "fit", "-c", str(REPO / "configs/quickstart.yaml"),
                   "--model.num_candidates", "0", "--data.artifacts_dir", str(tmp_path / "a"), cwd=tmp_path,
                   timeout=300)
    assert_one_line_error(proc, "num_candidates")


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, key))
    else:
        yield prefix, tree


CONFIGS = [[p.name] for p in sorted((REPO / "configs").glob("*.yaml"))] + [
    ["quickstart.yaml", f"trainer/{p.name}"] for p in sorted((REPO / "configs" / "trainer").glob("*.yaml"))]


@pytest.mark.parametrize("configs", CONFIGS, ids=["+".join(c) for c in CONFIGS])
def test_every_shipped_config_parses_to_its_own_values(configs, capsys):
    """Each configs/*.yaml (the trainer presets as a second -c) passes train.py's parser (known keys, types),
    and what it would train with holds every value the files set: a misspelt key or a wrong type fails here,
    not an hour into a run."""
    import yaml

    from mop.train import train_command

    args = ["fit"]
    for name in configs:
        args += ["-c", str(REPO / "configs" / name)]
    with pytest.raises(SystemExit) as done:
        train_command([*args, "--print_config"], prog="train.py")
    assert done.value.code in (0, None)
    parsed = yaml.safe_load(capsys.readouterr().out)
    expected = {}  # every value the files set, a later -c overriding an earlier one
    for name in configs:
        written = yaml.safe_load((REPO / "configs" / name).read_text())
        for section in ("model", "data", "trainer"):
            for path, value in _leaves(written.get(section, {}), (section,)):
                if not (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
                    expected[path] = value  # (class_path lists, e.g. callbacks, are printed expanded)
    for path, value in expected.items():
        got = parsed
        for key in path:
            got = got[key]
        assert got == value, (configs, path)
    checked = len(expected)
    assert checked > 3


@pytest.mark.slow  # one train.py process on the tiny world (Lightning's import dominates: ~20 s on 2 cores)
def test_a_run_stopped_mid_epoch_validates_the_gate_it_exports(tiny_world_files, tmp_path):
    """--trainer.max_steps ends fit before the epoch's validation: the gate being exported is validated then,
    so its score is printed and in the export (it used to print no trained figure and export no metrics)."""
    from helpers import child_env

    w = tiny_world_files
    proc = run_cli("train.py", "fit", "-c", str(w.config), "--trainer.max_steps", "2",
                   "--validate_before_fit", "false", cwd=tmp_path, env=child_env(w.cache), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = float(re.search(r"\s+trained gate: +([\d.]+)", proc.stdout).group(1))
    exported = json.loads((tmp_path / "runs/tiny/gate/config.json").read_text())["metrics"]
    assert exported["val/nll_per_token"] == pytest.approx(printed, abs=5e-5)
    # the figure is the validation of the gate after step 2 (the checkpoint is the exported gate)
    rows = next((tmp_path / "runs/tiny").glob("metrics-*.csv")).read_text().splitlines()
    header, *lines = [r.split(",") for r in rows]
    vals = [(r[header.index("step")], r[header.index("val/nll_per_token")]) for r in lines
            if r[header.index("val/nll_per_token")]]
    assert len(vals) == 1 and float(vals[0][1]) == pytest.approx(printed, abs=5e-5), vals
