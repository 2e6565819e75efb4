"""Plug-and-play gate export (docs/method.md section 6): a small, LM-free directory, written atomically.

    config.json         format version, embedder name/dim, d, M, templates, sizes, LM (informational),
                        training metrics, sha256 of every other file
    gate.safetensors    W_x, W_g, W_e, log_tau (+ the frozen persona embeddings)
    personas.jsonl      id, text, cluster size, source ("none": the persona-free component, empty text)
    exemplars.jsonl     id, context fields, label, response
    exemplars.faiss + exemplar_embeddings.npy   the exemplar index

Like a PEFT adapter, an export is written with :func:`save_pretrained` and read back with
:meth:`GateExport.from_pretrained`, which verifies it before use (checksums, format version, paths, shapes,
embedder dimension); the base LM is chosen at generation time. Only safetensors / JSON / numpy files are read
(never pickle). ``mop export CKPT OUT_DIR`` exports a Lightning checkpoint written by ``train.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mop.errors import MopError
from mop.personas import PersonaList

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
GATE_FILE = "gate.safetensors"
PERSONAS_FILE = "personas.jsonl"
EXEMPLARS_FILE = "exemplars.jsonl"
INDEX_FILES = ("exemplars.faiss", "exemplar_embeddings.npy")  # mop.index.INDEX_FILE, EMBEDDINGS_FILE
REQUIRED_FILES = (GATE_FILE, PERSONAS_FILE, EXEMPLARS_FILE, *INDEX_FILES)
REQUIRED_CONFIG = ("embedder", "embed_dim", "prompt_template", "context_template")
GATE_TENSORS = ("W_x.weight", "W_g.weight", "W_e.weight", "log_tau", "persona_emb")
# The only kinds of file an export holds; none of them is a pickle (the .npy is read with allow_pickle=False).
EXPORT_SUFFIXES = (".json", ".jsonl", ".safetensors", ".faiss", ".npy")


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

    @classmethod
    def from_training(cls, hparams: Mapping[str, Any], population, embedder: str, embed_dim: int, *,
                      metrics: Mapping[str, float] | None = None,
                      checkpoint: dict[str, Any] | None = None, mask_other_label: bool = False) -> GateConfig:
        """From the model's hyper-parameters (``MixtureOfPersonas.hparams``) and the training population."""
        from mop.prompts import DEFAULT_TEMPLATE

        return cls(embedder=embedder, embed_dim=int(embed_dim),
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
        if out["checkpoint"] is None:
            del out["checkpoint"]
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
    records; ``index``: the :class:`mop.index.ExemplarIndex` over them. An existing ``out_dir`` is replaced
    only when it is empty or itself a gate export (never another folder).
    """
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
        index.save(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        cfg = {"format_version": FORMAT_VERSION, **config.to_dict(), "num_personas": k, "num_exemplars": n,
               "checksums": {name: _sha256(tmp / name) for name in files}}
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
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
def _member(directory: Path, name: Any) -> Path:
    """The file ``name`` listed in config.json, refused unless it is a plain file name inside
    ``directory``."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or Path(name).name != name:
        raise MopError(f"gate export '{directory}': config.json lists {name!r}, which is not a file inside "
                       "the export directory")
    if not name.endswith(EXPORT_SUFFIXES):
        raise MopError(f"gate export '{directory}': config.json lists {name!r}, not a kind of file an export "
                       f"holds ({', '.join(EXPORT_SUFFIXES)})")
    path = directory / name
    if path.resolve().parent != directory.resolve():  # e.g. a symbolic link that leads out of the export
        raise MopError(f"gate export '{directory}': {name} points outside the export directory")
    return path


def read_export_config(directory: str | Path) -> dict[str, Any]:
    """config.json of an export, checked for format version and required keys (no checksum verification)."""
    d = Path(directory).expanduser()
    if not d.exists():
        raise MopError(f"gate export '{directory}' does not exist")
    if not d.is_dir():
        raise MopError(f"gate export '{directory}' is not a directory (expected the folder written by "
                       "train.py or `mop export`)")
    path = d / CONFIG_FILE
    if not path.is_file():
        raise MopError(f"gate export '{directory}' is missing {CONFIG_FILE}: not a MoP gate export")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise MopError(f"gate export '{directory}': {CONFIG_FILE} is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise MopError(f"gate export '{directory}': {CONFIG_FILE} must hold a JSON object")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MopError(f"gate export '{directory}': {CONFIG_FILE} has no valid format_version "
                       f"(found {version!r})")
    if version > FORMAT_VERSION:
        raise MopError(f"gate export '{directory}' has format_version {version}, newer than this MoP reads "
                       f"({FORMAT_VERSION}): upgrade mop")
    missing = [k for k in (*REQUIRED_CONFIG, "checksums") if k not in config]
    if missing:
        raise MopError(f"gate export '{directory}': {CONFIG_FILE} lacks {', '.join(missing)}")
    if not isinstance(config["checksums"], dict):
        raise MopError(f"gate export '{directory}': checksums in {CONFIG_FILE} must be an object "
                       "{file: sha256}")
    return config


def check_export_files(directory: str | Path, config: dict[str, Any]) -> dict[str, Path]:
    """Every required file is listed and present, and every listed file is a plain export file inside the
    export directory (no path that escapes it, no unexpected kind of file). Cheap: nothing is hashed or
    read."""
    d = Path(directory).expanduser()
    checksums = config["checksums"]
    paths = {name: _member(d, name) for name in checksums}
    for name in REQUIRED_FILES:
        if not (d / name).is_file():
            raise MopError(f"gate export '{directory}' is missing {name}")
        if name not in checksums:
            raise MopError(f"gate export '{directory}': {CONFIG_FILE} has no checksum for {name}")
    for name, path in paths.items():
        if not path.is_file():
            raise MopError(f"gate export '{directory}' is missing {name}")
    return paths


def verify_checksums(directory: str | Path, config: dict[str, Any]) -> None:
    """Every required file is listed, inside the export, present and matches its sha256 in config.json."""
    checksums = config["checksums"]
    for name, path in check_export_files(directory, config).items():
        found = _sha256(path)
        if found != checksums[name]:
            raise MopError(f"gate export '{directory}': {name} does not match its sha256 in {CONFIG_FILE} "
                           f"(expected {str(checksums[name])[:12]}..., found {found[:12]}...): the file is "
                           "corrupted or was modified after export; re-export the gate")


def _read_jsonl_objects(path: Path, where: str) -> list[dict]:
    from mop.data import iter_jsonl_objects

    return [row for _, row in iter_jsonl_objects(path, f"{where}: {path.name}")]


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
    config: dict[str, Any]  # config.json as read (with format version, sizes and checksums)
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
        used."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from mop.data import Record
        from mop.gating import Gate
        from mop.index import ExemplarIndex
        from mop.personas import read_personas

        d = Path(directory).expanduser()
        where = f"gate export '{directory}'"
        config = read_export_config(d)
        if expected_embed_dim is not None:
            check_embed_dim(config, expected_embed_dim, where)
        verify_checksums(d, config)
        try:
            tensors = load_file(str(d / GATE_FILE))
        except (SafetensorError, OSError, ValueError) as err:
            raise MopError(f"{where}: cannot read {GATE_FILE} ({err})") from err
        missing = [k for k in GATE_TENSORS if k not in tensors]
        if missing:
            raise MopError(f"{where}: {GATE_FILE} lacks tensor(s) {', '.join(missing)}")
        w_x, log_tau, persona_emb = tensors["W_x.weight"], tensors["log_tau"], tensors["persona_emb"]
        hidden, dim = w_x.shape
        k = log_tau.shape[0]
        if dim != int(config["embed_dim"]):
            raise MopError(f"{where}: {GATE_FILE} holds W_x of shape {tuple(w_x.shape)} but {CONFIG_FILE} "
                           f"says embed_dim {config['embed_dim']}")
        expected = {"W_g.weight": (hidden, dim), "W_e.weight": (hidden, dim), "log_tau": (k,),
                    "persona_emb": (k, dim)}
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise MopError(f"{where}: {GATE_FILE} tensor {name} has shape {tuple(tensors[name].shape)}, "
                               f"expected {shape}")
        gate = Gate(dim, k, hidden)
        gate.load_state_dict({n: tensors[n] for n in GATE_TENSORS if n != "persona_emb"}, strict=True)
        gate.eval().requires_grad_(False)

        personas = read_personas(d / PERSONAS_FILE)
        if len(personas) != k:
            raise MopError(f"{where}: {PERSONAS_FILE} has {len(personas)} personas but the gate has {k}")
        records = []
        for n, row in enumerate(_read_jsonl_objects(d / EXEMPLARS_FILE, where), 1):
            context = row.get("context")
            if "id" not in row or not isinstance(row.get("response"), str) or not isinstance(context, dict):
                raise MopError(f"{where}: {EXEMPLARS_FILE} record {n} needs id, context (object) and "
                               "response")
            label, group = row.get("label"), row.get("group")
            records.append(Record(id=str(row["id"]), response=row["response"],
                                  context={str(c): "" if v is None else str(v) for c, v in context.items()},
                                  label=None if label is None else str(label),
                                  group=None if group is None else str(group)))
        index = ExemplarIndex.load(d, device=device)
        if index.ntotal != len(records) or index.dim != dim:
            raise MopError(f"{where}: the exemplar index holds {index.ntotal} vectors of dimension "
                           f"{index.dim}, expected {len(records)} of dimension {dim}")
        for key, value in (("num_personas", k), ("num_exemplars", len(records))):
            if key in config and int(config[key]) != value:
                raise MopError(f"{where}: {CONFIG_FILE} says {key} {config[key]} but the files hold {value}")
        return cls(directory=d, config=config, gate=gate, personas=personas,
                   persona_emb=torch.as_tensor(persona_emb, dtype=torch.float32), exemplars=records,
                   index=index)


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
    read with torch.load(weights_only=True), which runs no pickled code.

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
