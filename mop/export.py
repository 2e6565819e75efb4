"""Plug-and-play gate export (DESIGN.md section 6): a small, LM-free directory, written atomically.

    config.json         format version, embedder name/dim, d, M, templates, sizes, LM (informational),
                        training metrics, sha256 of every other file
    gate.safetensors    W_x, W_g, W_e, log_tau (+ the frozen persona embeddings)
    personas.jsonl      id, text, cluster size
    exemplars.jsonl     id, context fields, label, response
    exemplars.faiss + exemplar_embeddings.npy   the exemplar index
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

FORMAT_VERSION = 1
GATE_FILE = "gate.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def save_pretrained(out_dir: str | Path, gate, persona_ids, persona_texts, persona_sizes, persona_emb, pool,
                    index, config: dict) -> Path:
    """Write an export into ``out_dir`` atomically: a half-written export never replaces a good one."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = {k: v.detach().cpu().float().contiguous() for k, v in gate.state_dict().items()}
        tensors["persona_emb"] = torch.as_tensor(persona_emb).float().contiguous()
        save_file(tensors, str(tmp / GATE_FILE))
        _write_jsonl(tmp / "personas.jsonl", ({"id": i, "text": t, "cluster_size": n}
                                              for i, t, n in zip(persona_ids, persona_texts, persona_sizes)))
        _write_jsonl(tmp / "exemplars.jsonl", ({"id": e.id, "context": e.context, "label": e.label,
                                                "group": e.group, "response": e.response} for e in pool))
        index.save(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        cfg = {"format_version": FORMAT_VERSION, **config,
               "num_personas": len(persona_texts), "num_exemplars": len(pool),
               "checksums": {name: _sha256(tmp / name) for name in files}}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_from_module(module, trainer, out_dir: str | Path | None = None) -> Path:
    """Export a trained :class:`mop.module.MixtureOfPersonas` (its datamodule's artifacts included)."""
    from mop.personas import read_personas

    art = trainer.datamodule.artifacts
    hp = module.hparams
    if out_dir is None:
        out_dir = hp.export_dir or Path(trainer.log_dir or trainer.default_root_dir) / "gate"
    personas = read_personas(art.directory / "personas.jsonl")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    config = {
        "embedder": art.embedder, "embed_dim": art.embed_dim, "hidden_dim": hp.hidden_dim,
        "num_candidates": hp.num_candidates, "prompt_template": hp.prompt_template,
        "context_template": art.population.spec.context_template,
        "context_columns": list(art.population.spec.context_columns),
        "use_chat_template": hp.use_chat_template, "trained_with_lm": hp.lm, "metrics": metrics,
    }
    return save_pretrained(out_dir, module.gate, [p.id for p in personas], [p.text for p in personas],
                           [p.cluster_size for p in personas], art.persona_emb, art.pool, art.index, config)
