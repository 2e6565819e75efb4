"""The bad-input matrix (issue 8): every way a user can hand MoP a wrong file, config, export, model or
context.

Each case runs the real command (``mop ...``, ``python generate.py ...``, ``python train.py ...``) and asserts
what a user is promised: exit status 2, no traceback, one line on stderr naming what was wrong and where, and
every existing output (a personas file, an export, a samples file) left byte for byte as it was.

Start-up dominates (Lightning's import alone takes ~15 s here), so the commands run in two interpreters, one
for the ``train.py`` cases and one for the others, each executing the entry point as ``__main__`` with the
case's argv, in the case's folder, with file descriptor 2 redirected (every byte written to stderr is
captured). A few cases (one per entry point, and the memory-measured 100 MB line) run as plain subprocesses
through ``run_cli``; ``MOP_BAD_INPUTS_SUBPROCESS=1`` runs every case that way. ``MOP_BAD_INPUTS_TABLE=FILE``
writes the table of cases and the messages they printed as markdown.

The security half checks that exports hold no pickle, that nothing in ``mop/`` unpickles, and that remote code
is never trusted by default.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
from helpers import REPO, assert_one_line_error, make_export, run_cli

MB = 1 << 20


# ------------------------------------------------------------------------------------------------- the inputs
def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _csv(n: int = 30, extra: str = "") -> str:
    rows = [f"review number {i} says good things about it,Film {i % 5},{['fresh', 'rotten'][i % 2]}"
            for i in range(n)]
    return "text,movie,label\n" + "\n".join(rows) + "\n" + extra


def _dataset_yaml(d: Path, source: Path | str, **extra) -> Path:
    lines = ["data:", "  dataset:", f"    source: {source}", "    response_column: text",
             "    context_columns: [movie]", "    label_column: label"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return _write(d / "config.yaml", "\n".join(lines) + "\n")


def _data_show(d: Path, name: str, content: str | bytes, **extra):
    """`mop data show -c CONFIG` over a data file NAME holding CONTENT."""
    return ["data", "show", "-c", str(_dataset_yaml(d, _write(d / name, content), **extra))], []


def _personas(d: Path, name: str, content: str | bytes, *more: str, personas_extra: str = "", **extra):
    """`mop personas -c CONFIG --out DIR` where DIR already holds a personas.jsonl that must survive;
    ``personas_extra`` is a line of the config's data.personas section."""
    out = _write(d / "out" / "personas.jsonl", '{"id": "p000", "text": "You are the old persona."}\n')
    cfg = _dataset_yaml(d, _write(d / name, content), **extra)
    if personas_extra:
        cfg.write_text(cfg.read_text() + f"  personas:\n    {personas_extra}\n")
    return ["personas", "-c", str(cfg), "--out", str(out.parent), "--synthesizer", "keywords", *more], [out]


# the train.py cases: a small valid config whose every case changes one thing; a fake LM folder passes the
# path checks (no case gets as far as loading it) and an export directory that must survive
def _train(d: Path, *overrides: str, config_extra: str = ""):
    _write(d / "pop.csv", _csv())
    _write(d / "fake-lm" / "config.json", "{}")
    old_export = _write(d / "gate" / "config.json", '{"format_version": 1, "note": "the previous export"}')
    cfg = _write(d / "train.yaml", f"""\
model:
  lm: {d / 'fake-lm'}
  num_candidates: 2
  hidden_dim: 8
  export_dir: {d / 'gate'}
  prompt_template: "Persona: {{persona}}\\nExample: {{exemplar_response}}\\nNow review {{movie}}:"
data:
  dataset:
    source: {d / 'pop.csv'}
    response_column: text
    context_columns: [movie]
    label_column: label
  personas:
    num_personas: 3
    synthesizer: keywords
  batch_size: 4
  artifacts_dir: {d / 'artifacts'}
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  default_root_dir: {d / 'runs'}
{config_extra}""")
    return ["fit", "-c", str(cfg), *overrides], [old_export]


# the generation / export cases: a small valid export (384-d, the bundled embedder's size), a contexts file, a
# fake model folder, and a samples file from an earlier run of the same settings, which must survive
def _export(d: Path, name: str = "gate", dim: int = 384) -> Path:
    return make_export(d / name, dim=dim, k=3, n_pool=6).path


def _generate(d: Path, gating: Path | None = None, contexts: str | bytes | None = None, *more: str,
              output: Path | None = None, model: str | None = None):
    gating = gating or _export(d)
    ctx = _write(d / "contexts.csv", contexts if contexts is not None else "movie,label\nFilm A,fresh\n")
    if model is None:
        model = str(_write(d / "fake-lm" / "config.json", "{}").parent)
    protect = []
    if output is None:
        output = _write(d / "samples.jsonl", json.dumps({"id": "c000000-0", "model": model, "adapter": None,
                                                         "method": "mop", "seed": 0,
                                                         "text": "an old row"}) + "\n")
        protect = [output]
    return ["generate.py", "--gating", str(gating), "--model", model, "--contexts", str(ctx),
            "--num-samples", "2", "--output", str(output), "--no-progress", *more], protect


def _edit_config(gate: Path, **changes) -> Path:
    cfg = json.loads((gate / "config.json").read_text())
    cfg.update(changes)
    (gate / "config.json").write_text(json.dumps(cfg))
    return gate


class _Evil:
    """Unpickling this runs code: it creates the file ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _evil_checkpoint(d: Path) -> Path:
    import torch

    path = d / "evil.ckpt"
    torch.save({"state_dict": {}, "mop": _Evil(d / "PWNED")}, path)
    return path


def _xlsx_bytes() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return buf.getvalue()


PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01"
       b"\x08\x06\x00\x00\x00\x1f\x15\xc4\x89")


# -------------------------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    id: str
    build: Callable[[Path], tuple[list[str], list[Path]]]  # tmp dir -> (argv, outputs that must not change)
    expect: tuple[str, ...]  # fragments of the one error line
    # cli / train: in a shared interpreter (mop and generate.py / train.py); real: its own subprocess
    # (run_cli); train.py: train.py in its own subprocess; rusage: its own subprocess, peak memory measured
    runner: str = "cli"
    check: Callable[[SimpleNamespace, Path], None] | None = None  # further assertions
    slow: bool = False  # marked slow: a second Lightning import, in its own process (~15 s of CPU)


def _no_marker(res, d: Path) -> None:
    assert not (d / "PWNED").exists(), "the checkpoint's pickled code ran"


def _fast_and_small(res, d: Path) -> None:
    assert res.seconds < 60, f"{res.seconds:.1f} s to refuse a 100 MB line"
    assert 0 < res.maxrss_mb < 400, f"peak RSS {res.maxrss_mb:.0f} MB to refuse a 100 MB line"


def _no_dir(res, d: Path) -> None:
    assert not (d / "missing").exists()


def _unchanged_foreign_dir(res, d: Path) -> None:
    assert (d / "mine" / "notes.txt").read_text() == "keep me"


CASES = [
    # -- data files
    Case("data/empty-file", lambda d: _data_show(d, "pop.csv", ""), ("pop.csv' is empty",)),
    Case("data/header-only", lambda d: _data_show(d, "pop.csv", "text,movie,label\n"),
         ("pop.csv' has a header but no rows",)),
    Case("data/missing-column", lambda d: _data_show(d, "pop.csv", "review,movie,label\nok,A,fresh\n"),
         ("column(s) 'text' not found", "available: review, movie, label")),
    Case("data/misspelt-column", lambda d: _data_show(d, "pop.csv", "text,moive,label\nok,A,fresh\n"),
         ("'movie' not found", "did you mean 'moive'")),
    Case("data/all-responses-empty",
         lambda d: _personas(d, "pop.csv", "text,movie,label\n,A,fresh\n  ,B,x\n"),
         ("no records left of 2 row(s)", "2 empty response(s) (column 'text')")),
    Case("data/nan-responses-in-jsonl",
         lambda d: _data_show(d, "pop.jsonl", '{"text": null, "movie": "A", "label": "x"}\n'
                                              '{"text": NaN, "movie": "B", "label": "y"}\n'),
         ("no records left", "2 empty response(s)")),
    Case("data/non-utf8-csv",
         lambda d: _data_show(d, "pop.csv", b"text,movie,label\nok,A,x\n\xc3\x28 no,B,y\n"),
         ("pop.csv' is not valid UTF-8", "at byte 24")),
    Case("data/non-utf8-jsonl", lambda d: _data_show(d, "pop.jsonl", b'{"text": "caf\xe9", "movie": "A"}\n'),
         ("pop.jsonl' is not valid UTF-8", "at byte 13")),
    Case("data/100MB-single-line",
         lambda d: _data_show(d, "pop.csv", b"text,movie,label\n" + b"x" * (100 * MB) + b",A,fresh\n"),
         ("line 2 is longer than 8 MB",), runner="rusage", check=_fast_and_small),
    Case("data/duplicate-ids",
         lambda d: _personas(d, "pop.csv", "id,text,movie,label\na1,one two,A,x\na2,three,B,y\na1,four,C,x\n",
                             id_column="id"),
         ("duplicate id 'a1' in column 'id' (rows 1 and 3)",)),
    Case("data/png-file", lambda d: _data_show(d, "pop.png", PNG), ("pop.png': unsupported type '.png'",)),
    Case("data/xlsx-renamed-csv", lambda d: _data_show(d, "pop.csv", _xlsx_bytes()),
         ("pop.csv' looks like a ZIP archive (an Excel .xlsx",)),
    Case("data/png-renamed-csv", lambda d: _data_show(d, "pop.csv", PNG),
         ("pop.csv' looks like a PNG image",)),
    Case("data/csv-renamed-parquet", lambda d: _data_show(d, "pop.parquet", _csv()),
         ("pop.parquet' is not a Parquet file (it looks like text)",)),
    Case("data/unknown-extension", lambda d: _data_show(d, "pop.txt", _csv()), ("unsupported type '.txt'",)),
    Case("data/missing-file",
         lambda d: (["data", "show", "-c", str(_dataset_yaml(d, d / "nowhere.csv"))], []),
         ("data file", "nowhere.csv' does not exist")),
    Case("data/invalid-jsonl-line",
         lambda d: _data_show(d, "pop.jsonl", '{"text": "a", "movie": "A"}\n{oops\n'),
         ("pop.jsonl' line 2 is not valid JSON",)),
    Case("data/fewer-records-than-personas",
         lambda d: _personas(d, "pop.csv", _csv(6), "--num-personas", "10"),
         ("--num-personas must be between 1 and the",)),
    # -- configs
    Case("config/unknown-dataset-key", lambda d: _data_show(d, "pop.csv", _csv(), reponse_column="text"),
         ("config.yaml: dataset: unknown key(s) reponse_column (did you mean 'response_column'?)",)),
    Case("config/unknown-personas-key",
         lambda d: _personas(d, "pop.csv", _csv(), personas_extra="num_persona: 2"),
         ("config.yaml: data.personas: unknown key(s) num_persona (did you mean 'num_personas'?)",)),
    Case("data/label-in-template-without-labels",
         lambda d: _data_show(d, "pop.csv", _csv(), label_column="null",
                              context_template="'a {label} {movie}'"),
         ("context_template uses {label} but the dataset has no label_column",)),
    Case("data/misspelt-context-column",
         lambda d: _data_show(d, "pop.csv", _csv(), context_columns="[moive]", context_template="'{movie}'"),
         ("column(s) 'moive' not found", "(did you mean 'movie'?)")),
    Case("data/relative-source-missing",
         lambda d: (["data", "show", "-c", str(_dataset_yaml(d, "nowhere.csv"))], []),
         ("data file 'nowhere.csv' does not exist (looked for",
          "nowhere.csv: a relative path is read from the directory the command runs in)")),
    Case("config/split-not-summing-to-1", lambda d: _data_show(d, "pop.csv", _csv(), split="[0.5, 0.2, 0.2]"),
         ("dataset split: fractions must sum to 1, got [0.5, 0.2, 0.2]",)),
    Case("config/split-via-train", lambda d: _train(d, "--data.dataset.split", "[0.5,0.2,0.2]"),
         ("dataset split: fractions must sum to 1",), runner="train"),
    Case("config/unknown-key-cli", lambda d: _train(d, "--model.num_candidate", "3"),
         ("unrecognized arguments: --model.num_candidate 3", "did you mean 'model.num_candidates'"),
         runner="train"),
    Case("config/unknown-key-in-yaml", lambda d: _train(d, config_extra="seed_everythin: 1\n"),
         ("unknown config key 'seed_everythin' (did you mean 'seed_everything'?)",), runner="train"),
    Case("config/unknown-dataset-key-train", lambda d: _train(d, "--data.dataset.respons_column", "text"),
         ("config key data.dataset: unknown key 'respons_column' (did you mean 'response_column'?)",),
         runner="train"),
    Case("config/unknown-personas-key-train", lambda d: _train(d, "--data.personas", '{"num_persona": 3}'),
         ("config key data.personas: unknown key 'num_persona' (did you mean 'num_personas'?)",),
         runner="train"),
    Case("config/no-config", lambda d: (["fit", "--trainer.max_epochs", "1"], []),
         ("needs a config: -c CONFIG",), runner="train"),
    Case("config/label-in-prompt-without-labels",
         lambda d: _train(d, "--data.dataset.label_column", "null",
                          "--model.prompt_template", "Write a {label} review of {movie}:"),
         ("prompt_template uses {label} or {exemplar[label]} but the dataset has no label_column",),
         runner="train"),
    Case("config/unknown-exemplar-field-in-prompt",
         lambda d: _train(d, "--model.prompt_template", "Example on {exemplar[moive]}: {exemplar_response}"),
         ("prompt_template uses {exemplar[moive]}, but an exemplar has only label, movie, response "
          "(did you mean 'movie'?)",), runner="train"),
    Case("config/attribute-access-in-prompt",
         lambda d: _train(d, "--model.prompt_template", "Persona: {persona.__class__} {exemplar_response}"),
         ("prompt_template has the field '{persona.__class__}': a template may use only plain fields",),
         runner="train"),
    Case("config/wrong-type", lambda d: _train(d, "--model.hidden_dim", "big"),
         ("config key model.hidden_dim: expected a positive integer, got 'big'",), runner="train"),
    Case("config/missing-config-file", lambda d: (["fit", "-c", str(d / "nope.yaml")], []),
         ("-c/--config: File does not exist", "nope.yaml"), runner="train"),
    Case("config/K-above-training-records", lambda d: _train(d, "--data.personas.num_personas", "40"),
         ("data.personas.num_personas (40) exceeds the 24 training records",), runner="train"),
    Case("config/M-above-K-x-pool", lambda d: _train(d, "--model.num_candidates", "80"),
         ("model.num_candidates (M = 80) exceeds the 72 (persona, exemplar) pairs",
          "3 personas x 24 exemplars"),
         runner="train"),
    Case("config/M-above-K-x-pool-small-pool", lambda d: _train(d, "--data.num_exemplars", "2",
                                                                "--model.num_candidates", "7"),
         ("exceeds the 6 (persona, exemplar) pairs there are (3 personas x 2 exemplars)",), runner="train"),
    Case("config/label-match-without-labels", lambda d: _train(d, "--data.mask_other_label", "true",
                                                               "--data.dataset.label_column", "null"),
         ("data.mask_other_label needs labelled records", "set data.dataset.label_column"), runner="train"),
    Case("config/zero-batch-size", lambda d: _train(d, "--data.batch_size", "0"),
         ("config key data.batch_size: must be positive, got 0",), runner="train"),
    Case("config/zero-num-personas", lambda d: _train(d, "--data.personas.num_personas", "0"),
         ("config key data.personas.num_personas: must be positive, got 0",), runner="train"),
    Case("config/negative-num-candidates", lambda d: _train(d, "--model.num_candidates", "-1"),
         ("config key model.num_candidates: must be positive, got -1",), runner="train"),
    Case("config/zero-hidden-dim", lambda d: _train(d, "--model.hidden_dim", "0"),
         ("config key model.hidden_dim: must be positive, got 0",), runner="train"),
    Case("config/negative-num-exemplars", lambda d: _train(d, "--data.num_exemplars", "-5"),
         ("config key data.num_exemplars: must be positive, got -5",), runner="train"),
    Case("config/unknown-synthesizer", lambda d: _train(d, "--data.personas.synthesizer", "gpt"),
         ("config key data.personas.synthesizer: expected one of ['llm', 'keywords', 'file'], got gpt",),
         runner="train"),
    Case("config/unknown-lm-dtype", lambda d: _train(d, "--model.lm_dtype", "float8"),
         ("config key model.lm_dtype: expected one of ['float32', 'bfloat16', 'float16']; got 'float8'",),
         runner="train"),
    Case("config/personas-file-missing", lambda d: _train(d, "--data.personas.synthesizer", "file",
                                                          "--data.personas.file", str(d / "mine.jsonl")),
         ("personas file", "mine.jsonl' does not exist"), runner="train"),
    Case("config/trainer-devices-invalid", lambda d: _train(d, "--trainer.devices", "-2"),
         ("cannot build the run from its config:", "devices"), runner="train"),
    Case("config/unknown-key-real-train.py", lambda d: _train(d, "--trainer.max_epoch", "2"),
         ("unrecognized arguments: --trainer.max_epoch 2", "did you mean 'trainer.max_epochs'"),
         runner="train.py", slow=True),
    # -- exports (read by generate.py --gating; written by mop export)
    Case("export/missing-directory", lambda d: _generate(d, gating=d / "no-gate"),
         ("no-gate' does not exist",)),
    Case("export/missing-file", lambda d: _generate(d, gating=_rm(_export(d), "gate.safetensors")),
         ("is missing gate.safetensors",)),
    Case("export/checksum-mismatch", lambda d: _generate(d, gating=_flip(_export(d), "exemplars.jsonl")),
         ("exemplars.jsonl does not match its sha256 in manifest.json", "re-export the gate")),
    Case("export/other-embedder-dimension", lambda d: _generate(d, gating=_export(d, dim=16)),
         ("of dimension 16, but the embedder in use has dimension 384",)),
    Case("export/newer-format-version",
         lambda d: _generate(d, gating=_edit_config(_export(d), format_version=99)),
         ("has format_version 99, newer than this MoP reads (2): upgrade mop",)),
    Case("export/path-escapes-directory",
         lambda d: _generate(d, gating=_add_checksum(_export(d), "../../etc/passwd")),
         ("manifest.json lists '../../etc/passwd', which is not a file inside the export directory",)),
    Case("export/pickle-listed-in-manifest",
         lambda d: _generate(d, gating=_add_checksum(_export(d), "evil.pkl")),
         ("lists 'evil.pkl', not a kind of file an export holds",)),
    Case("export/template-attribute-access",  # issue 42's first probe: a stranger's export, re-signed
         lambda d: _generate(d, gating=_resign(_edit_config(_export(d), prompt_template=ATTRIBUTE_PROBE))),
         ("config.json prompt_template has the field '{persona.__class__.__mro__[1].__subclasses__}': a "
          "template may use only plain fields {name} and {exemplar[FIELD]}",)),
    Case("export/config-wrong-type", lambda d: _generate(d, gating=_resign(_edit_config(_export(d),
                                                                                        embed_dim="384"))),
         ("config.json key 'embed_dim' must be an integer between 1 and 65,536, found '384' (a string)",)),
    Case("export/not-an-export", lambda d: _generate(d, gating=_write(d / "dir" / "x.txt", "x").parent),
         ("is missing config.json: not a MoP gate export",)),
    Case("export/checkpoint-missing", lambda d: (["export", str(d / "none.ckpt"), str(d / "out")], []),
         ("checkpoint", "none.ckpt' does not exist",)),
    Case("export/checkpoint-runs-pickled-code",
         lambda d: (["export", str(_evil_checkpoint(d)), str(d / "out")], []),
         ("holds objects that safe (weights_only) loading refuses (os.makedirs)", "--trust-checkpoint"),
         check=_no_marker),
    Case("export/checkpoint-not-a-checkpoint",
         lambda d: (["export", str(_write(d / "last.ckpt", b"not a checkpoint at all")), str(d / "out")], []),
         ("cannot read checkpoint", "last.ckpt': not a PyTorch checkpoint")),
    Case("export/output-is-a-foreign-directory",
         lambda d: (["export", str(_evil_checkpoint(d)),
                     str(_write(d / "mine" / "notes.txt", "keep me").parent)],
                    [d / "mine" / "notes.txt"]),
         ("refusing to replace", "mine': it exists and is not a MoP gate export"),
         check=lambda res, d: (_no_marker(res, d), _unchanged_foreign_dir(res, d))),
    # -- models
    Case("model/nonexistent-path", lambda d: _generate(d, model=str(d / "no-model")),
         ("model path", "no-model' does not exist")),
    Case("model/directory-not-a-model",
         lambda d: _generate(d, model=str(_write(d / "notes" / "a.txt", "").parent)),
         ("notes' is a directory without config.json: not a model folder",)),
    Case("model/train-lm-nonexistent", lambda d: _train(d, "--model.lm", str(d / "no-model")),
         ("model.lm path", "no-model' does not exist"), runner="train"),
    Case("model/embedder-not-a-model", lambda d: _generate(d, None, None, "--embedder", str(d)),
         ("embedder path", "is a directory without config.json: not a model folder")),
    Case("model/embedder-name-as-lm", lambda d: _generate(d, model="minilm-l6"),
         ("model 'minilm-l6' is a bundled sentence embedder, not a causal LM (bundled LMs: smollm2-135m",)),
    Case("model/lm-name-as-embedder", lambda d: _generate(d, None, None, "--embedder", "smollm2-135m"),
         ("embedder 'smollm2-135m' is a bundled causal LM, not a sentence embedder",)),
    Case("model/gate-export-as-lm", lambda d: _generate(d, model=str(_export(d, "other-gate"))),
         ("other-gate': it is a MoP gate export, not a model (pass it as --gating)",)),
    Case("model/hub-id-offline", lambda d: _generate(d, model="nobody-here/no-such-model"),
         ("could not load causal LM 'nobody-here/no-such-model'", "(HF_HUB_OFFLINE=1, mop's default, keeps "
                                                                   "hub ids from downloading")),
    # -- generation
    Case("generate/empty-contexts-file", lambda d: _generate(d, contexts=""), ("contexts.csv' is empty",)),
    Case("generate/contexts-missing-fields", lambda d: _generate(d, contexts="title,label\nA,fresh\n"),
         ("contexts file", "lacks field(s) 'movie' used by the export's templates",
          "found columns: title, label")),
    Case("generate/output-in-missing-directory",
         lambda d: _generate(d, output=d / "missing" / "samples.jsonl"),
         ("output directory", "missing' does not exist (create it first)"), check=_no_dir),
    Case("generate/output-from-other-settings", lambda d: _generate(d, None, None, "--seed", "7"),
         ("holds rows generated with other settings: seed 0 (now 7)",)),
    Case("generate/prompt-template-format-spec",  # issue 42's second probe: a conversion, a nested spec
         lambda d: _generate(d, None, None, "--prompt-template", "{context!r:>{persona}}"),
         ("prompt_template has the field '{context!r:>{persona}}': a template may use only plain fields",)),
    Case("generate/prompt-template-attribute",
         lambda d: _generate(d, None, None, "--prompt-template", "Persona: {persona.__class__}"),
         ("prompt_template has the field '{persona.__class__}'",)),
    Case("generate/zero-samples", lambda d: _generate(d, None, None, "--num-samples", "0"),
         ("--num-samples: must be positive, got 0",)),
    Case("generate/not-an-integer", lambda d: _generate(d, None, None, "--batch-size", "many"),
         ("generate.py: error: --batch-size: expected a positive integer, got 'many'",
          "(see generate.py --help)"),
         runner="real"),
]


def _rm(gate: Path, name: str) -> Path:
    (gate / name).unlink()
    return gate


def _flip(gate: Path, name: str) -> Path:
    data = bytearray((gate / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (gate / name).write_bytes(bytes(data))
    return gate


def _add_checksum(gate: Path, name: str) -> Path:
    """List one more file in the export's manifest."""
    manifest = json.loads((gate / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": 0, "sha256": "0" * 64}
    (gate / "manifest.json").write_text(json.dumps(manifest))
    return gate


ATTRIBUTE_PROBE = "Persona: {persona.__class__.__mro__[1].__subclasses__} {exemplar.__class__.__init__}"


def _resign(gate: Path) -> Path:
    """Recompute the manifest's sizes and digests, as anyone handing out a doctored export would."""
    import hashlib

    manifest = json.loads((gate / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (gate / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (gate / "manifest.json").write_text(json.dumps(manifest))
    return gate


# ---------------------------------------------------------------------------------------------------- running
# Runs commands one after the other in one interpreter, each exactly as its entry point runs it
# (`python -m mop`, `python generate.py`, `python train.py`: the module or script executed as __main__ with
# the case's argv, in the case's folder), with file descriptor 2 redirected so every byte written to stderr is
# captured. Warning filters are reset before each command so that warnings show as in a fresh process.
HARNESS = r"""
import json, os, runpy, sys, tempfile, time, warnings
jobs, out = json.loads(sys.argv[1]), sys.argv[2]
filters, results = warnings.filters[:], {}
for cid, cwd, argv in jobs:
    os.chdir(cwd)
    warnings.filters[:] = filters
    warnings.simplefilter("default", append=True)
    sys.stdout.flush(); sys.stderr.flush()
    saved, (err, errpath) = os.dup(2), tempfile.mkstemp()
    os.dup2(err, 2)
    t0 = time.perf_counter()
    try:
        if argv[0].endswith(".py"):
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
        else:
            sys.argv = ["mop", *argv]
            runpy.run_module("mop", run_name="__main__", alter_sys=True)
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        rc = 1
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.lseek(err, 0, 0)
    text = os.read(err, 1 << 20).decode("utf-8", "replace")
    os.close(err)
    os.unlink(errpath)
    results[cid] = {"returncode": rc, "stderr": text, "seconds": time.perf_counter() - t0}
with open(out, "w") as fh:
    json.dump(results, fh)
"""


def _script(argv: list[str]) -> list[str]:
    return [str(REPO / argv[0]), *argv[1:]] if argv and argv[0].endswith(".py") else argv


def _run_in_one_interpreter(group: str, jobs: list[tuple[str, Path, list[str]]], work: Path,
                            env: dict) -> dict:
    out = work / f"results-{group}.json"
    full_env = {**os.environ, **env}
    full_env.pop("MOP_DEBUG", None)
    payload = json.dumps([(cid, str(cwd), _script(argv)) for cid, cwd, argv in jobs])
    proc = subprocess.run([sys.executable, "-c", HARNESS, payload, str(out)], cwd=work, env=full_env,
                          capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stderr[-3000:]
    return {cid: SimpleNamespace(stdout="", **r) for cid, r in json.loads(out.read_text()).items()}


# Runs ``python -m mop ARGS`` and writes the process's own peak RSS (VmHWM, which starts afresh at exec) on
# exit. os.wait4's ru_maxrss is no good here: Linux keeps it across fork + exec, so it reports the parent's
# RSS (the pytest process, 2 GB after the model tests) instead of the child's.
_HWM_WRAPPER = """import atexit, os, runpy, sys
def _hwm():
    with open('/proc/self/status') as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
    with open(os.environ['MOP_TEST_HWM_FILE'], 'w') as out:
        out.write(str(kb))
atexit.register(_hwm)
sys.argv = ['mop', *sys.argv[1:]]
runpy.run_module('mop', run_name='__main__', alter_sys=True)
"""


def _run_with_rusage(argv: list[str], work: Path, env: dict) -> SimpleNamespace:
    """Like run_cli, plus the child's own peak RSS (VmHWM from /proc, Linux) and wall time."""
    hwm = work / ".hwm"
    full_env = {**os.environ, **env, "MOP_TEST_HWM_FILE": str(hwm)}
    full_env.pop("MOP_DEBUG", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _HWM_WRAPPER, *argv], cwd=work, env=full_env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    maxrss_mb = int(hwm.read_text()) / 1024 if hwm.exists() else 0.0
    return SimpleNamespace(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                           seconds=seconds, maxrss_mb=maxrss_mb)


def _run_real(argv: list[str], work: Path, env: dict) -> SimpleNamespace:
    t0 = time.perf_counter()
    proc = run_cli(*argv, cwd=work, env=env, timeout=600)
    return SimpleNamespace(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                           seconds=time.perf_counter() - t0)


@dataclass
class Prepared:
    case: Case
    dir: Path
    argv: list[str]
    protect: dict[Path, bytes | None] = field(default_factory=dict)


def _table(prepared: dict[str, Prepared], out: dict[str, SimpleNamespace]) -> str:
    rows = ["| case | command | message | exit code |", "| --- | --- | --- | --- |"]
    for cid, p in prepared.items():
        argv = p.argv
        if argv[0] == "generate.py":
            cmd, argv = "python generate.py", argv[1:]
        elif p.case.runner in ("train", "train.py"):
            cmd, argv = "python train.py", argv[1:]
        else:
            cmd = "mop"
        words = " ".join(Path(a).name if "/" in a else a for a in argv[:4])
        msg = (out[cid].stderr.strip().replace(str(p.dir) + "/", "").replace(str(p.dir), ".")
               .replace("|", "\\|"))
        rows.append(f"| {cid} | `{cmd} {words} ...` | `{msg}` | {out[cid].returncode} |"
                    + (f" {out[cid].seconds:.1f} s" if os.environ.get("MOP_BAD_INPUTS_SECONDS") else ""))
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """Build every selected case's inputs, snapshot its outputs, and run the commands.

    ``train`` cases share one interpreter (Lightning's import dominates), the other cases another, and the
    ``real`` ones (one per entry point, plus the memory-measured one) run as plain subprocesses, all at once.
    ``MOP_BAD_INPUTS_SUBPROCESS=1`` runs every case as its own subprocess instead (slower, same assertions).
    """
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "callspec", None) and isinstance(item.callspec.params.get("case"), Case)}
    root = tmp_path_factory.mktemp("bad-inputs")
    env = {"MOP_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    all_real = os.environ.get("MOP_BAD_INPUTS_SUBPROCESS") == "1"
    prepared = {}
    for case in CASES:
        if case.id not in selected:
            continue
        d = root / case.id.replace("/", "__")
        d.mkdir()
        argv, protect = case.build(d)
        if case.runner in ("train", "train.py"):
            argv = ["train.py", *argv]
        prepared[case.id] = Prepared(case, d, argv,
                                     {p: p.read_bytes() if p.exists() else None for p in protect})
    out: dict[str, SimpleNamespace] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = []
        for group in ("train", "cli"):
            jobs = [(cid, p.dir, p.argv) for cid, p in prepared.items()
                    if p.case.runner == group and not all_real]
            if jobs:
                futures.append(pool.submit(_run_in_one_interpreter, group, jobs, root, env))
        for cid, p in prepared.items():
            if p.case.runner == "rusage":
                futures.append(pool.submit(lambda c=cid, q=p: {c: _run_with_rusage(q.argv, q.dir, env)}))
            elif p.case.runner in ("real", "train.py") or all_real:
                futures.append(pool.submit(lambda c=cid, q=p: {c: _run_real(q.argv, q.dir, env)}))
        for fut in futures:
            out.update(fut.result())
    if os.environ.get("MOP_BAD_INPUTS_TABLE"):
        Path(os.environ["MOP_BAD_INPUTS_TABLE"]).write_text(_table(prepared, out))
    return {cid: (prepared[cid], res) for cid, res in out.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_bad_input(case, results):
    prepared, res = results[case.id]
    line = assert_one_line_error(res, *case.expect)
    assert res.returncode == 2, (res.returncode, line)
    assert line.startswith(("mop: error: ", "generate.py: error: ")), line
    for path, before in prepared.protect.items():
        after = path.read_bytes() if path.exists() else None
        assert after == before, f"{path} was changed by a failed command"
    if case.check:
        case.check(res, prepared.dir)


def test_matrix_covers_the_issue():
    """The issue's list, as case-id prefixes: a case removed from the matrix fails here."""
    ids = {c.id for c in CASES}
    required = ["data/empty-file", "data/header-only", "data/missing-column", "data/misspelt-column",
                "data/all-responses-empty", "data/non-utf8-csv", "data/100MB-single-line",
                "data/duplicate-ids", "data/png-file", "data/xlsx-renamed-csv", "data/unknown-extension",
                "data/fewer-records-than-personas",
                "config/unknown-key-cli", "config/K-above-training-records", "config/M-above-K-x-pool",
                "config/zero-batch-size", "config/zero-num-personas", "config/negative-num-candidates",
                "config/zero-hidden-dim", "config/split-not-summing-to-1", "export/missing-file",
                "export/checksum-mismatch", "export/other-embedder-dimension", "export/newer-format-version",
                "export/path-escapes-directory", "model/nonexistent-path", "model/directory-not-a-model",
                "generate/empty-contexts-file", "generate/contexts-missing-fields",
                "generate/output-in-missing-directory"]
    assert not [r for r in required if r not in ids]
    assert len(CASES) >= 30 and len(ids) == len(CASES)


# ------------------------------------------------------------------------------------------ dropped responses
def test_empty_responses_are_dropped_and_counted(tmp_path):
    """Rows with an empty or NaN response are dropped (not an error while some remain), and the count is
    shown."""
    from mop.data import DatasetSpec, load_population

    csv = _write(tmp_path / "pop.csv", _csv(20, extra=",Film X,fresh\n   ,Film Y,rotten\n"))
    jsonl = _write(tmp_path / "pop.jsonl", "".join(json.dumps({"text": t, "movie": "A"}) + "\n"
                                                   for t in ["one two", None, "three", ""]))
    pop = load_population(DatasetSpec(source=str(csv), response_column="text", context_columns=["movie"],
                                      label_column="label", min_words=3))
    assert sum(len(r) for r in pop.splits.values()) == 20 and pop.dropped == {"empty": 2, "words": 0}
    pop = load_population(DatasetSpec(source=str(jsonl), response_column="text", context_columns=["movie"],
                                      min_words=2, split=[0.5, 0.25, 0.25]))
    assert pop.dropped == {"empty": 2, "words": 1}
    proc = run_cli("data", "show", "-c", str(_dataset_yaml(tmp_path, csv)))
    assert proc.returncode == 0, proc.stderr
    assert "dropped on load: 2 row(s) with an empty response, 0 outside min_words=1" in proc.stdout


@pytest.mark.parametrize("seed", range(6))
def test_line_limit_names_the_first_long_line(tmp_path, monkeypatch, seed):
    """The streaming line-length check, with a small limit and blocks: lines straddling blocks are measured
    whole, the first line over the limit is named, and a file whose lines all fit passes."""
    import random

    from mop import data
    from mop.errors import MopError

    limit = 3000
    monkeypatch.setattr(data, "MAX_LINE_BYTES", limit)
    rng = random.Random(seed)
    sizes = [0, 5, 900, 2999, 3000] + ([3001, 4500, 9000] if seed % 2 else [])  # even seeds: every line fits
    lengths = [rng.choice(sizes) for _ in range(40)]
    path = _write(tmp_path / "x.csv", b"".join(b"a" * n + b"\n" for n in lengths))
    first_long = next((i + 1 for i, n in enumerate(lengths) if n > data.MAX_LINE_BYTES), None)
    assert (first_long is None) == (seed % 2 == 0)
    for block in (1000, 2048, 1 << 20):  # lines straddle blocks; blocks are capped at the limit
        if first_long is None:
            data._check_text_file(path, None, ".csv", block=block)
        else:
            with pytest.raises(MopError, match=f"line {first_long} is longer than"):
                data._check_text_file(path, None, ".csv", block=block)


# ------------------------------------------------------------------------------------------------ security
EXPORT_SUFFIXES = {".json", ".jsonl", ".safetensors", ".npy"}


def test_exports_hold_no_pickle_and_loading_ignores_other_files(tmp_path):
    """An export is JSON, JSONL, safetensors and a plain .npy (no serialised FAISS index); anything else in
    the folder is never read, and a manifest that lists another kind of file is refused."""
    import numpy as np

    from mop.errors import MopError
    from mop.export import EXPORT_SUFFIXES as declared
    from mop.export import load_export

    gate = _export(tmp_path, dim=16)
    files = sorted(p.name for p in gate.iterdir())
    assert files == ["config.json", "exemplar_embeddings.npy", "exemplars.jsonl", "gate.safetensors",
                     "manifest.json", "personas.jsonl"]
    assert {Path(f).suffix for f in files} <= EXPORT_SUFFIXES == set(declared)
    for name in files:  # no file is a pickle (protocol 2+ starts with b"\x80"), and the array needs none
        assert not (gate / name).read_bytes().startswith(b"\x80"), name
    assert np.load(gate / "exemplar_embeddings.npy", allow_pickle=False).dtype == np.float32
    # a pickle dropped into the folder (not in the manifest) is ignored: loading never unpickles it
    (gate / "extra.pkl").write_bytes(pickle.dumps(_Evil(tmp_path / "PWNED")))
    (gate / "gate.ckpt").write_bytes(pickle.dumps(_Evil(tmp_path / "PWNED")))
    assert load_export(gate).num_personas == 3
    assert not (tmp_path / "PWNED").exists()
    # ... and one listed in the manifest is refused before anything is read
    _add_checksum(gate, "extra.pkl")
    with pytest.raises(MopError, match="lists 'extra.pkl', not a kind of file an export holds"):
        load_export(gate)
    assert not (tmp_path / "PWNED").exists()


def _sources() -> list[Path]:
    return sorted((REPO / "mop").glob("*.py")) + [REPO / "train.py", REPO / "generate.py"]


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal",
              "jsonpickle"}


def test_sources_never_unpickle_user_files():
    """No module of mop/ (nor the entry points) imports an unpickler for use, calls torch.load without
    weights_only, or np.load with allow_pickle=True. The single exception is
    ``mop export --trust-checkpoint``, an explicit opt-in whose default is safe loading."""
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in UNPICKLERS - {"pickle"}:
                        problems.append(f"{rel}:{node.lineno} imports {alias.name}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
                problems.append(f"{rel}:{node.lineno} imports from {node.module}")
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "pickle"):
                if node.attr != "UnpicklingError":  # catching torch's refusal is the only use allowed
                    problems.append(f"{rel}:{node.lineno} uses pickle.{node.attr}")
            elif isinstance(node, ast.Call):
                name = _call_name(node)
                kw = {k.arg: k.value for k in node.keywords}
                if name == "torch.load":
                    wo = kw.get("weights_only")
                    if isinstance(wo, ast.Constant) and wo.value is True:
                        continue
                    if (rel.as_posix(), ast.unparse(wo) if wo is not None else None) == ("mop/export.py",
                                                                                        "not trust"):
                        continue  # --trust-checkpoint, checked below
                    problems.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
                elif name.endswith(("np.load", "numpy.load")):
                    ap = kw.get("allow_pickle")
                    if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                        problems.append(f"{rel}:{node.lineno} np.load with allow_pickle={ast.unparse(ap)}")
                elif name.endswith(("read_pickle", "pickle.load", "pickle.loads", "Unpickler")):
                    problems.append(f"{rel}:{node.lineno} calls {name}")
                elif name.endswith("from_pretrained"):
                    trc = kw.get("trust_remote_code")
                    if isinstance(trc, ast.Constant) and trc.value is True:
                        problems.append(f"{rel}:{node.lineno} from_pretrained(trust_remote_code=True)")
    assert not problems, "\n".join(problems)
    # the one opt-in: safe by default, unsafe only when the user passes --trust-checkpoint
    import inspect

    from mop import export
    from mop.cli import parse_command

    assert inspect.signature(export.export_checkpoint).parameters["trust_checkpoint"].default is False
    assert inspect.signature(export._load_checkpoint).parameters["trust"].default is inspect.Parameter.empty
    args = parse_command(export.export_command, ["a.ckpt", "out"], "mop export", positional=True)
    assert args["trust_checkpoint"] is False and args["checkpoint"] == "a.ckpt"


def test_scanner_catches_unsafe_loads(tmp_path, monkeypatch):
    """The scan above is not vacuous: a module with each unsafe pattern is reported."""
    bad = tmp_path / "mop"
    bad.mkdir()
    (bad / "x.py").write_text("import torch, numpy as np, pickle\n"
                              "a = torch.load('f')\n"
                              "b = torch.load('f', weights_only=False)\n"
                              "c = np.load('f', allow_pickle=True)\n"
                              "d = pickle.load(open('f', 'rb'))\n"
                              "from joblib import load\n"
                              "e = M.from_pretrained('p', trust_remote_code=True)\n")
    me = sys.modules[__name__]  # this module: its REPO and _sources are what the scan reads

    monkeypatch.setattr(me, "REPO", tmp_path)
    monkeypatch.setattr(me, "_sources", lambda: [bad / "x.py"])
    with pytest.raises(AssertionError) as info:
        me.test_sources_never_unpickle_user_files()
    report = str(info.value)
    for fragment in ("x.py:2 torch.load", "x.py:3 torch.load", "x.py:4 np.load", "x.py:5 uses pickle.load",
                     "x.py:6 imports from joblib", "x.py:7 from_pretrained"):
        assert fragment in report, (fragment, report)


class _Recorder:
    """Stands in for a from_pretrained loader: records the keyword arguments, returns a minimal model."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(pad_token=None, eos_token="</s>", eval=lambda: None,
                               requires_grad_=lambda _: None, to=lambda _: None)


def test_remote_code_is_never_trusted_unless_asked(tmp_path, monkeypatch):
    """load_lm (every LM MoP loads: training, personas, generation) and load_embedder pass
    trust_remote_code=False unless the caller asks for it. The loaders are stand-ins (no model is loaded)."""
    from mop import assets

    folder = _write(tmp_path / "lm" / "config.json", "{}").parent
    tok, lm, st = _Recorder(), _Recorder(), _Recorder()
    monkeypatch.setitem(sys.modules, "transformers", SimpleNamespace(
        AutoTokenizer=SimpleNamespace(from_pretrained=tok),
        AutoModelForCausalLM=SimpleNamespace(from_pretrained=lm)))
    monkeypatch.setitem(sys.modules, "sentence_transformers", SimpleNamespace(SentenceTransformer=st))
    assets.load_lm(str(folder))
    assets.load_embedder(str(folder))
    assert [c["trust_remote_code"] for c in tok.calls + lm.calls + st.calls] == [False, False, False]
    assets.load_lm(str(folder), trust_remote_code=True)  # only when the caller asks
    assert tok.calls[-1]["trust_remote_code"] is True and lm.calls[-1]["trust_remote_code"] is True
