"""The speed benchmarks' CPU paths on a tiny random model and tiny sizes: they run and their numbers make
sense.

(The real numbers come from running the scripts; see benchmarks/results/.) The scripts import ``common`` from
benchmarks/ (those in benchmarks/investigations/ put it on sys.path themselves), so both folders go first on
sys.path here, as when they run as ``python benchmarks/x.py`` or ``python benchmarks/investigations/x.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, make_tiny_lm

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(1, str(REPO / "benchmarks" / "investigations"))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the benchmarks set 1 thread themselves


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama and a byte-level tokenizer saved as a local model folder (what --model accepts)."""
    path = tmp_path_factory.mktemp("tiny-lm")
    make_tiny_lm(save_to=path)
    return str(path)


@pytest.fixture(scope="module")
def artifacts_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("artifacts"))


def test_scoring_speed_scorer_matches_naive(tiny_model_dir, tmp_path):
    import scoring_speed

    out = tmp_path / "scoring.json"
    rows = scoring_speed.main(["--models", tiny_model_dir, "--dtypes", "float32", "bfloat16", "--pairs", "8",
                               "--half-pairs", "4", "--step", "8", "--naive-batch", "4", "--peak-size", "128",
                               "--max-prompt-tokens", "64", "--max-target-tokens", "24", "--out", str(out)])
    fp32, bf16 = rows
    assert fp32["pairs"] == 8 and bf16["pairs"] == 4
    assert fp32["max_abs_ll_diff"] < 1e-3  # the two scorers compute the same log-likelihoods
    assert 0 <= fp32["scorer_pad_pct"] < 100 and 0 <= fp32["naive_pad_pct"] < 100
    assert fp32["total_tokens"] > fp32["target_tokens"] > 0 and fp32["speedup"] > 0
    assert math.isfinite(bf16["mean_token_ll_diff_vs_fp32"]) and bf16["mean_token_ll_diff_vs_fp32"] < 0.5
    assert json.loads(out.read_text())["results"][0]["model"] == tiny_model_dir


def test_generation_speed_forces_equal_lengths_and_keeps_samples(tiny_model_dir, tmp_path):
    import generation_speed

    rows = generation_speed.main(["--model", tiny_model_dir, "--samples", "4", "--new-tokens", "3",
                                  "--batch-sizes", "1", "4", "--peak-size", "128",
                                  "--out", str(tmp_path / "gen.json")])
    assert [r["batch_size"] for r in rows] == [1, 4]
    assert all(r["samples"] == 4 and r["new_tokens"] == 3 for r in rows)  # the script asserts equal lengths
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["identical_to_first"] >= 0.75  # per-row seeds: a sample does not depend on its batch


def test_scale_uses_top_k_beyond_the_dense_limit(tmp_path):
    import scale

    rows = scale.main(["--pool", "3000", "--dim", "32", "--nlist", "16", "--nprobe", "4", "--personas", "6",
                       "--batch-sizes", "2", "4", "--exact-batch", "2", "--omega-topk", "32",
                       "--repeats", "1", "--out", str(tmp_path / "scale.json")])
    assert [r["omega"] for r in rows] == ["top-32 (IVF)", "top-32 (IVF)", "exact (dense)"]
    assert all(r["ms_per_batch"] > 0 and 0 <= r["index_search_share"] <= 1 for r in rows)


@pytest.mark.slow  # builds small artifacts with the bundled embedder and corpus (~10 s)
def test_train_profile_accounts_for_the_whole_step(tiny_model_dir, artifacts_dir, tmp_path):
    import train_profile

    prof = train_profile.main(["--lm", tiny_model_dir, "--synthesizer", "keywords", "--num-personas", "3",
                               "--max-records", "12", "--artifacts-dir", artifacts_dir, "--steps", "1",
                               "--out", str(tmp_path / "profile.json")])
    ms = prof["mean_ms"]
    assert 0 < prof["lm_share"] < 1
    assert ms["LM body"] > 0 and ms["gate + retrieval"] > 0 and ms["prompt tokenisation"] > 0
    parts = sum(ms[s] for s in train_profile.STAGES)
    assert parts == pytest.approx(ms["step"], rel=1e-6)  # the stages add up to the step


@pytest.mark.slow
def test_score_cache_benchmark_hits_in_epoch_two(tiny_model_dir, artifacts_dir, tmp_path):
    import score_cache

    rows = score_cache.main(["--lm", tiny_model_dir, "--records", "12", "--num-personas", "3",
                             "--epochs", "2", "--artifacts-dir", artifacts_dir,
                             "--out", str(tmp_path / "cache.json")])
    assert rows[0]["hit_rate"] == 0 and rows[0]["pairs_scored"] == rows[0]["lookups"]
    assert rows[1]["hit_rate"] > 0 and rows[1]["pairs_scored"] == rows[1]["lookups"] - rows[1]["hits"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout


def test_fidelity_table_shows_intervals_usage_and_echo_rates():
    import fidelity

    from mop.outputs import effective_number

    assert effective_number(["a", "a", "b", "b"]) == 2.0
    assert effective_number(["a"] * 9) == 1.0 and effective_number([]) is None

    def row(name, fid, ci):
        return {"name": name, "fid": fid, "mauve": 0.5, "kl_cosine": 0.1, "f1": None,
                "ci95": {"fid": ci, "mauve": [0.4, 0.6], "kl_cosine": None},
                "personas_used": 3, "effective_personas": 2.5, "exemplars_used": 7,
                "effective_exemplars": 6.0, "exemplar_label_match": 0.625,
                "diversity": {"vendi": 12.0}, "mean_words": 20.1, "prompt_echo": 0.25, "persona_start": None,
                "exemplar_copy": 0.1}

    group = {"model": "smollm2-135m", "n": 1000, "embedder": "minilm-l6", "real_words": 19.5,
             "rows": [row("smollm2-135m:mop", 0.31, [0.29, 0.33])], "reference": row("train", 0.05, None),
             "real": {"diversity": {"vendi": 30.0}}, "bootstrap": {"method": "200 resamples"}}
    text = fidelity.table({"groups": [group], "missing": ["smollm2-135m:zerogen (3/1000 rows)"]},
                          {"generate smollm2-135m:mop": 612.0})
    lines = text.splitlines()
    assert lines[0] == "### smollm2-135m, n = 1000, embedder minilm-l6"
    mop_row = next(line for line in lines if line.startswith("| MoP |"))
    assert "0.3100 [0.2900, 0.3300]" in mop_row and "0.500 [0.400, 0.600]" in mop_row
    assert "| 0.1000 |" in mop_row and "3 (2.5) / 7 (6.0) | 0.625 |" in mop_row
    assert "0.25 / – / 0.10" in mop_row
    header = lines[2].split(" | ")
    assert all(len(line.split(" | ")) == len(header) for line in lines[4:7])  # every row fills every column
    assert mop_row.endswith("| 612 |")
    assert any(line.startswith("| real training texts (reference) | 0.0500 |") for line in lines)
    assert lines[-1] == "Not generated (incomplete): smollm2-135m:zerogen (3/1000 rows)"
    # a set this workdir did not generate (copied in) has no generation time: a dash, not "nan"
    copied = fidelity.table({"groups": [group], "missing": []}, {})
    assert next(line for line in copied.splitlines() if line.startswith("| MoP |")).endswith("| – |")


def test_fidelity_exemplar_label_match_counts_rows_whose_exemplar_shares_their_label():
    import types

    import fidelity

    from mop.data import Record

    export = types.SimpleNamespace(exemplars=[Record(id="e0", response="r", context={}, label="fresh"),
                                              Record(id="e1", response="r", context={}, label="rotten")])
    rows = [{"label": "fresh", "exemplar_id": "e0"}, {"label": "fresh", "exemplar_id": "e1"},
            {"label": "rotten", "exemplar_id": "e1"}, {"label": "rotten", "exemplar_id": "e1"},
            {"label": "fresh", "exemplar_id": None}]  # no exemplar: not counted
    assert fidelity.exemplar_label_match(rows, export) == 0.75
    assert fidelity.exemplar_label_match([{"label": None, "exemplar_id": "e0"}], export) is None
    assert fidelity.exemplar_label_match([{"label": "fresh", "exemplar_id": None}], export) is None


def test_gate_diagnosis_label_match_only_for_a_labelled_population():
    from types import SimpleNamespace as R

    import gate_diagnosis

    marg = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    pool = [R(label="fresh", group="m1", response="a b"), R(label="rotten", group="m2", response="c"),
            R(label="fresh", group="m3", response="d e f")]
    labelled = [R(label="fresh", group="m1"), R(label="rotten", group="m9")]
    s = gate_diagnosis.split_stats(marg, None, labelled, pool, "train")
    assert s["label_match"]["mean"] == pytest.approx((0.8 + 0.1) / 2)  # row 0: 0.7 + 0.1, row 1: 0.1
    assert s["label_match_uniform"] == pytest.approx(0.5)
    assert s["own_group"]["mean"] == pytest.approx(0.35)  # row 0's own movie m1 holds 0.7, row 1's none

    bare_pool = [R(label=None, group=None, response="a b") for _ in range(3)]
    bare = gate_diagnosis.split_stats(marg, None, [R(label=None, group=None)] * 2, bare_pool, "train")
    assert "label_match" not in bare and "own_group" not in bare and bare["label_match_uniform"] is None
    text = gate_diagnosis.markdown({"g": {"train": bare}}, ["train"])
    assert "– (no labels)" in text and "1.000" not in text

    # the persona-free component's mass is reported where the personas have one, and only there
    pi = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    with_null = gate_diagnosis.split_stats(marg, pi, labelled, pool, "val", null=1)
    assert with_null["null_persona"]["mean"] == pytest.approx(0.6)
    assert "null_persona" not in gate_diagnosis.split_stats(marg, pi, labelled, pool, "val")
    row = gate_diagnosis.markdown({"g": {"val": with_null}}, ["val"]).splitlines()
    assert "persona-free mass" in row[3] and "| 0.600 / 0.400 |" in row[5]  # mean / (lower) median


def test_gate_diagnosis_refuses_an_export_of_other_personas_or_pool(tmp_path):
    from types import SimpleNamespace as R

    import gate_diagnosis
    from helpers import make_export

    made = make_export(tmp_path / "gate", dim=16, k=3, n_pool=4)
    own = R(persona_texts=list(made.persona_texts), pool=list(made.pool), embed_dim=16, pool_emb=None)
    gate = gate_diagnosis.load_gate(str(tmp_path / "gate"), own, {})  # the config's, as exported
    assert torch.equal(gate.log_tau, made.gate.log_tau)
    more = R(**{**vars(own), "persona_texts": [*own.persona_texts, "You are one more critic."]})
    with pytest.raises(SystemExit, match="its 3 personas are not the config's 4"):
        gate_diagnosis.load_gate(str(tmp_path / "gate"), more, {})
    other_pool = R(**{**vars(own), "pool": [R(response="another review"), *own.pool[1:]]})
    with pytest.raises(SystemExit, match="exemplar pool is not the config's"):
        gate_diagnosis.load_gate(str(tmp_path / "gate"), other_pool, {})


def test_fidelity_val_config_drops_only_the_val_cap(tmp_path):
    import fidelity
    import yaml

    cfg = fidelity.val_config(str(REPO / "configs" / "fidelity.yaml"), tmp_path)
    data = yaml.safe_load(open(cfg))["data"]["dataset"]
    assert data["max_records"] == {"train": 2000}
    assert data["source"] == "rotten-tomatoes" and data["split"] == [0.8, 0.1, 0.1]


def test_fidelity_refuses_to_resume_a_set_sampled_at_another_temperature(tmp_path):
    import argparse

    import fidelity

    out = fidelity.sample_file(tmp_path, "smollm2-135m:fewshot")
    out.parent.mkdir(parents=True)
    out.write_text("".join(json.dumps({"text": "t", "temperature": 1.0}) + "\n" for _ in range(3)))
    args = argparse.Namespace(num_samples=3, model_samples=[], ablation_samples=None)
    with pytest.raises(SystemExit, match="sampled at temperature 1.0, not 0.7"):
        fidelity.generate(args, tmp_path, tmp_path / "gate", "smollm2-135m:fewshot", temperature=0.7)
    fidelity.generate(args, tmp_path, tmp_path / "gate", "smollm2-135m:fewshot", temperature=1.0)  # complete
    with pytest.raises(SystemExit, match="sampled at gate temperature 1.0, not 2.0"):
        fidelity.generate(args, tmp_path, tmp_path / "gate", "smollm2-135m:fewshot", temperature=1.0,
                          gate_temperature=2.0)


def _fake_val_sweep(monkeypatch, shift_of) -> list[tuple]:
    """Stand-ins for the sweep's generation and embedding: a run's val texts embed as the real val set shifted
    by ``shift_of(run, tau, gate_temperature)``, so FID is smallest where the shift is. Returns the calls
    (run, split, n, tau, gate temperature, workdir name)."""
    import fidelity
    import numpy as np

    import mop.evaluate

    real = np.random.default_rng(0).normal(size=(40, 4))
    calls = []

    def fake_generate(args, workdir, gate, run, *, split="test", config=None, n=None, temperature=None,
                      gate_temperature=1.0):
        calls.append((run, split, n, temperature, gate_temperature, workdir.name))
        out = fidelity.sample_file(workdir, run)
        out.parent.mkdir(parents=True, exist_ok=True)
        shift = shift_of(run, temperature, gate_temperature)
        out.write_text("".join(json.dumps({"text": f"{shift}|{i}", "temperature": temperature}) + "\n"
                               for i in range(n)))

    class Embedder:
        def encode(self, texts):
            return np.stack([real[int(t.split("|")[1]) % 40] + float(t.split("|")[0]) if "|" in t
                             else real[int(t)] for t in texts])

    monkeypatch.setattr(fidelity, "generate", fake_generate)
    monkeypatch.setattr(fidelity, "real_sets", lambda args, gate, n, split, config: (
        ([str(i) for i in range(n)], None), None))
    monkeypatch.setattr(mop.evaluate, "_make_embedder", lambda name: Embedder())
    return calls


def test_fidelity_chooses_each_runs_temperature_by_val_fid_and_ablations_take_mops(tmp_path, monkeypatch):
    import argparse

    import fidelity

    # a run's texts sit at an offset from the real set that is smallest at its "best" temperature
    best = {"smollm2-135m:mop": 0.6, "smollm2-135m:fewshot": 1.0}
    calls = _fake_val_sweep(monkeypatch, lambda run, tau, g: abs(tau - best[run]) * 3)
    args = argparse.Namespace(config=str(REPO / "configs" / "fidelity.yaml"), val_samples=40,
                              temperature_grid=[0.6, 0.8, 1.0], embedders=None, gate_temperature_grid=None,
                              runs=["smollm2-135m:mop", "smollm2-135m:fewshot",
                                    "smollm2-135m:mop-no-exemplar"])
    sweep = fidelity.choose_temperatures(args, tmp_path, tmp_path / "gate")
    assert "chosen_gate_temperature" not in sweep
    assert {c[4] for c in calls} == {1.0}  # no --gate-temperature-grid: the trained gate only
    assert sweep["chosen"] == {"smollm2-135m:mop": 0.6, "smollm2-135m:fewshot": 1.0,
                               "smollm2-135m:mop-no-exemplar": 0.6}
    assert {c[0] for c in calls} == {"smollm2-135m:mop", "smollm2-135m:fewshot"}  # no ablation sweep
    assert all(c[1] == "val" and c[2] == 40 for c in calls) and len(calls) == 6
    fids = sweep["val_fid"]["smollm2-135m:mop"]
    assert fids[0.6] < fids[0.8] < fids[1.0]
    assert json.loads((tmp_path / "temperatures.json").read_text())["chosen"] == sweep["chosen"]
    table = fidelity.sweep_table(sweep).splitlines()
    assert table[2] == "| run | val FID at tau 0.6 | val FID at tau 0.8 | val FID at tau 1 | chosen |"
    assert table[4].startswith("| smollm2-135m:mop | 0.0000 |") and table[4].endswith("| 0.6 |")
    assert "top-p" not in table[0] and sweep["top_p"] == 1.0
    assert fidelity.sweep_table({**sweep, "top_p": 0.9}).splitlines()[0].endswith(", every run at top-p 0.9)")
    assert fidelity.pick_temperature({0.7: 0.2, 1.0: 0.2, 0.5: 0.3}) == 1.0


def test_fidelity_chooses_mops_gate_temperature_jointly_on_val(tmp_path, monkeypatch):
    """--gate-temperature-grid: mop is sampled at every (tau, T) pair, the other runs at T = 1 only; the pair
    of the lowest val FID is chosen, the ablations take mop's, and each pair has its own val folder."""
    import argparse

    import fidelity

    best = {"smollm2-135m:mop": (1.0, 2.0), "smollm2-135m:fewshot": (0.6, 1.0)}  # (tau, T)
    raw = _fake_val_sweep(monkeypatch,
                          lambda run, tau, g: abs(tau - best[run][0]) * 3 + abs(g - best[run][1]) * 2)
    args = argparse.Namespace(config=str(REPO / "configs" / "fidelity.yaml"), val_samples=40,
                              temperature_grid=[0.6, 1.0], embedders=None,
                              gate_temperature_grid=[1.0, 2.0, 4.0],
                              runs=["smollm2-135m:mop", "smollm2-135m:fewshot",
                                    "smollm2-135m:mop-random-persona"])
    sweep = fidelity.choose_temperatures(args, tmp_path, tmp_path / "gate")
    calls = [c[:1] + c[3:] for c in raw]  # (run, tau, T, workdir name)
    assert sweep["chosen"] == {"smollm2-135m:mop": 1.0, "smollm2-135m:fewshot": 0.6,
                               "smollm2-135m:mop-random-persona": 1.0}
    assert sweep["chosen_gate_temperature"] == {"smollm2-135m:mop": 2.0, "smollm2-135m:fewshot": 1.0,
                                                "smollm2-135m:mop-random-persona": 2.0}
    mop_calls = [c for c in calls if c[0] == "smollm2-135m:mop"]
    assert sorted((c[1], c[2]) for c in mop_calls) == [(t, g) for t in (0.6, 1.0) for g in (1.0, 2.0, 4.0)]
    assert {c[2] for c in calls if c[0] == "smollm2-135m:fewshot"} == {1.0} and len(calls) == 8
    assert len({c[3] for c in mop_calls}) == 6  # one val folder per pair
    by_gate = sweep["val_fid_by_gate_temperature"]["smollm2-135m:mop"]
    assert by_gate["2"][1.0] < by_gate["1"][1.0] and by_gate["2"][1.0] < by_gate["4"][1.0]
    assert sweep["val_fid"]["smollm2-135m:mop"] == by_gate["1"]  # T = 1, as a sweep without the grid
    saved = json.loads((tmp_path / "temperatures.json").read_text())
    assert saved["chosen_gate_temperature"]["smollm2-135m:mop"] == 2.0
    table = fidelity.sweep_table(saved).splitlines()  # the table reads the saved (string-keyed) sweep
    rows = {line.split(" | ")[0][2:]: line for line in table[4:]}
    assert rows["smollm2-135m:mop, gate T 2"].endswith("| 1 |")
    assert rows["smollm2-135m:mop, gate T 4"].endswith("| – |")
    assert rows["smollm2-135m:fewshot"].endswith("| 0.6 |")
    assert fidelity.pick_gate_temperature({1.0: {1.0: 0.2}, 2.0: {1.0: 0.2}, 0.5: {1.0: 0.3}}) == (1.0, 1.0)



def test_fidelity_records_epochs_only_for_a_gate_it_trains(tmp_path, monkeypatch):
    import fidelity

    monkeypatch.setattr(fidelity, "evaluate", lambda args, workdir, gate: {"groups": [], "missing": []})
    for gate in (tmp_path / "elsewhere", tmp_path / "w" / "gate"):
        gate.mkdir(parents=True)
        (gate / "config.json").write_text(json.dumps({"metrics": {"val/nll_per_token": 4.5}}))
    common = ["--config", str(REPO / "configs" / "fidelity.yaml"), "--workdir", str(tmp_path / "w"),
              "--runs", "smollm2-135m:mop", "--steps", "evaluate", "--epochs", "3"]
    elsewhere = ["--gate", str(tmp_path / "elsewhere"), "--output", str(tmp_path / "a")]
    assert fidelity.main([*common, *elsewhere]) == 0
    given = json.loads((tmp_path / "a.json").read_text())
    assert given["epochs"] is None and given["gate"] == str(tmp_path / "elsewhere")  # trained elsewhere
    assert fidelity.main([*common, "--output", str(tmp_path / "b")]) == 0
    own = json.loads((tmp_path / "b.json").read_text())
    assert own["epochs"] == 3 and own["gate"] == str(tmp_path / "w" / "gate")
    assert own["gate_metrics"] == {"val/nll_per_token": 4.5}


def test_fidelity_makes_the_output_and_plot_folders_before_it_evaluates(tmp_path, monkeypatch):
    """The plots are drawn during the evaluation, after hours of generation: their folder must exist then."""
    import fidelity

    seen = []

    def evaluate(args, workdir, gate):
        seen.append((Path(args.output).parent.is_dir(), Path(args.plot).parent.is_dir()))
        return {"groups": [], "missing": []}
    monkeypatch.setattr(fidelity, "evaluate", evaluate)
    (tmp_path / "gate").mkdir()
    (tmp_path / "gate" / "config.json").write_text("{}")
    common = ["--config", str(REPO / "configs" / "fidelity.yaml"), "--workdir", str(tmp_path / "w"),
              "--gate", str(tmp_path / "gate"), "--runs", "smollm2-135m:mop", "--steps", "evaluate"]
    assert fidelity.main([*common, "--output", str(tmp_path / "new" / "res")]) == 0  # plot beside it
    assert fidelity.main([*common, "--output", str(tmp_path / "o" / "res"),
                          "--plot", str(tmp_path / "figs" / "p.png")]) == 0
    assert seen == [(True, True), (True, True)] and (tmp_path / "new" / "res.json").exists()


def test_fidelity_plots_go_beside_the_run_output():
    import fidelity

    assert fidelity.parse_args([]).plot == "benchmarks/results/fidelity.png"
    assert fidelity.parse_args(["--output", "out/fid_k100.v2"]).plot == "out/fid_k100.v2.png"
    assert fidelity.parse_args(["--output", "a/b", "--plot", "c/d.png"]).plot == "c/d.png"
    assert fidelity.parse_args(["--output", "a/b", "--plot", ""]).plot == ""
    assert fidelity.plot_path("out/fid.png", "smollm2-135m", 1000, "minilm-l6") == Path(
        "out/fid_smollm2-135m_1000_minilm-l6.png")
    hub_embedder = "sentence-transformers/all-mpnet-base-v2"
    assert fidelity.plot_path("out/fid.png", "/models/llama3", 200, hub_embedder) \
        == Path("out/fid_models--llama3_200_sentence-transformers--all-mpnet-base-v2.png")


def test_fidelity_rejects_a_bad_temperature_grid(capsys):
    import fidelity

    with pytest.raises(SystemExit):
        fidelity.parse_args(["--temperature-grid", "0.7", "0"])
    assert "temperatures must be positive, got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--val-samples", "1"])
    assert "--val-samples must be at least 2" in capsys.readouterr().err
    assert fidelity.parse_args(["--temperature-grid", "0.6", "1.0"]).temperature_grid == [0.6, 1.0]
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--gate-temperature-grid", "1", "2"])
    assert "pass --temperature-grid too" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--temperature-grid", "1", "--gate-temperature-grid", "1", "-2"])
    assert "--gate-temperature-grid: temperatures must be positive" in capsys.readouterr().err


def test_fidelity_generate_passes_the_split_config_and_temperature_to_generate_py(tmp_path, monkeypatch):
    import argparse

    import fidelity

    cmds = []
    monkeypatch.setattr(fidelity.subprocess, "run", lambda cmd, **kw: cmds.append(cmd))
    args = argparse.Namespace(num_samples=3, model_samples=[], ablation_samples=None, config="base.yaml",
                              seed=0, batch_size=8, max_new_tokens=None, attributes=None,
                              baseline_temperature=0.9)
    fidelity.generate(args, tmp_path, tmp_path / "gate", "smollm2-135m:fewshot", split="val",
                      config="val.yaml", n=5, temperature=0.6)
    fidelity.generate(args, tmp_path / "b", tmp_path / "gate", "smollm2-135m:fewshot")
    fidelity.generate(args, tmp_path / "c", tmp_path / "gate", "smollm2-135m:mop", temperature=1.0,
                      gate_temperature=2.0)
    args.top_p = 0.9
    fidelity.generate(args, tmp_path / "d", tmp_path / "gate", "smollm2-135m:mop", temperature=1.0)
    chosen, default, tempered, nucleus = cmds
    assert "--gate-temperature" not in chosen + default
    assert "--top-p" not in chosen + default + tempered  # 1.0 (or a Namespace without it): generate's default
    assert nucleus[nucleus.index("--top-p") + 1] == "0.9"
    assert tempered[tempered.index("--gate-temperature") + 1] == "2.0"
    assert chosen[chosen.index("--temperature") + 1] == "0.6" and chosen.count("--temperature") == 1
    assert chosen[chosen.index("--split") + 1] == "val" and chosen[chosen.index("--data") + 1] == "val.yaml"
    assert chosen[chosen.index("--num-samples") + 1] == "5"
    assert default[default.index("--temperature") + 1] == "0.9"  # no choice: --baseline-temperature
    assert default[default.index("--split") + 1] == "test"
    assert default[default.index("--data") + 1] == "base.yaml"


def test_model_slug_keeps_bundled_names_and_flattens_folders_and_hub_ids():
    from common import model_slug

    assert model_slug("smollm2-135m") == "smollm2-135m" and model_slug("gemma3-270m") == "gemma3-270m"
    assert model_slug("meta-llama/Meta-Llama-3-8B-Instruct") == "meta-llama--Meta-Llama-3-8B-Instruct"
    assert model_slug("/models/llama 3:v2/") == "models--llama--3--v2"
    assert model_slug("./mylm") == "mylm" and model_slug("../a/b") == "a--b"
    with pytest.raises(ValueError, match="no file name"):
        model_slug("/")


def test_fidelity_runs_take_an_lm_folder_or_hub_id(tmp_path, monkeypatch, capsys):
    """A run's MODEL may be a local folder (read from where the command runs) or a hub id: its set lands in
    the workdir's samples folder under a flat name, and --model-samples keys on the same name."""
    import fidelity

    (tmp_path / "lms" / "mylm").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    args = fidelity.parse_args(["--runs", "lms/mylm:mop", "org/big-lm:fewshot", "smollm2-135m:uniform",
                                "--model-samples", "lms/mylm=7", "org/big-lm=5", "--workdir", "w"])
    folder = str(tmp_path / "lms" / "mylm")
    assert args.runs == [f"{folder}:mop", "org/big-lm:fewshot", "smollm2-135m:uniform"]
    assert args.workdir == str(tmp_path / "w")  # read from here, not from the repository root
    assert fidelity.parse_args([]).workdir == "runs/fidelity"  # the defaults stay the repository's
    assert [fidelity.samples_for(args, fidelity.split_run(r)[0]) for r in args.runs] == [7, 5, 1000]
    files = [fidelity.sample_file(Path(args.workdir), r) for r in args.runs]
    assert all(f.parent == tmp_path / "w" / "samples" for f in files)
    assert [f.name for f in files] == [f"{fidelity.model_slug(folder)}__mop.jsonl",  # tested above
                                       "org--big-lm__fewshot.jsonl", "smollm2-135m__uniform.jsonl"]
    for bad, message in ((["--runs", "smollm2-135m:mopp"], "is not MODEL:METHOD"),
                         (["--runs", "smollm2-135m"], "is not MODEL:METHOD"),
                         (["--model-samples", "gemma3-270m"], "is not MODEL=N"),
                         (["--model-samples", "gemma3-270m=0"], "is not MODEL=N")):
        with pytest.raises(SystemExit):
            fidelity.parse_args(bad)
        assert message in capsys.readouterr().err


def test_fidelity_gap_finds_the_sets_fidelity_wrote_for_an_lm_folder(tmp_path, monkeypatch):
    """fidelity_gap.py --model takes the LM as fidelity.py --runs did (a folder relative to here) and picks
    exactly that LM's sets."""
    import argparse

    import fidelity
    import fidelity_gap

    (tmp_path / "mylm").mkdir()
    monkeypatch.chdir(tmp_path)
    args = fidelity.parse_args(["--runs", "mylm:mop", "mylm:fewshot", "smollm2-135m:mop", "--workdir", "w"])
    for run in args.runs:
        out = fidelity.sample_file(Path(args.workdir), run)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps({"text": f"{run} {i}"}) + "\n" for i in range(3)))
    gap = argparse.Namespace(model="mylm", num_samples=3, samples=str(tmp_path / "w" / "samples"))
    picked = fidelity_gap.full_sets(gap)
    assert sorted(picked) == sorted(fidelity.sample_file(Path("w"), r).name[: -len(".jsonl")]
                                    for r in args.runs[:2])
    assert all(texts[0].startswith(str(tmp_path / "mylm")) for texts in picked.values())
    assert list(fidelity_gap.full_sets(argparse.Namespace(**{**vars(gap), "model": "smollm2-135m"}))) \
        == ["smollm2-135m__mop"]


def test_fidelity_generate_args_reach_generate_py_and_win_over_its_own(tmp_path, monkeypatch):
    import fidelity

    from mop.cli import COMMANDS, _load, parse_command

    cmds = []
    monkeypatch.setattr(fidelity.subprocess, "run", lambda cmd, **kw: cmds.append(cmd))
    args = fidelity.parse_args(["--generate-args=--batch-size 4 --dtype bfloat16 --device cpu",
                                "--num-samples", "3"])
    fidelity.generate(args, tmp_path, tmp_path / "gate", "org/big-lm:fewshot")
    cmd = cmds[0]
    assert cmd[1] == "generate.py" and cmd[cmd.index("--model") + 1] == "org/big-lm"
    assert cmd[cmd.index("--output") + 1] == str(tmp_path / "samples" / "org--big-lm__fewshot.jsonl")
    values = parse_command(_load(COMMANDS["generate"]), cmd[2:], "generate.py")  # as generate.py parses it
    assert (values["batch_size"], values["dtype"], values["device"]) == (4, "bfloat16", "cpu")
    assert values["model"] == "org/big-lm" and values["num_samples"] == 3


def test_fidelity_train_passes_its_overrides_and_refuses_to_resume_with_others(tmp_path, monkeypatch):
    import fidelity

    cmds = []
    monkeypatch.setattr(fidelity.subprocess, "run", lambda cmd, **kw: cmds.append(cmd))
    args = fidelity.parse_args(["--config", "c.yaml", "--epochs", "1",
                                "--train-args=--model.explore_samples 16 --model.lr 0.01"])
    fidelity.train(args, tmp_path / "w")
    assert cmds[0][-4:] == ["--model.explore_samples", "16", "--model.lr", "0.01"]
    assert cmds[0][cmds[0].index("--trainer.max_epochs") + 1] == "1" and "--ckpt_path" not in cmds[0]
    (tmp_path / "w" / "checkpoints").mkdir()
    (tmp_path / "w" / "checkpoints" / "last.ckpt").write_bytes(b"")
    fidelity.train(args, tmp_path / "w")  # the same overrides: resumes
    assert cmds[1][cmds[1].index("--ckpt_path") + 1] == str(tmp_path / "w" / "checkpoints" / "last.ckpt")
    newer = tmp_path / "w" / "checkpoints" / "last-v1.ckpt"  # beside a last.ckpt Lightning did not write
    newer.write_bytes(b"")
    os.utime(newer, (time.time() + 5, time.time() + 5))
    fidelity.train(args, tmp_path / "w")
    assert cmds[2][cmds[2].index("--ckpt_path") + 1] == str(newer)
    newer.unlink()
    with pytest.raises(SystemExit, match="was trained with --train-args='--model.explore_samples 16"):
        fidelity.train(fidelity.parse_args(["--train-args=--model.explore_samples 8"]), tmp_path / "w")
    assert len(cmds) == 3
    recorded = fidelity.trained_with(tmp_path / "w", tmp_path / "w" / "gate")
    assert recorded == "--model.explore_samples 16 --model.lr 0.01"
    assert fidelity.trained_with(tmp_path / "w", tmp_path / "other_gate") is None


def test_fidelity_gap_cuts_at_sentence_ends_only():
    from fidelity_gap import count_sentences, cut_sentences

    text = 'A mess. It drags on ("too long!") and on... Still, 3.5 stars? Maybe'
    assert count_sentences(text) == 5
    assert cut_sentences(text, 1) == "A mess."
    assert cut_sentences(text, 2) == 'A mess. It drags on ("too long!")'  # the "!" before ")" ends one
    assert cut_sentences(text, 4) == 'A mess. It drags on ("too long!") and on... Still, 3.5 stars?'
    assert cut_sentences(text, 9) == text  # fewer sentences than asked: whole
    assert count_sentences("  One sentence without an end ") == 1
    assert count_sentences("Ends with a full stop.") == 1


def test_fidelity_gap_cut_gives_every_set_the_same_sentence_budget_per_row(tmp_path, monkeypatch):
    import gzip

    import fidelity_gap

    monkeypatch.chdir(tmp_path)  # main() changes directory to ROOT: restored after the test
    monkeypatch.setattr(fidelity_gap, "ROOT", tmp_path)
    monkeypatch.setattr(fidelity_gap, "sentence_budget", lambda gate, n, seed: (
        [1, 2, 3][:n], {"one_sentence_share": 0.5, "mean_sentences": 1.5}))
    samples = tmp_path / "sets"
    samples.mkdir()
    texts = ["One. Two. Three. Four.", "One. Two. Three.", "One! Two? Three. Four"]
    for name in ("m__a", "m__b"):
        with gzip.open(samples / f"{name}.jsonl.gz", "wt") as f:
            for t in texts:
                f.write(json.dumps({"text": t, "label": None}) + "\n")
    assert fidelity_gap.main(["cut", "--samples", str(samples), "--gate", "unused", "--policy", "budget",
                              "--workdir", str(tmp_path / "w")]) == 0
    for name in ("m__a", "m__b"):
        lines = (tmp_path / "w" / "samples" / f"{name}.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert [r["text"] for r in rows] == ["One.", "One. Two.", "One! Two? Three."]
        assert [r["uncut_text"] for r in rows] == texts
    report = json.loads((tmp_path / "w" / "cut.json").read_text())
    assert report["sets"]["m__a"]["cut_share"] == 1.0


def test_fidelity_gap_blocks_scores_disjoint_aligned_blocks_and_pair_agreement():
    import numpy as np
    from fidelity_gap import block_agreement

    from mop.evaluate import fid, l2_normalise

    rng = np.random.default_rng(0)
    d, n = 8, 400
    real = l2_normalise(rng.normal(size=(n, d)))
    near = l2_normalise(rng.normal(size=(n, d)))
    far = l2_normalise(rng.normal(size=(n, d)) + np.r_[3.0, np.zeros(d - 1)])
    res = block_agreement(real, {"near": near, "far": far, "copy": near.copy()}, block=100)
    assert res["blocks"] == 4
    assert res["sets"]["far"]["blocks"][2] == pytest.approx(fid(real[200:300], far[200:300]))  # aligned rows
    assert res["sets"]["near"]["fid"] == pytest.approx(fid(real, near))
    assert res["sets"]["near"]["trace_cov"] == pytest.approx(np.trace(np.cov(near.T)))
    far_pairs = [p for p in res["pairs"] if p["worse"] == "far"]
    assert len(far_pairs) == 2 and all(p["agreeing_blocks"] == 1.0 and p["fid_gap"] > 0.5 for p in far_pairs)
    tie = [p for p in res["pairs"] if {p["better"], p["worse"]} == {"near", "copy"}]
    assert len(tie) == 1 and tie[0]["agreeing_blocks"] == 0.0  # equal FIDs in every block: no block agrees
    with pytest.raises(SystemExit, match="--block"):
        block_agreement(real, {"near": near}, block=300)


def test_fidelity_gap_axes_measures_spread_and_shift_along_the_real_principal_axes():
    import numpy as np
    from fidelity_gap import axis_profile

    rng = np.random.default_rng(0)
    n, d = 20000, 6
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    real = rng.normal(size=(n, d)) * scales
    narrow = rng.normal(size=(n, d)) * scales * np.r_[0.5, np.ones(d - 1)]  # half the spread on axis 1
    shifted = rng.normal(size=(n, d)) * scales + np.r_[0, 3.0, np.zeros(d - 2)]  # +1 std along axis 2
    off = rng.normal(size=(n, d)) * scales + rng.normal(size=(n, d)) * np.r_[np.zeros(d - 2), 3.0, 3.0]
    res = axis_profile(real, {"narrow": narrow, "shifted": shifted, "off": off}, n_axes=3, subspace=2)
    ratio = {k: np.array(r["var_ratio"]) for k, r in res["sets"].items()}
    assert ratio["narrow"] == pytest.approx([0.25, 1, 1], abs=0.05)
    # +1 real std along axis 2 (the sign is the eigenvector's)
    assert abs(res["sets"]["shifted"]["mean_shift"][1]) == pytest.approx(1.0, abs=0.05)
    assert np.abs(res["sets"]["narrow"]["mean_shift"]).max() < 0.05
    assert res["real"]["share_in_subspace"] == pytest.approx((25 + 9) / (scales ** 2).sum(), abs=0.02)
    # variance added off the real top-2 subspace: same inside, more in total
    assert res["sets"]["off"]["share_in_subspace"] == pytest.approx(34 / ((scales ** 2).sum() + 18), abs=0.02)
    assert res["sets"]["off"]["total_var"] > res["real"]["total_var"] + 17


def test_oracle_exemplar_picks_the_closest_response_of_another_record():
    import numpy as np
    from oracle_exemplar import nearest_exemplars

    from mop.evaluate import l2_normalise

    pool = l2_normalise(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    real = l2_normalise(np.array([[0.9, 0.1], [0.1, 0.9], [1.0, 0.0]]))
    best, cos = nearest_exemplars(real, pool, ["t1", "t2", "p0"], ["p0", "p1", "p2"])
    assert best == [0, 1, 2]  # the third real text is pool record p0 itself: its own response is skipped
    assert cos[2] == pytest.approx(np.sqrt(0.5))
    assert cos[0] == pytest.approx(0.9 / np.sqrt(0.82))


def test_fidelity_gap_paired_compares_every_set_with_one_on_the_same_contexts(tmp_path, monkeypatch):
    import fidelity_gap
    import numpy as np

    from mop.evaluate import fid, l2_normalise

    rng = np.random.default_rng(0)
    n, d = 60, 6
    topic = rng.normal(size=(n, d))
    vectors = {"real": topic + 0.5 * rng.normal(size=(n, d)), "mop": topic + 0.5 * rng.normal(size=(n, d))}
    vectors["far"] = vectors["mop"] + 0.3  # the same texts moved away from the real ones
    vectors["short"] = vectors["mop"][: n - 1]
    texts = {k: [f"{k} {i}" for i in range(len(v))] for k, v in vectors.items()}
    lookup = {t: vec for k in vectors for t, vec in zip(texts[k], vectors[k])}

    def fake_load_real(args):
        return (lambda ts, name: l2_normalise(np.stack([lookup[t] for t in ts])), texts["real"],
                l2_normalise(vectors["real"]), [])
    monkeypatch.setattr(fidelity_gap, "load_real", fake_load_real)
    for folder, names in (("a", ["mop", "short"]), ("b", ["far"])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / f"m__{name}.jsonl").write_text(
                "".join(json.dumps({"text": t}) + "\n" for t in texts[name]))
    common = ["paired", "--config", "c.yaml", "--gate", "g", "--num-samples", str(n), "--draws", "50",
              "--samples", str(tmp_path / "a"), str(tmp_path / "b")]
    assert fidelity_gap.main([*common, "--against", "a/m__mop", "--output", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["set"] for r in out["rows"]] == ["b/m__far"]  # a set of fewer rows than contexts is left out
    got = out["rows"][0]["fid"]
    real, mop, far = (l2_normalise(vectors[k]) for k in ("real", "mop", "far"))
    assert got["diff"] == pytest.approx(fid(real, mop) - fid(real, far)) and got["ci95"][1] < 0
    assert "b/m__far" in (tmp_path / "out.md").read_text()
    with pytest.raises(SystemExit, match="no set of 60 rows by that name"):
        fidelity_gap.main([*common, "--against", "m__mop"])
    # two folders of the same name would give two sets one name: refused, and told apart by LABEL=FOLDER
    (tmp_path / "c" / "a").mkdir(parents=True)
    (tmp_path / "c" / "a" / "m__mop.jsonl").write_text((tmp_path / "b" / "m__far.jsonl").read_text())
    twins = [*common[:-3], "--against", "a/m__mop", "--output", str(tmp_path / "twins")]
    with pytest.raises(SystemExit, match="two folders give a set named 'a/m__mop'"):
        fidelity_gap.main([*twins, "--samples", str(tmp_path / "a"), str(tmp_path / "c" / "a")])
    assert fidelity_gap.main([*twins, "--samples", str(tmp_path / "a"), f"moved={tmp_path / 'c' / 'a'}"]) == 0
    rows = json.loads((tmp_path / "twins.json").read_text())["rows"]
    assert [r["set"] for r in rows] == ["moved/m__mop"]
    assert rows[0]["fid"]["diff"] == pytest.approx(got["diff"])  # the moved set is the far one


def test_model_shapes_build_the_same_shape_with_seeded_random_weights(tiny_model_dir, tmp_path):
    """model_shapes: a packed folder holds no weights; build gives a loadable model of the same config, with
    weights that are not the original's and are the same at every build; load_bench_lm(random_weights) builds
    that model without writing it."""
    import model_shapes
    from common import load_bench_lm

    from mop.assets import load_lm

    shapes = tmp_path / "shapes"
    model_shapes._copy_light(Path(tiny_model_dir), shapes / "tiny")
    assert not any(p.name.endswith(model_shapes.WEIGHT_SUFFIXES) for p in shapes.rglob("*"))
    # the tiny model was made with seed 0: seed 1 here
    built = [model_shapes.build(shapes, tmp_path / name, "float32", seed=1) for name in ("a", "b")]
    assert built[0] == built[1] and built[0][0].startswith("tiny (")
    original, original_tok = load_lm(tiny_model_dir)
    a, tok = load_lm(str(tmp_path / "a" / "tiny"))
    b, _ = load_lm(str(tmp_path / "b" / "tiny"))
    assert a.config.to_dict() | {"_name_or_path": ""} == b.config.to_dict() | {"_name_or_path": ""}
    assert a.config.num_hidden_layers == original.config.num_hidden_layers
    assert tok("a review")["input_ids"] == original_tok("a review")["input_ids"]
    sa, sb, so = a.state_dict(), b.state_dict(), original.state_dict()
    assert sa.keys() == so.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], so[k]) for k in sa if k.endswith("proj.weight"))
    model_shapes.build(shapes, tmp_path / "c", "float32", seed=0)  # load_bench_lm's seed
    sc = load_lm(str(tmp_path / "c" / "tiny"))[0].state_dict()
    unsaved, _ = load_bench_lm(str(tmp_path / "a" / "tiny"), "float32", "cpu", random_weights=True)
    assert all(torch.equal(unsaved.state_dict()[k], sc[k]) for k in sc)
    assert "random weights" in unsaved.mop_name


def _result_file(path: Path, model: str, n: int, fids: dict[str, tuple], ref=None) -> None:
    rows = [{"name": f"{model}:{m}", "fid": f, "ci95": {"fid": [lo, hi]}} for m, (f, lo, hi) in fids.items()]
    group = {"n": n, "embedder": "minilm-l6", "rows": rows}
    if ref is not None:
        group["reference"] = {"name": "real train", "fid": ref[0], "ci95": {"fid": [ref[1], ref[2]]}}
    other = {"n": n, "embedder": "minilm-l6", "rows": [{"name": "other-lm:mop", "fid": 9.0,
                                                        "ci95": {"fid": [8.0, 10.0]}}]}
    path.write_text(json.dumps({"groups": [other, group]}))


def test_fidelity_overview_compares_each_gate_with_the_strongest_baseline(tmp_path):
    """fidelity_overview: per method the lower FID over the panel's baseline files; each variant against the
    best of those and of its own file's baselines; the interval test and the 30% ratio; a missing variant file
    is listed as missing; the table, JSON and figure are written from the committed results."""
    import fidelity_overview as ov

    m = "lm"
    _result_file(tmp_path / "main.json", m, 100, {"mop": (0.60, 0.55, 0.65), "fewshot": (1.00, 0.90, 1.10),
                                                   "uniform": (0.90, 0.80, 1.00)}, ref=(0.5, 0.45, 0.55))
    _result_file(tmp_path / "val.json", m, 100, {"fewshot": (0.80, 0.70, 0.90),
                                                  "uniform": (0.95, 0.85, 1.05)})
    _result_file(tmp_path / "close.json", m, 100, {"mop": (0.78, 0.70, 0.86), "uniform": (0.75, 0.70, 0.80)})
    _result_file(tmp_path / "overlap.json", m, 100, {"mop": (0.70, 0.62, 0.75)})
    variants = (("main", "main.json"), ("close", "close.json"), ("absent", "absent.json"),
                ("o", "overlap.json"))
    panel = ov.Panel("t", m, 100, ("main.json", "val.json"), variants)
    s = ov.panel_summary(panel, tmp_path)
    assert {k: b["fid"] for k, b in s["baselines"].items()} == {"fewshot": 0.80, "uniform": 0.90}
    assert s["best_baseline"] == "fewshot" and s["target_fid"] == pytest.approx(0.56)
    assert s["reference"]["fid"] == 0.5
    main, close, absent, overlap = s["variants"]
    assert not overlap["clear_of_every_baseline"]  # 0.75 is above few-shot's lower end, 0.70
    assert main["best_baseline"] == "fewshot" and main["below_best"] == pytest.approx(0.25)
    assert main["clear_of_every_baseline"] and not main["meets_ratio"]  # 0.65 < 0.70, but 25% < 30%
    assert close["best_baseline"] == "uniform (close.json)" and close["best_baseline_fid"] == 0.75
    assert close["below_best"] == pytest.approx(1 - 0.78 / 0.75) and not close["clear_of_every_baseline"]
    assert absent == {"label": "absent", "file": "absent.json", "missing": True}
    _result_file(tmp_path / "main.json", m, 100, {"mop": (0.50, 0.45, 0.55), "fewshot": (1.00, 0.90, 1.10)})
    assert ov.panel_summary(panel, tmp_path)["variants"][0]["meets_ratio"]  # 0.50 <= 0.7 * 0.80
    text = ov.markdown([s])
    assert "| main | 0.6000 [0.5500, 0.6500] | fewshot 0.8000 | 25.0% | yes | not met |" in text
    assert "| absent | missing (absent.json) |" in text
    with pytest.raises(ValueError, match="no lm:mop row"):
        ov.panel_summary(ov.Panel("t", m, 100, ("val.json",), (("v", "val.json"),)), tmp_path)
    out = tmp_path / "overview"
    assert ov.main(["--output", str(out)]) == 0  # the committed results
    assert out.with_suffix(".png").stat().st_size > 0
    committed = json.loads(out.with_suffix(".json").read_text())
    assert committed[0]["variants"][0]["fid"] == pytest.approx(0.1568, abs=1e-4)
