"""Label-consistent exemplars end to end: a tiny train.py run with ``data.mask_other_label`` exports a gate
that says so, and ``generate.py`` then draws every exemplar among those with the context's label
(helpers.World)."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import popen, wait_ok

from mop.datamodule import PopulationDataModule
from mop.export import load_export

pytestmark = pytest.mark.slow  # two fresh train.py / generate.py processes (about 30 s on 2 cores)


def test_a_gate_trained_on_label_consistent_exemplars_is_sampled_with_them(tiny_world_files, tmp_path):
    w = tiny_world_files
    gate = tmp_path / "gate"
    proc = popen(["train.py", "fit", "-c", str(w.config), "--validate_before_fit", "false",
                  "--data.mask_other_label", "true", "--trainer.max_epochs", "1",
                  "--trainer.default_root_dir", str(tmp_path / "run"), "--model.export_dir", str(gate)],
                 tmp_path, w.cache, tmp_path / "train.log")
    wait_ok(proc, tmp_path / "train.log")
    # the training records were scored with exemplars of their own label only
    cfg = yaml.safe_load(w.config.read_text())["data"]
    dm = PopulationDataModule(**{**cfg, "artifacts_dir": str(tmp_path / "artifacts"),
                                 "mask_other_label": True})
    dm.setup("fit")
    pool = dm.artifacts.pool
    for rec, excluded in zip(dm.artifacts.population["train"], dm.exclude["train"]):
        usable = set(range(len(pool))) - set(excluded)
        assert usable and {pool[j].label for j in usable} == {rec.label}
    export = load_export(gate)
    assert export.gate_config.mask_other_label is True
    labels = {e.id: e.label for e in export.exemplars}
    assert set(labels.values()) == {"fresh", "rotten"}
    out = tmp_path / "rows.jsonl"
    proc = popen(["generate.py", "--gating", str(gate), "--model", str(w.lm), "--data", str(w.config),
                  "--split", "train", "--num-samples", "24", "--max-new-tokens", "4", "--embedder",
                  str(w.embedder), "--output", str(out)], tmp_path, w.cache, tmp_path / "generate.log")
    wait_ok(proc, tmp_path / "generate.log")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and {r["exemplar_label"] for r in rows} == {"match"}
    assert {r["label"] for r in rows} == {"fresh", "rotten"}
    assert all(labels[r["exemplar_id"]] == r["label"] for r in rows)
