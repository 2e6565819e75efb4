"""The gate export: save -> load round trip, checkpoint export, and every way a bad export is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONTEXT, PROMPT, assert_one_line_error, make_export, run_cli, unit_rows

from mop.errors import MopError
from mop.export import FORMAT_VERSION, GateExport, load_export
from mop.gating import Gate
from mop.index import INDEX_FILE, ExemplarIndex


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_round_trip_is_exact(tmp_path):
    ref = make_export(tmp_path / "gate", dim=32, k=6, n_pool=9)
    got = GateExport.from_pretrained(ref.path)
    for name, tensor in ref.gate.state_dict().items():
        assert torch.equal(got.gate.state_dict()[name], tensor), name
    assert torch.equal(got.persona_emb, torch.from_numpy(ref.persona_emb))
    assert torch.equal(got.pool_emb, torch.from_numpy(ref.pool_emb))
    assert got.persona_ids == ref.persona_ids and got.persona_texts == ref.persona_texts
    assert got.persona_sizes == [1, 2, 3, 4, 5, 6]
    assert got.exemplars == ref.pool  # ids, context fields, labels, groups, responses
    assert torch.allclose(got.tau, torch.linspace(0.4, 1.2, 6))
    assert got.gate_config == ref.config
    assert ({k: got.config[k] for k in ref.config.to_dict()}
            == ref.config.to_dict())  # config.json is the GateConfig
    assert got.config["num_personas"] == 6 and got.config["num_exemplars"] == 9
    q = unit_rows(np.random.default_rng(1), 3, 32)
    assert np.array_equal(got.index.search(q, 4)[1], ExemplarIndex(ref.pool_emb, kind="flat").search(q, 4)[1])
    # an export re-saved from a loaded one is the same export
    again = load_export(got.save_pretrained(tmp_path / "again"))
    assert again.exemplars == got.exemplars and torch.equal(again.gate.W_e.weight, got.gate.W_e.weight)
    assert (json.loads((tmp_path / "again" / "config.json").read_text())["checksums"]
            == got.config["checksums"])


def test_flipped_byte_is_refused(tmp_path):
    path = make_export(tmp_path / "gate", dim=16).path
    data = bytearray((path / "gate.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "gate.safetensors").write_bytes(bytes(data))
    with pytest.raises(MopError, match=r"gate\.safetensors does not match its sha256 in config\.json"):
        load_export(path)


def test_other_embedder_dimension_is_refused(tmp_path):
    path = make_export(tmp_path / "gate", dim=16).path
    with pytest.raises(MopError,
                       match="'minilm-l6' of dimension 16, but the embedder in use has dimension 384"):
        load_export(path, expected_embed_dim=384)
    export = load_export(path, expected_embed_dim=16)
    with pytest.raises(MopError, match="dimension 16.*dimension 768"):
        export.check_embed_dim(768)


def test_newer_format_and_missing_files_are_refused(tmp_path):
    path = make_export(tmp_path / "gate", dim=16).path
    _edit_config(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(MopError, match=f"format_version {FORMAT_VERSION + 1}, newer than this MoP reads"):
        load_export(path)
    path = make_export(tmp_path / "gate2", dim=16).path
    (path / INDEX_FILE).unlink()
    with pytest.raises(MopError, match=f"is missing {INDEX_FILE}"):
        load_export(path)
    (path / "config.json").unlink()
    with pytest.raises(MopError, match="is missing config.json"):
        load_export(path)
    with pytest.raises(MopError, match="does not exist"):
        load_export(tmp_path / "nowhere")


def test_paths_escaping_the_export_are_refused(tmp_path):
    path = make_export(tmp_path / "gate", dim=16).path
    outside = tmp_path / "x"
    outside.write_text("secret")
    cfg = json.loads((path / "config.json").read_text())
    _edit_config(path, checksums={**cfg["checksums"], "../x": "0" * 64})
    with pytest.raises(MopError, match=r"lists '\.\./x', which is not a file inside the export"):
        load_export(path)
    # a symbolic link leading out of the export, even with the right content and checksum
    path = make_export(tmp_path / "gate2", dim=16).path
    moved = tmp_path / "personas-outside.jsonl"
    os.replace(path / "personas.jsonl", moved)
    (path / "personas.jsonl").symlink_to(moved)
    with pytest.raises(MopError, match="personas.jsonl points outside the export directory"):
        load_export(path)


def test_save_never_replaces_a_foreign_directory(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(MopError, match="not a MoP gate export"):
        make_export(mine, dim=16)
    assert (mine / "notes.txt").read_text() == "keep me"
    first = make_export(tmp_path / "gate", dim=16, seed=0)
    second = make_export(tmp_path / "gate", dim=16, seed=1)  # an export replaces an export, atomically
    assert torch.equal(load_export(first.path).gate.W_x.weight, second.gate.W_x.weight)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def _training_run(tmp_path, write_csv):
    """A checkpoint as train.py writes it (weights_only-loadable), its artifacts folder and its config."""
    rows = [{"text": f"review {i} about film {i % 7}", "movie": f"Film {i % 7}",
             "label": ["fresh", "rotten"][i % 2]}
            for i in range(60)]
    csv = write_csv(rows)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data:\n  dataset:\n    source: {csv}\n    response_column: text\n"
                   "    context_columns: [movie]\n"
                   f"    label_column: label\n    context_template: '{CONTEXT}'\n")
    from mop.data import load_dataset_config, load_population

    train = load_population(load_dataset_config(cfg))["train"]
    pool = train[:10]
    rng = np.random.default_rng(3)
    dim, k = 24, 4
    art = tmp_path / "artifacts" / "abc"
    art.mkdir(parents=True)
    (art / "personas.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "text": f"You are reviewer {i}.",
                                                            "cluster_size": 3 + i}) + "\n" for i in range(k)))
    np.save(art / "persona_emb.npy", unit_rows(rng, k, dim))
    (art / "pool_ids.json").write_text(json.dumps([r.id for r in pool]))
    ExemplarIndex(unit_rows(rng, len(pool), dim), kind="flat").save(art)
    (art / "meta.json").write_text(json.dumps({"embedder": "minilm-l6", "embed_dim": dim, "num_personas": k}))
    gate = Gate(dim, k, 8, seed=5)
    ckpt = {"epoch": 1, "global_step": 30,
            "state_dict": {f"gate.{n}": t for n, t in gate.state_dict().items()},
            "hyper_parameters": {"lm": "smollm2-135m", "prompt_template": PROMPT, "use_chat_template": False,
                                 "hidden_dim": 8, "num_candidates": 4},
            "mop": {"artifacts_dir": str(art), "embedder": "minilm-l6", "embed_dim": dim, "num_personas": k,
                    "persona_texts": [f"You are reviewer {i}." for i in range(k)], "lm": "smollm2-135m"}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    return tmp_path / "last.ckpt", cfg, gate, pool


def test_export_from_checkpoint(tmp_path, write_csv):
    ckpt, cfg, gate, pool = _training_run(tmp_path, write_csv)
    from mop.export import export_checkpoint

    out = export_checkpoint(ckpt, tmp_path / "gate", config_path=str(cfg))
    got = load_export(out)
    for name, tensor in gate.state_dict().items():
        assert torch.equal(got.gate.state_dict()[name], tensor), name
    assert got.exemplars == pool and got.persona_sizes == [3, 4, 5, 6]
    assert got.config["context_template"] == CONTEXT and got.config["trained_with_lm"] == "smollm2-135m"
    assert got.config["checkpoint"] == {"file": "last.ckpt", "epoch": 1, "global_step": 30}
    # a gate trained on label-consistent exemplars (data.mask_other_label) says so, so generation does too
    assert got.config["mask_other_label"] is False and not got.gate_config.mask_other_label
    raw = torch.load(ckpt, weights_only=True)
    raw["mop"]["mask_other_label"] = True
    torch.save(raw, ckpt)
    assert load_export(export_checkpoint(ckpt, tmp_path / "gate-label", config_path=str(cfg))
                       ).gate_config.mask_other_label is True


def test_export_cli_errors_are_one_line(tmp_path, write_csv):
    ckpt, cfg, _, _ = _training_run(tmp_path, write_csv)
    assert_one_line_error(run_cli("export", str(ckpt), str(tmp_path / "g")), "does not record its dataset",
                          "--config")
    assert_one_line_error(run_cli("export", str(tmp_path / "none.ckpt"), str(tmp_path / "g")),
                          "does not exist")
    proc = run_cli("export", str(ckpt), str(tmp_path / "g"), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "4 personas, 10 exemplars" in proc.stdout
