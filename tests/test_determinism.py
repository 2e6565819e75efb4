"""Same seed, same result: personas (k-means + keyword synthesis), the trained gate (two train.py processes in
separate folders give byte-identical gate.safetensors) and generated samples -- and another seed changes each,
so the comparisons are not vacuous. Uses the tiny world of tests/helpers.py (fixtures in conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import gate_tensors

from mop.embed import Embedder
from mop.personas import cluster_responses, synthesize_personas


def test_same_seed_same_personas_and_clusters(tiny_world_files, tmp_path):
    import pandas as pd

    w = tiny_world_files
    df = pd.read_csv(w.data)
    texts, ids, labels = list(df["review"]), [f"r{i}" for i in range(len(df))], list(df["label"])
    emb = Embedder(str(w.embedder), cache_root=tmp_path / "emb").encode(texts, show_progress=False)
    assert np.array_equal(emb, Embedder(str(w.embedder), cache=False).encode(texts, show_progress=False))

    def personas(seed: int):
        out = synthesize_personas(texts, ids, emb, 6, synthesizer="keywords", seed=seed, labels=labels,
                                  text_kind="movie reviews", show_progress=False)
        return [(p.id, p.text, p.cluster_size, list(p.member_ids)) for p in out]

    a, b, c = personas(0), personas(0), personas(5)
    assert a == b
    assert len({t for _, t, _, _ in a}) == 6  # six distinct personas
    assert sorted(m for *_, members in a for m in members) == sorted(ids)  # a partition of the records
    assert c != a  # another seed: another clustering, other personas
    labels0, cent0 = cluster_responses(emb, 6, seed=0)
    labels0b, cent0b = cluster_responses(emb, 6, seed=0)
    assert np.array_equal(labels0, labels0b) and np.array_equal(cent0, cent0b)
    assert not np.array_equal(cluster_responses(emb, 6, seed=5)[0], labels0)


@pytest.mark.slow  # waits for three train.py processes (about a minute of CPU on 2 cores)
def test_same_seed_same_gate_from_two_train_processes(tiny_world):
    w = tiny_world
    ref, again, seed1 = w.finished("ref"), w.finished("again"), w.finished("seed1")
    gate = "runs/tiny/gate"
    # the artifacts each run built for itself (keyword personas, k-means, embeddings, index) are identical
    a_art, b_art = (next((d / "artifacts").glob("*/personas.jsonl")) for d in (ref, again))
    assert a_art.read_bytes() == b_art.read_bytes()
    assert (ref / gate / "gate.safetensors").read_bytes() == (again / gate / "gate.safetensors").read_bytes()
    for name in ("personas.jsonl", "exemplars.jsonl", "exemplar_embeddings.npy"):
        assert (ref / gate / name).read_bytes() == (again / gate / name).read_bytes(), name
    cfg_a, cfg_b = (json.loads((d / gate / "config.json").read_text()) for d in (ref, again))
    man_a, man_b = (json.loads((d / gate / "manifest.json").read_text())["files"] for d in (ref, again))
    assert cfg_a["metrics"] == cfg_b["metrics"]
    assert {n: e for n, e in man_a.items() if n != "config.json"} == {n: e for n, e in man_b.items()
                                                                       if n != "config.json"}
    # seed_everything 1 (the exploration pairs drawn in training) trains another gate
    g0, g1 = gate_tensors(ref / gate), gate_tensors(seed1 / gate)
    diff = max(float((g0[k] - g1[k]).abs().max()) for k in g0)
    assert diff > 1e-6, diff
    assert (seed1 / gate / "personas.jsonl").read_bytes() == (ref / gate / "personas.jsonl").read_bytes()


@pytest.mark.slow  # generates from the gate of a train.py process (the tiny world's run "ref")
def test_same_seed_same_samples(tiny_world, tmp_path, monkeypatch):
    from mop.cli import main

    w = tiny_world
    monkeypatch.setenv("MOP_CACHE", str(w.cache))
    args = ["--gating", str(w.finished("ref") / "runs/tiny/gate"), "--model", str(w.lm),
            "--data", str(w.config), "--split", "test", "--num-samples", "10", "--max-new-tokens", "12",
            "--no-progress", "--shuffle"]

    def rows(name: str, *extra: str) -> list[dict]:
        out = tmp_path / f"{name}.jsonl"
        assert main(["generate", *args, *extra, "--output", str(out)]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    a, b = rows("a"), rows("b", "--batch-size", "3")  # the batch size does not change a sample
    assert a == b
    c = rows("c", "--seed", "1")
    assert [r["id"] for r in c] != [r["id"] for r in a]  # --shuffle: another seed, another order of contexts
    same_ids = {r["id"]: r for r in c}
    pairs = [(r, same_ids[r["id"]]) for r in a if r["id"] in same_ids]
    assert pairs and any((x["text"], x["persona_id"], x["exemplar_id"])
                         != (y["text"], y["persona_id"], y["exemplar_id"]) for x, y in pairs)
