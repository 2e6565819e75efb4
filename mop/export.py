"""Plug-and-play gate export (docs/method.md section 6): a small, LM-free directory, written atomically.

    manifest.json       every other file of the export with its size and sha256 (config.json included)
    config.json         format version, embedder name/dim, d, M, templates, sizes, the exemplar index's kind
                        (and IVF nlist / nprobe / seed), LM (informational), training metrics
    gate.safetensors    W_x, W_g, W_e, log_tau (+ the frozen persona embeddings)
    personas.jsonl      id, text, cluster size, source ("none": the persona-free component, empty text)
    exemplars.jsonl     id, context fields, label, response
    exemplar_embeddings.npy     h(e_j), from which the exemplar index is rebuilt at load
    ivf_centroids.npy   the IVF index's coarse centroids (IVF exports only)

Like a PEFT adapter, an export is written with :func:`save_pretrained` and read back with
:meth:`GateExport.from_pretrained`; the base LM is chosen at generation time. An export may come from anyone,
so the loader trusts nothing it reads: every file's size and sha256 against the manifest, config.json against
its schema (keys, types, ranges; templates of plain fields only), every file's own structure, and the shapes
that tie the files together, each refused with one line. Only safetensors / JSON / .npy files are read (never
pickle, no serialised FAISS index: the index is rebuilt from the embeddings). Exports of format 1 (before the
manifest: checksums in config.json, an ``exemplars.faiss`` beside the embeddings) still load: their
exemplars.faiss is never opened and their index is rebuilt flat (exact). ``mop export CKPT OUT_DIR`` exports a
Lightning checkpoint written by ``train.py``; ``mop export verify DIR`` checks an export without an LM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mop.errors import MopError, did_you_mean
from mop.personas import PersonaList

FORMAT_VERSION = 2
LEGACY_FORMAT = 1  # checksums in config.json (which they do not cover), an exemplars.faiss beside the .npy
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
GATE_FILE = "gate.safetensors"
PERSONAS_FILE = "personas.jsonl"
EXEMPLARS_FILE = "exemplars.jsonl"
EMBEDDINGS_FILE = "exemplar_embeddings.npy"  # mop.index.EMBEDDINGS_FILE
CENTROIDS_FILE = "ivf_centroids.npy"  # mop.index.CENTROIDS_FILE
LEGACY_INDEX_FILE = "exemplars.faiss"  # format 1 only; never read
DATA_FILES = (GATE_FILE, PERSONAS_FILE, EXEMPLARS_FILE, EMBEDDINGS_FILE)  # in every export
REQUIRED_FILES = (CONFIG_FILE, *DATA_FILES)  # listed in every manifest (+ ivf_centroids.npy for IVF)
EXPORT_FILES = (*REQUIRED_FILES, CENTROIDS_FILE)  # every file a manifest may list
REQUIRED_CONFIG = ("embedder", "embed_dim", "prompt_template", "context_template")
GATE_TENSORS = ("W_x.weight", "W_g.weight", "W_e.weight", "log_tau", "persona_emb")
# The only kinds of file an export holds; none is a pickle (a .npy is read with its header checked first and
# never with allow_pickle).
EXPORT_SUFFIXES = (".json", ".jsonl", ".safetensors", ".npy")
MAX_JSON_BYTES = 1 << 20  # config.json and manifest.json (templates are at most 64k characters each)
SHA256_HEX = frozenset("0123456789abcdef")


@dataclass
class GateConfig:
    """``config.json`` of a gate export: what it takes to use the gate without its training config.

    Built once, by :meth:`from_training`, for both export paths (the end of ``mop train`` and ``mop export
    CKPT``). :func:`save_pretrained` adds ``format_version``, the sizes and the sha256 of every file.
    """

    embedder: str
    embed_dim: int
    prompt_template: str
    context_template: str
    hidden_dim: int = 128
    num_candidates: int = 4
    context_columns: list[str] = field(default_factory=list)
    use_chat_template: bool = False
    trained_with_lm: str | None = None  # informational: any causal LM can drive the gate
    mask_other_label: bool = False  # trained on label-consistent exemplars: generation samples them too
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None  # file, epoch, global_step, when exported from a checkpoint
    # a survey (mop.survey): {label: [option, ...]} and the ordinal labels; generation samples options
    options: dict[str, list[str]] | None = None
    ordinal: list[str] | None = None

    @classmethod
    def from_training(cls, hparams: Mapping[str, Any], population, embedder: str, embed_dim: int, *,
                      metrics: Mapping[str, float] | None = None,
                      checkpoint: dict[str, Any] | None = None, mask_other_label: bool = False) -> GateConfig:
        """From the model's hyper-parameters (``MixtureOfPersonas.hparams``) and the training population."""
        from mop.prompts import DEFAULT_TEMPLATE

        options = getattr(population.spec, "options", None) or None
        ordinal = getattr(population.spec, "ordinal", None)
        if options is not None:
            from mop.survey import ordinal_keys

            ordinal = sorted(ordinal_keys(options, ordinal))
        return cls(options=options, ordinal=ordinal if options is not None else None,
                   embedder=embedder, embed_dim=int(embed_dim),
                   prompt_template=hparams.get("prompt_template", DEFAULT_TEMPLATE),
                   context_template=population.spec.context_template,
                   hidden_dim=int(hparams.get("hidden_dim", 128)),
                   num_candidates=int(hparams.get("num_candidates", 4)),
                   context_columns=list(population.spec.context_columns),
                   use_chat_template=bool(hparams.get("use_chat_template", False)),
                   trained_with_lm=hparams.get("lm"), metrics=dict(metrics or {}), checkpoint=checkpoint,
                   mask_other_label=bool(mask_other_label))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GateConfig:
        """From a config.json (its bookkeeping keys -- format version, sizes, checksums -- are left out)."""
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("checkpoint", "options", "ordinal"):  # a free-text export's config.json is unchanged
            if out[key] is None:
                del out[key]
        return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _is_export(path: Path) -> bool:
    try:
        return "format_version" in json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def check_replaceable(out: Path) -> None:
    """An export may be written to ``out`` only if it is absent, empty or itself a gate export."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_export(out))):
        raise MopError(f"refusing to replace '{out}': it exists and is not a MoP gate export")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not Linux / glibc < 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):  # e.g. a file system without it
        return False
    raise OSError(err, f"cannot swap '{a}' and '{b}': {os.strerror(err)}")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished export ``tmp`` to ``out``. A kill at any instant leaves ``out`` a complete export:
    the old or the new one (an atomic exchange); where the file system cannot exchange, the old export is
    renamed to ``.<name>.<pid>.old`` for the instant between two renames, and the next save restores it."""
    if out.exists() and _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the previous export
        return
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover_interrupted(out: Path) -> None:
    """Clean up after an export killed mid-write: restore a previous export left at ``.<name>.<pid>.old``
    (if ``out`` is gone) and delete the temporary folders of processes that no longer run."""
    if not out.parent.is_dir():
        return
    for leftover in sorted(out.parent.glob(f".{out.name}.*.*")):
        pid, _, kind = leftover.name[len(out.name) + 2:].partition(".")
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not out.exists() and _is_export(leftover):
            os.replace(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def save_pretrained(out_dir: str | Path, *, gate, personas, persona_emb, pool, index,
                    config: GateConfig) -> Path:
    """Write an export into ``out_dir`` atomically: a half-written export never replaces a good one.

    ``personas``: the :class:`mop.personas.Persona` of each gate persona, in order; ``pool``: the exemplar
    records; ``index``: the :class:`mop.index.ExemplarIndex` over them (its embeddings are written, and for
    IVF its centroids: no serialised FAISS index). An existing ``out_dir`` is replaced only when it is empty
    or itself a gate export (never another folder).
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    if not isinstance(config, GateConfig):
        raise MopError(f"export config must be a GateConfig, got {type(config).__name__}")
    k, n = len(personas), len(pool)
    if k != gate.num_personas:
        raise MopError(f"export: {k} personas but the gate has {gate.num_personas}")
    if index.ntotal != n:
        raise MopError(f"export: the exemplar index holds {index.ntotal} vectors but the pool has {n} "
                       "exemplars")
    params = index.params()
    cfg = {"format_version": FORMAT_VERSION, **config.to_dict(), "num_personas": k, "num_exemplars": n,
           "index": params}
    check_export_config(json.loads(json.dumps(cfg)), "export")  # never write what the loader would refuse
    out = Path(out_dir)
    _recover_interrupted(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = {k: v.detach().cpu().float().contiguous() for k, v in gate.state_dict().items()}
        tensors["persona_emb"] = torch.as_tensor(persona_emb).detach().cpu().float().contiguous()
        save_file(tensors, str(tmp / GATE_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        _write_jsonl(tmp / PERSONAS_FILE, ({"id": p.id, "text": p.text, "cluster_size": int(p.cluster_size),
                                            "source": p.source} for p in personas))
        _write_jsonl(tmp / EXEMPLARS_FILE, ({"id": e.id, "context": e.context, "label": e.label,
                                             "group": e.group, "response": e.response} for e in pool))
        np.save(tmp / EMBEDDINGS_FILE, np.ascontiguousarray(index.embeddings, dtype="<f4"),
                allow_pickle=False)
        if params["kind"] == "ivf":
            np.save(tmp / CENTROIDS_FILE, np.ascontiguousarray(index.centroids(), dtype="<f4"),
                    allow_pickle=False)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
        manifest = {"files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                              for p in sorted(tmp.iterdir())}}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_from_module(module, trainer, out_dir: str | Path | None = None) -> Path:
    """Export a trained :class:`mop.module.MixtureOfPersonas` (its datamodule's artifacts included)."""
    art = trainer.datamodule.artifacts
    hp = module.hparams
    if out_dir is None:
        out_dir = hp.export_dir or Path(trainer.log_dir or trainer.default_root_dir) / "gate"
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    config = GateConfig.from_training(hp, art.population, art.embedder, art.embed_dim, metrics=metrics,
                                      mask_other_label=getattr(trainer.datamodule, "mask_other_label", False))
    return save_pretrained(out_dir, gate=module.gate, personas=art.personas, persona_emb=art.persona_emb,
                           pool=art.pool, index=art.index, config=config)


# ---------------------------------------------------------------------------------------------------- loading
def _show(value: Any) -> str:
    """A value found in an export, for a one-line message: its repr cut to 60 characters, and its type."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    try:
        text = repr(value)
    except RecursionError:
        text = "a deeply nested value"
    return f"{text[:57] + '...' if len(text) > 60 else text} ({kind})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@contextlib.contextmanager
def _reading(where: str, name: str) -> Iterator[None]:
    """Whatever a parser of untrusted bytes raises becomes one line naming the file (never a traceback)."""
    try:
        yield
    except MopError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError,
            MemoryError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise MopError(f"{where}: {name} is malformed ({reason})") from err


def _member(directory: Path, name: Any, listed_in: str, allowed: tuple[str, ...] = EXPORT_FILES) -> Path:
    """The file ``name`` listed in ``listed_in``, refused unless it is a plain file name inside
    ``directory`` and one of the files of an export."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\0" in name or Path(name).name != name:
        raise MopError(f"gate export '{directory}': {listed_in} lists {name!r}, which is not a file inside "
                       "the export directory")
    if not name.endswith(EXPORT_SUFFIXES + (".faiss",) * (LEGACY_INDEX_FILE in allowed)):
        raise MopError(f"gate export '{directory}': {listed_in} lists {name!r}, not a kind of file an export "
                       f"holds ({', '.join(EXPORT_SUFFIXES)})")
    if name not in allowed:
        raise MopError(f"gate export '{directory}': {listed_in} lists {name!r}, which is not a file of a "
                       f"gate export (expected {', '.join(allowed)})")
    path = directory / name
    try:
        inside = path.resolve().parent == directory.resolve()
    except (OSError, RuntimeError) as err:  # e.g. a symbolic link loop
        raise MopError(f"gate export '{directory}': cannot resolve {name} ({err})") from err
    if not inside:  # e.g. a symbolic link that leads out of the export
        raise MopError(f"gate export '{directory}': {name} points outside the export directory")
    return path


def _read_json(path: Path, where: str, name: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A small JSON file (config.json, manifest.json), at most ``limit`` bytes; one line for any defect."""
    if not path.is_file():
        raise MopError(f"{where} is missing {name}")
    _member(path.parent, name, "the format", allowed=(CONFIG_FILE, MANIFEST_FILE))  # no link out of it
    size = path.stat().st_size
    if size > limit:
        raise MopError(f"{where}: {name} has {size:,} bytes, more than the {limit:,} it may have")
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise MopError(f"{where}: {name} is not valid UTF-8 (byte {err.start})") from err
    except ValueError as err:
        raise MopError(f"{where}: {name} is not valid JSON ({' '.join(str(err).split())[:160]})") from err
    except RecursionError as err:
        raise MopError(f"{where}: {name} is nested too deeply to be a gate export's") from err


def _read_manifest(d: Path, where: str) -> dict[str, dict[str, Any]]:
    """manifest.json: ``{"files": {name: {"bytes": int, "sha256": hex}}}`` listing config.json and every data
    file (no other, no path outside the export)."""
    manifest = _read_json(d / MANIFEST_FILE, where, MANIFEST_FILE)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(manifest) != {"files"}:
        raise MopError(f"{where}: {MANIFEST_FILE} must hold one key, \"files\": an object "
                       "{file name: {\"bytes\": size, \"sha256\": digest}}")
    for name, entry in files.items():
        _member(d, name, MANIFEST_FILE)
        if not isinstance(entry, dict) or set(entry) != {"bytes", "sha256"}:
            raise MopError(f"{where}: {MANIFEST_FILE} entry {name!r} must be an object with exactly "
                           f"\"bytes\" and \"sha256\", found {_show(entry)}")
        if not _is_int(entry["bytes"]) or not 0 <= entry["bytes"] < 1 << 50:
            raise MopError(f"{where}: {MANIFEST_FILE} gives {name} a size of {_show(entry['bytes'])}, "
                           "expected a byte count")
        _check_digest(entry["sha256"], name, MANIFEST_FILE, where)
    missing = [n for n in REQUIRED_FILES if n not in files]
    if missing:
        raise MopError(f"{where}: {MANIFEST_FILE} does not list {', '.join(missing)}")
    return files


def _check_digest(digest: Any, name: str, listed_in: str, where: str) -> None:
    """A listed sha256: 64 lower-case hex digits."""
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= SHA256_HEX:
        raise MopError(f"{where}: {listed_in} gives {name} the sha256 {_show(digest)}, expected 64 "
                       "lower-case hex digits")


def _check_file(d: Path, name: str, entry: dict[str, Any] | str, where: str, hash_it: bool) -> None:
    """A file of the manifest: present, a regular file inside the export, its size (format 2) and, when
    ``hash_it``, its sha256 as listed (``entry``: the manifest entry, or a format-1 checksum)."""
    path = d / name
    if not path.is_file():
        raise MopError(f"{where} is missing {name}")
    listed = entry if isinstance(entry, dict) else {"sha256": entry}
    size = path.stat().st_size
    if "bytes" in listed and size != listed["bytes"]:
        raise MopError(f"{where}: {name} has {size:,} bytes but {MANIFEST_FILE} lists {listed['bytes']:,}: "
                       "the file is truncated, corrupted or was modified after export; re-export the gate")
    if hash_it:
        found = _sha256(path)
        if found != listed["sha256"]:
            source = MANIFEST_FILE if "bytes" in listed else CONFIG_FILE
            raise MopError(f"{where}: {name} does not match its sha256 in {source} (expected "
                           f"{str(listed['sha256'])[:12]}..., found {found[:12]}...): the file is corrupted "
                           "or was modified after export; re-export the gate")


# config.json: key -> (check, what it must be); ranges are generous bounds on what a real export holds.
def _int_range(lo: int, hi: int):
    return (lambda v: _is_int(v) and lo <= v <= hi), f"an integer between {lo:,} and {hi:,}"


def _text(limit: int):
    return (lambda v: isinstance(v, str) and len(v) <= limit), f"a string of at most {limit:,} characters"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain_name(v: Any) -> bool:
    return (isinstance(v, str) and 0 < len(v) <= 256 and v.strip() == v and not v.isdigit()
            and v.isprintable() and not set(v) & set(".[]{}!:"))


def _checkpoint(v: Any) -> bool:
    file = v.get("file") if isinstance(v, dict) else None
    return v is None or (isinstance(v, dict) and set(v) <= {"file", "epoch", "global_step"}
                         and (file is None or (isinstance(file, str) and len(file) <= 4096
                                               and file.isprintable()))
                         and all(v.get(k) is None or (_is_int(v[k]) and v[k] >= 0)
                                 for k in ("epoch", "global_step")))


CONFIG_SCHEMA: dict[str, tuple[Any, str]] = {
    "format_version": _int_range(1, FORMAT_VERSION),
    "embedder": ((lambda v: isinstance(v, str) and 0 < len(v) <= 4096 and v.isprintable()),
                 "a printable, non-empty string (a bundled embedder's name, a path or a hub id)"),
    "embed_dim": _int_range(1, 65_536),
    "prompt_template": _text(65_536),
    "context_template": _text(65_536),
    "hidden_dim": _int_range(1, 65_536),
    "num_candidates": _int_range(1, 4_096),
    "context_columns": ((lambda v: isinstance(v, list) and len(v) <= 1_000 and all(map(_plain_name, v))
                         and len(set(v)) == len(v)),
                        "a list of distinct column names (no '.', '[', ']', '{', '}', '!', ':')"),
    "use_chat_template": ((lambda v: isinstance(v, bool)), "true or false"),
    "trained_with_lm": ((lambda v: v is None or (isinstance(v, str) and len(v) <= 4096 and v.isprintable())),
                        "a printable string or null"),
    "mask_other_label": ((lambda v: isinstance(v, bool)), "true or false"),
    "metrics": ((lambda v: isinstance(v, dict) and len(v) <= 1_000
                 and all(len(k) <= 256 and _number(x) for k, x in v.items())),
                "an object {name: number}"),
    "checkpoint": (_checkpoint, "null or an object with file (string), epoch and global_step (integers)"),
    "num_personas": _int_range(1, 10_000_000),
    "num_exemplars": _int_range(1, 1_000_000_000),
    "index": ((lambda v: isinstance(v, dict)), "an object with kind (flat or ivf), and nlist, nprobe, seed "
                                               "for ivf"),
    "checksums": ((lambda v: isinstance(v, dict)), "an object {file name: sha256}"),
    "options": ((lambda v: isinstance(v, dict) and 0 < len(v) <= 10_000
                 and all(isinstance(k, str) and len(k) <= 256 and isinstance(o, list)
                         and 2 <= len(o) <= 1_000 and len(set(o)) == len(o)
                         and all(isinstance(x, str) and 0 < len(x) <= 4096 for x in o)
                         for k, o in v.items())),
                "an object {label: [at least 2 distinct option strings]} (a survey)"),
    "ordinal": ((lambda v: isinstance(v, list) and all(isinstance(x, str) and len(x) <= 256 for x in v)),
                "a list of labels whose options are ordered"),
}
# what each format requires; every other key of CONFIG_SCHEMA is optional in format 1 (older writers) only
REQUIRED_KEYS = {
    FORMAT_VERSION: ("format_version", "embedder", "embed_dim", "prompt_template", "context_template",
                     "hidden_dim", "num_candidates", "context_columns", "use_chat_template",
                     "trained_with_lm", "mask_other_label", "metrics", "num_personas", "num_exemplars",
                     "index"),
    LEGACY_FORMAT: ("format_version", *REQUIRED_CONFIG, "checksums"),
}
NOT_IN = {FORMAT_VERSION: ("checksums",), LEGACY_FORMAT: ("index",)}  # format 2 lists files in the manifest


def _check_index_params(index: dict[str, Any], num_exemplars: int, where: str) -> None:
    kind = index.get("kind")
    keys = {"flat": {"kind"}, "ivf": {"kind", "nlist", "nprobe", "seed"}}.get(kind)
    if keys is None or set(index) != keys:
        raise MopError(f"{where}: {CONFIG_FILE} key 'index' must be {{\"kind\": \"flat\"}} or "
                       f"{{\"kind\": \"ivf\", \"nlist\", \"nprobe\", \"seed\"}}, found {_show(index)}")
    if kind == "ivf":
        nlist, nprobe, seed = index["nlist"], index["nprobe"], index["seed"]
        if not _is_int(nlist) or not 1 <= nlist <= num_exemplars:
            raise MopError(f"{where}: {CONFIG_FILE} index nlist must be an integer between 1 and "
                           f"num_exemplars ({num_exemplars:,}), found {_show(nlist)}")
        if not _is_int(nprobe) or not 1 <= nprobe <= nlist:
            raise MopError(f"{where}: {CONFIG_FILE} index nprobe must be an integer between 1 and nlist "
                           f"({nlist:,}), found {_show(nprobe)}")
        if seed is not None and not (_is_int(seed) and 0 <= seed < 1 << 63):
            raise MopError(f"{where}: {CONFIG_FILE} index seed must be a non-negative integer or null, found "
                           f"{_show(seed)}")


def check_export_config(config: Any, where: str = "gate export") -> dict[str, Any]:
    """config.json against the schema of its format version: known keys only, each of its type and range,
    the required ones present, and both templates plain fields of this export's own columns."""
    from mop.prompts import check_plain_template, validate_prompt_template

    if not isinstance(config, dict):
        raise MopError(f"{where}: {CONFIG_FILE} must hold a JSON object, found {_show(config)}")
    version = config.get("format_version")
    if _is_int(version) and version > FORMAT_VERSION:
        raise MopError(f"{where} has format_version {version}, newer than this MoP reads ({FORMAT_VERSION}): "
                       "upgrade mop")
    check, what = CONFIG_SCHEMA["format_version"]
    if not check(version):
        raise MopError(f"{where}: {CONFIG_FILE} has no valid format_version (found {version!r}): not a MoP "
                       "gate export")
    unknown = sorted(k for k in config if k not in CONFIG_SCHEMA or k in NOT_IN[version])
    if unknown:
        known = [k for k in CONFIG_SCHEMA if k not in NOT_IN[version]]
        raise MopError(f"{where}: {CONFIG_FILE} (format {version}) has unknown key(s) "
                       f"{', '.join(repr(k[:60]) for k in unknown)}{did_you_mean(unknown, known)}")
    missing = [k for k in REQUIRED_KEYS[version] if k not in config]
    if missing:
        raise MopError(f"{where}: {CONFIG_FILE} lacks {', '.join(missing)}")
    for key, value in config.items():
        check, what = CONFIG_SCHEMA[key]
        if not check(value):
            raise MopError(f"{where}: {CONFIG_FILE} key '{key}' must be {what}, found {_show(value)}")
    if "index" in config:
        _check_index_params(config["index"], config["num_exemplars"], where)
    columns = list(config.get("context_columns") or [])
    try:
        validate_prompt_template(config["prompt_template"], columns)
        for name, _ in check_plain_template(config["context_template"], "context_template"):
            if name not in {*columns, "label"}:
                raise MopError(f"context_template uses the field {{{name}}}, which is neither a context "
                               f"column ({', '.join(columns) or 'none'}) nor label")
    except MopError as err:
        raise MopError(f"{where}: {CONFIG_FILE} {err}") from None
    return config


def read_export_config(directory: str | Path) -> dict[str, Any]:
    """config.json of an export, checked: against the manifest's size and sha256 (format 2) and against the
    schema. The returned dict also has ``checksums`` ({file: sha256} of the data files, from the manifest in
    format 2) and, for format 2, ``manifest`` (the manifest's files). Data files are not hashed here."""
    d = Path(directory).expanduser()
    if not d.exists():
        raise MopError(f"gate export '{directory}' does not exist")
    if not d.is_dir():
        raise MopError(f"gate export '{directory}' is not a directory (expected the folder written by "
                       "train.py or `mop export`)")
    where = f"gate export '{directory}'"
    if not (d / CONFIG_FILE).is_file():
        raise MopError(f"{where} is missing {CONFIG_FILE}: not a MoP gate export")
    try:
        config, unreadable = _read_json(d / CONFIG_FILE, where, CONFIG_FILE), None
    except MopError as err:  # reported after the manifest's own verdict on config.json, if there is one
        config, unreadable = None, err
    version = config.get("format_version") if isinstance(config, dict) else None
    if _is_int(version) and version > FORMAT_VERSION:
        check_export_config(config, where)  # "newer than this MoP reads: upgrade mop"
    if version == FORMAT_VERSION or (d / MANIFEST_FILE).exists() or (d / MANIFEST_FILE).is_symlink():
        files = _read_manifest(d, where)
        _check_file(d, CONFIG_FILE, files[CONFIG_FILE], where, hash_it=True)
        if unreadable is not None:
            raise unreadable
        if not isinstance(config, dict) or not CONFIG_SCHEMA["format_version"][0](version):
            check_export_config(config, where)  # not an object, or no valid format_version
        if version != FORMAT_VERSION:
            raise MopError(f"{where}: {CONFIG_FILE} has format_version {_show(version)} but the export has a "
                           f"{MANIFEST_FILE} (format {FORMAT_VERSION})")
        check_export_config(config, where)
        ivf = config["index"]["kind"] == "ivf"
        if ivf != (CENTROIDS_FILE in files):
            raise MopError(f"{where}: {MANIFEST_FILE} {'does not list' if ivf else 'lists'} "
                           f"{CENTROIDS_FILE}, but the index is {config['index']['kind']}")
        return {**config, "manifest": files,
                "checksums": {n: e["sha256"] for n, e in files.items() if n != CONFIG_FILE}}
    if unreadable is not None:
        raise unreadable
    check_export_config(config, where)  # format 1 (an invalid version is refused there)
    checksums = config["checksums"]
    for name, digest in checksums.items():
        _member(d, name, CONFIG_FILE, allowed=(*DATA_FILES, LEGACY_INDEX_FILE))
        _check_digest(digest, name, CONFIG_FILE, where)
    missing = [n for n in DATA_FILES if n not in checksums]
    if missing:
        raise MopError(f"{where}: {CONFIG_FILE} has no checksum for {', '.join(missing)}")
    return config


def _listed_files(config: dict[str, Any]) -> dict[str, Any]:
    """The files an export's loader reads, with their manifest entries (format 2) or checksums (format 1:
    its exemplars.faiss is left out, never read)."""
    if "manifest" in config:
        return dict(config["manifest"])
    return {n: c for n, c in config["checksums"].items() if n != LEGACY_INDEX_FILE}


def check_export_files(directory: str | Path, config: dict[str, Any]) -> dict[str, Path]:
    """Every file the export lists is present, a regular file inside it and (format 2) of its listed size.
    Cheap: nothing is hashed or parsed. ``config``: as returned by :func:`read_export_config`."""
    d = Path(directory).expanduser()
    where = f"gate export '{directory}'"
    listed = _listed_files(config)
    for name, entry in listed.items():
        _check_file(d, name, entry, where, hash_it=False)
    return {name: d / name for name in listed}


def verify_checksums(directory: str | Path, config: dict[str, Any]) -> None:
    """Every file the export lists is present, inside it, of its size and matches its sha256."""
    d = Path(directory).expanduser()
    where = f"gate export '{directory}'"
    check_export_files(d, config)
    for name, entry in _listed_files(config).items():
        if name != CONFIG_FILE:  # hashed by read_export_config
            _check_file(d, name, entry, where, hash_it=True)


def _read_jsonl_rows(path: Path, where: str, name: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file of the export, one per non-blank line; one line for any defect."""
    with _reading(where, name):
        data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MopError(f"{where}: {name} is not valid UTF-8 (byte {err.start})") from err
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            reason = " ".join(str(err).split())[:120]
            raise MopError(f"{where}: {name} line {n} is not valid JSON ({reason})") from err
        except RecursionError as err:
            raise MopError(f"{where}: {name} line {n} is nested too deeply") from err
        if not isinstance(row, dict):
            raise MopError(f"{where}: {name} line {n} must be a JSON object, found {_show(row)}")
        rows.append(row)
    return rows


def _row_error(where: str, name: str, n: int, what: str, row: Any) -> MopError:
    return MopError(f"{where}: {name} row {n} {what}, found {_show(row)}")


def _read_personas(path: Path, where: str) -> list[Any]:
    """personas.jsonl: {"id", "text", "cluster_size", "source"} per persona (the writer's four keys)."""
    from mop.personas import NULL_PERSONA_ID, NULL_SOURCE, Persona

    personas, seen = [], set()
    for n, row in enumerate(_read_jsonl_rows(path, where, PERSONAS_FILE), 1):
        if not set(row) <= {"id", "text", "cluster_size", "source"} or not {"id", "text"} <= set(row):
            raise _row_error(where, PERSONAS_FILE, n, "must have id, text, cluster_size and source (no other "
                             "key)", row)
        pid, text = row["id"], row["text"]
        size, source = row.get("cluster_size", 0), row.get("source", "user")
        if not (isinstance(pid, str) and 0 < len(pid) <= 1024 and isinstance(text, str) and _is_int(size)
                and size >= 0 and isinstance(source, str) and len(source) <= 64):
            raise _row_error(where, PERSONAS_FILE, n, "must have a string id and text, a non-negative "
                             "integer cluster_size and a string source", row)
        if source == NULL_SOURCE and (pid != NULL_PERSONA_ID or text):
            raise _row_error(where, PERSONAS_FILE, n, "is the persona-free component (source "
                             f"\"{NULL_SOURCE}\") but has an id other than \"{NULL_PERSONA_ID}\" or a text",
                             row)
        if source != NULL_SOURCE and not text.strip():
            raise _row_error(where, PERSONAS_FILE, n, "has an empty text", row)
        if pid in seen:
            raise MopError(f"{where}: {PERSONAS_FILE} has the persona id {pid[:60]!r} twice")
        seen.add(pid)
        personas.append(Persona(id=pid, text=text.strip(), cluster_size=size, source=source))
    return personas


def _read_exemplars(path: Path, where: str, columns: list[str] | None) -> list[Any]:
    """exemplars.jsonl: {"id", "context" {field: text}, "label", "group", "response"} per exemplar; the
    context's fields are the export's ``columns`` (when config.json records them)."""
    from mop.data import Record

    records = []
    for n, row in enumerate(_read_jsonl_rows(path, where, EXEMPLARS_FILE), 1):
        context = row.get("context")
        if not (set(row) <= {"id", "context", "label", "group", "response"} and isinstance(row.get("id"), str)
                and isinstance(row.get("response"), str) and isinstance(context, dict)
                and all(isinstance(v, str) or v is None for v in context.values())
                and all(row.get(k) is None or isinstance(row[k], str) for k in ("label", "group"))):
            raise _row_error(where, EXEMPLARS_FILE, n, "must have a string id and response, a context object "
                             "of strings and a string or null label and group (no other key)", row)
        if columns is not None and set(context) != set(columns):
            raise _row_error(where, EXEMPLARS_FILE, n, f"must have the context fields {', '.join(columns)} "
                             f"(config.json context_columns)", row)
        records.append(Record(id=row["id"], response=row["response"],
                              context={c: "" if v is None else v for c, v in context.items()},
                              label=row.get("label"), group=row.get("group")))
    return records


def _read_gate(path: Path, config: dict[str, Any], where: str) -> dict[str, Any]:
    """gate.safetensors: exactly the five float32 tensors, finite, of the shapes config.json implies."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        with _reading(where, GATE_FILE):
            tensors = load_file(str(path))
    except SafetensorError as err:  # the header: its length, JSON, dtypes, offsets
        raise MopError(f"{where}: {GATE_FILE} is not a readable safetensors file "
                       f"({' '.join(str(err).split())[:200]})") from err
    names = sorted(tensors)
    if names != sorted(GATE_TENSORS):
        found = ", ".join(n[:40] for n in names[:8]) or "none"
        raise MopError(f"{where}: {GATE_FILE} holds tensor(s) {found}, expected {', '.join(GATE_TENSORS)}")
    w_x, log_tau = tensors["W_x.weight"], tensors["log_tau"]
    dim = int(config["embed_dim"])
    hidden = config.get("hidden_dim", w_x.shape[0] if w_x.ndim else -1)  # format 1 may not record them
    k = config.get("num_personas", log_tau.shape[0] if log_tau.ndim else -1)
    if hidden < 1 or k < 1:
        raise MopError(f"{where}: {GATE_FILE} holds a gate of {k} personas and hidden size {hidden}")
    expected = {"W_x.weight": (hidden, dim), "W_g.weight": (hidden, dim), "W_e.weight": (hidden, dim),
                "log_tau": (k,), "persona_emb": (k, dim)}
    for name, shape in expected.items():
        tensor = tensors[name]
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != shape:
            dtype = str(tensor.dtype).replace("torch.", "")
            raise MopError(f"{where}: {GATE_FILE} tensor {name} is {dtype} of shape {tuple(tensor.shape)}, "
                           f"expected float32 of shape {shape} (config.json: "
                           f"embed_dim {dim}, hidden_dim {hidden}, num_personas {k})")
        if not bool(torch.isfinite(tensor).all()):
            raise MopError(f"{where}: {GATE_FILE} tensor {name} contains NaN or infinite values")
    return tensors


def check_embed_dim(config: dict[str, Any], dim: int, where: str = "gate export") -> None:
    """Refuse an embedder whose dimension differs from the export's (it would feed the gate garbage)."""
    if int(dim) != int(config["embed_dim"]):
        raise MopError(f"{where} was trained with embedder '{config['embedder']}' of dimension "
                       f"{config['embed_dim']}, but the embedder in use has dimension {dim}: use the "
                       "export's embedder (or one of the same family and dimension)")


@dataclass
class GateExport(PersonaList):
    """A loaded gate export: the gate, its personas and exemplar pool, ready to drive any causal LM."""

    directory: Path
    config: dict[str, Any]  # config.json as read and checked (+ checksums, and manifest in format 2)
    gate: Any  # mop.gating.Gate, eval mode, float32 on CPU
    personas: list[Any]  # mop.personas.Persona, in the gate's order
    persona_emb: Any  # (K, D) float32 torch tensor h(g_k)
    exemplars: list[Any]  # mop.data.Record, the pool e_j
    index: Any  # mop.index.ExemplarIndex over h(e_j)

    @property
    def gate_config(self) -> GateConfig:
        return GateConfig.from_dict(self.config)

    @property
    def embedder(self) -> str:
        return str(self.config["embedder"])

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def num_personas(self) -> int:
        return len(self.persona_texts)

    @property
    def pool_emb(self):
        """(N, D) float32 torch tensor of the frozen exemplar embeddings h(e_j) (shares the index's
        memory)."""
        import warnings

        import torch

        # the index's array is read-only by design; the tensor is never written
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.index.embeddings)

    @property
    def tau(self):
        """(K,) per-persona temperatures."""
        return self.gate.tau.detach()

    def check_embed_dim(self, dim: int) -> None:
        check_embed_dim(self.config, dim, f"gate export '{self.directory}'")

    def save_pretrained(self, out_dir: str | Path) -> Path:
        return save_pretrained(out_dir, gate=self.gate, personas=self.personas, persona_emb=self.persona_emb,
                               pool=self.exemplars, index=self.index, config=self.gate_config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, expected_embed_dim: int | None = None,
                        device: str = "cpu") -> GateExport:
        """Load and verify an export; ``expected_embed_dim``: the dimension of the embedder that will be
        used. Checks, in order: config.json (its digest in the manifest, then its schema), every listed file's
        size and sha256, each file's structure, and the shapes and counts that tie them together; the exemplar
        index is rebuilt from the embeddings (flat, or IVF from the exported centroids). Any defect raises one
        :class:`MopError` line; nothing is written."""
        import torch

        from mop.gating import Gate
        from mop.index import ExemplarIndex, read_float32_matrix

        d = Path(directory).expanduser()
        where = f"gate export '{directory}'"
        config = read_export_config(d)
        if expected_embed_dim is not None:
            check_embed_dim(config, expected_embed_dim, where)
        verify_checksums(d, config)
        tensors = _read_gate(d / GATE_FILE, config, where)
        hidden, dim = tensors["W_x.weight"].shape
        k = tensors["log_tau"].shape[0]
        gate = Gate(dim, k, hidden)
        gate.load_state_dict({n: tensors[n] for n in GATE_TENSORS if n != "persona_emb"}, strict=True)
        gate.eval().requires_grad_(False)

        personas = _read_personas(d / PERSONAS_FILE, where)
        if len(personas) != k:
            raise MopError(f"{where}: {PERSONAS_FILE} has {len(personas)} personas but the gate has {k}")
        records = _read_exemplars(d / EXEMPLARS_FILE, where, config.get("context_columns"))
        n = config.get("num_exemplars", len(records))
        if len(records) != n:
            raise MopError(f"{where}: {EXEMPLARS_FILE} has {len(records)} exemplars but {CONFIG_FILE} says "
                           f"num_exemplars {n}")
        if n == 0:
            raise MopError(f"{where}: {EXEMPLARS_FILE} has no exemplars")
        embeddings = read_float32_matrix(d / EMBEDDINGS_FILE, (n, dim), where)
        params = config.get("index", {"kind": "flat"})  # format 1: flat (its exemplars.faiss is not read)
        centroids = None
        if params["kind"] == "ivf":
            centroids = read_float32_matrix(d / CENTROIDS_FILE, (params["nlist"], dim), where)
        with _reading(where, "the exemplar index"):
            index = ExemplarIndex.rebuild(embeddings, params["kind"], centroids=centroids,
                                          nprobe=params.get("nprobe"), seed=params.get("seed"), device=device)
        persona_emb = torch.as_tensor(tensors["persona_emb"], dtype=torch.float32)
        return cls(directory=d, config=config, gate=gate, personas=personas, persona_emb=persona_emb,
                   exemplars=records, index=index)


def load_export(directory: str | Path, expected_embed_dim: int | None = None) -> GateExport:
    """Shorthand for :meth:`GateExport.from_pretrained`."""
    return GateExport.from_pretrained(directory, expected_embed_dim=expected_embed_dim)


# ------------------------------------------------------------------------------------------ from a checkpoint
def _load_checkpoint(path: Path, trust: bool) -> dict:
    import pickle
    import re
    import zipfile

    import torch

    if not path.is_file():
        raise MopError(f"checkpoint '{path}' does not exist")
    # torch.save writes a zip archive; anything else is not a checkpoint of ours
    if not zipfile.is_zipfile(path):
        raise MopError(f"cannot read checkpoint '{path}': not a PyTorch checkpoint (torch.save writes a zip "
                       "archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise MopError(f"checkpoint '{path}' holds objects that safe (weights_only) loading refuses{what}; "
                       "if you trust the file, rerun with --trust-checkpoint") from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise MopError(f"cannot read checkpoint '{path}': {str(err).strip().splitlines()[0]}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise MopError(f"checkpoint '{path}' is not a Lightning checkpoint (no state_dict)")
    return ckpt


def _checkpoint_dataset(ckpt: dict, config_path: str | None, path: Path):
    """The training population's DatasetSpec: --config wins, else the checkpoint's own record of it."""
    import dataclasses

    from mop.data import DatasetSpec, load_dataset_config

    if config_path:
        return load_dataset_config(config_path)
    for raw in ((ckpt.get("mop") or {}).get("dataset"),
                (ckpt.get("datamodule_hyper_parameters") or {}).get("dataset")):
        if isinstance(raw, DatasetSpec):
            return raw
        if dataclasses.is_dataclass(raw):
            return DatasetSpec.from_dict(dataclasses.asdict(raw))
        if isinstance(raw, dict):
            return DatasetSpec.from_dict(raw, where=f"checkpoint '{path}': dataset")
    raise MopError(f"checkpoint '{path}' does not record its dataset; pass --config with the training config "
                   "so the exemplar pool can be re-loaded")


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, artifacts_dir: str | Path | None = None,
                      config_path: str | None = None, trust_checkpoint: bool = False) -> Path:
    """Export a Lightning checkpoint written by ``train.py`` (gate weights + the artifacts it was trained
    on)."""
    import torch

    from mop.artifacts import Artifacts
    from mop.data import load_population
    from mop.gating import Gate

    path = Path(ckpt_path).expanduser()
    check_replaceable(Path(out_dir))  # before any work: a foreign folder is never replaced
    ckpt = _load_checkpoint(path, trust_checkpoint)
    meta = ckpt.get("mop")
    if not isinstance(meta, dict) or "embed_dim" not in meta:
        raise MopError(f"checkpoint '{path}' has no MoP metadata (checkpoint['mop']): was it written by "
                       "train.py?")
    hp = dict(ckpt.get("hyper_parameters") or {})
    state = {k[len("gate."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("gate.")}
    missing = [k for k in ("W_x.weight", "W_g.weight", "W_e.weight", "log_tau") if k not in state]
    if missing:
        raise MopError(f"checkpoint '{path}' lacks gate tensor(s) {', '.join('gate.' + m for m in missing)}")
    hidden, dim = state["W_x.weight"].shape
    k = state["log_tau"].shape[0]
    if dim != int(meta["embed_dim"]) or k != int(meta.get("num_personas", k)):
        raise MopError(f"checkpoint '{path}': gate of {k} personas x dimension {dim} disagrees with its "
                       f"metadata ({meta.get('num_personas')} personas, embed_dim {meta['embed_dim']})")

    art_dir = Path(artifacts_dir or meta.get("artifacts_dir") or "").expanduser()
    if not art_dir.is_dir():
        raise MopError(f"artifacts directory '{art_dir}' of checkpoint '{path}' does not exist; pass "
                       "--artifacts DIR")
    art_meta = Artifacts.read_meta(art_dir)
    if (int(art_meta.get("embed_dim", dim)) != dim
            or art_meta.get("embedder", meta.get("embedder")) != meta.get("embedder")):
        raise MopError(f"artifacts '{art_dir}' were built with embedder '{art_meta.get('embedder')}' "
                       f"(dimension {art_meta.get('embed_dim')}) but the checkpoint's gate uses "
                       f"'{meta.get('embedder')}' (dimension {dim})")
    art = Artifacts.load(art_dir, load_population(_checkpoint_dataset(ckpt, config_path, path)), splits=())
    if len(art.personas) != k or ("persona_texts" in meta
                                  and list(meta["persona_texts"]) != art.persona_texts):
        raise MopError(f"artifacts '{art_dir}' hold other personas than the checkpoint's gate "
                       f"({len(art.personas)} vs {k}); pass the --artifacts directory it was trained with")
    gate = Gate(dim, k, hidden)
    gate.load_state_dict({n: torch.as_tensor(v).float() for n, v in state.items()}, strict=True)
    hp.setdefault("lm", meta.get("lm"))
    config = GateConfig.from_training(
        hp, art.population, meta.get("embedder"), dim,
        checkpoint={"file": path.name, "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")},
        mask_other_label=bool(meta.get("mask_other_label", False)))
    return save_pretrained(out_dir, gate=gate, personas=art.personas, persona_emb=art.persona_emb,
                           pool=art.pool, index=art.index, config=config)


# ---------------------------------------------------------------------------------------------- command
def export_command(checkpoint: str, out_dir: str, artifacts: str | None = None, config: str | None = None,
                   trust_checkpoint: bool = False) -> int:
    """Export a training checkpoint as a plug-and-play, LM-free gate directory.

    Writes the gate weights, personas, exemplar pool and index of a Lightning checkpoint written by
    ``mop train`` into a directory like the one ``mop train`` exports at the end of fit. The checkpoint is
    read with torch.load(weights_only=True), which runs no pickled code. ``mop export verify DIR`` checks an
    export and says what it holds.

    Args:
        checkpoint: the .ckpt file (e.g. <run>/checkpoints/last.ckpt).
        out_dir: the export directory to write (replaced only if it is empty or an export itself).
        artifacts: the artifacts directory the gate was trained with (default: the one the checkpoint names).
        config: the training config (its data.dataset section re-loads the exemplar pool); needed when the
            checkpoint does not record its dataset.
        trust_checkpoint: load with weights_only=False if safe loading refuses the file: this runs pickled
            code, so only for checkpoints you trust.
    """
    out = export_checkpoint(checkpoint, out_dir, artifacts, config, trust_checkpoint)
    cfg = read_export_config(out)
    print(f"exported gate: {out} ({cfg['num_personas']} personas, {cfg['num_exemplars']} exemplars, "
          f"embedder {cfg['embedder']})")
    return 0


def describe_export(export: GateExport) -> str:
    """What a verified export holds, in a few lines (``mop export verify``)."""
    cfg = export.config
    version = cfg["format_version"]
    index = export.index
    kind = ("flat (exact inner product)" if index.kind == "flat"
            else f"IVF (nlist {index.nlist}, nprobe {index.nprobe}, k-means seed {index.seed})")
    tau = export.tau
    lines = [f"gate export {export.directory}: OK, format {version}"
             + (" (legacy: its exemplars.faiss is not read, config.json is outside its checksums; "
                "re-save it to get a manifest)" if version == LEGACY_FORMAT else ""),
             f"  embedder          {cfg['embedder']} (dimension {export.embed_dim})",
             f"  personas (K)      {export.num_personas}"
             + (" (one of them the persona-free component)" if export.null_persona_index is not None else ""),
             f"  exemplar pool     {len(export.exemplars):,} exemplars, index {kind}",
             f"  gate              hidden_dim {export.gate.W_x.weight.shape[0]}, num_candidates (M) "
             f"{cfg.get('num_candidates', 4)}, tau {float(tau.min()):.4g}..{float(tau.max()):.4g}",
             f"  trained with LM   {cfg.get('trained_with_lm') or 'not recorded'}"
             + (", chat template" if cfg.get("use_chat_template") else "") + " (any causal LM can drive it)",
             f"  context columns   {', '.join(cfg.get('context_columns') or []) or 'none'}",
             f"  context template  {json.dumps(cfg['context_template'], ensure_ascii=False)}",
             f"  prompt template   {json.dumps(cfg['prompt_template'], ensure_ascii=False)}"]
    metrics = cfg.get("metrics") or {}
    shown = [f"{k} {v:.4g}" for k, v in metrics.items()
             if k in ("val/nll_per_token", "val/nll", "val/gate_entropy")]
    if shown:
        lines.append(f"  metrics           {', '.join(shown)}")
    if cfg.get("checkpoint"):
        ck = cfg["checkpoint"]
        lines.append(f"  from checkpoint   {ck.get('file')} (epoch {ck.get('epoch')}, step "
                     f"{ck.get('global_step')})")
    listed = _listed_files(cfg)
    lines.append("  sha256")
    for name in sorted(listed):
        size = (export.directory / name).stat().st_size
        digest = listed[name]["sha256"] if isinstance(listed[name], dict) else listed[name]
        lines.append(f"    {digest}  {name} ({size:,} bytes)")
    if version == FORMAT_VERSION:
        digest = _sha256(export.directory / MANIFEST_FILE)
        lines.append(f"    {digest}  {MANIFEST_FILE} (one digest that pins the whole export)")
    else:
        digest = _sha256(export.directory / CONFIG_FILE)
        lines.append(f"    {digest}  {CONFIG_FILE} (outside the format-1 checksums; checked by schema)")
        if (export.directory / LEGACY_INDEX_FILE).exists():
            lines.append(f"    {'-' * 64}  {LEGACY_INDEX_FILE} (format 1's serialised index: never read)")
    known = {*listed, MANIFEST_FILE, CONFIG_FILE, *([LEGACY_INDEX_FILE] if version == LEGACY_FORMAT else [])}
    ignored = sorted(p.name if p.name.isprintable() else repr(p.name) for p in export.directory.iterdir()
                     if p.name not in known)
    if ignored:
        lines.append(f"  not part of it    {', '.join(ignored)} (not listed, never read)")
    return "\n".join(lines)


def verify_command(directory: str) -> int:
    """Check a gate export without loading any LM, and say what it holds.

    Verifies everything ``GateExport.from_pretrained`` does (the manifest's sizes and sha256 digests,
    config.json's schema and templates, each file's structure and the shapes between them, the exemplar index
    rebuilt from the embeddings), then prints the embedder, K, the pool size, the templates, the LM the gate
    was trained with and every file's sha256. A bad export is refused with one line and exit status 2.

    Args:
        directory: the gate export directory (written by ``mop train`` or ``mop export``).
    """
    print(describe_export(GateExport.from_pretrained(directory)))
    return 0
