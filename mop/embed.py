"""Sentence embeddings h(.) with an on-disk cache keyed by (embedder, text content).

The cache lives under ``cache_dir()/embeddings/<safe embedder name>/`` as immutable shards
(``<sha1>.npz`` holding the sha1 keys of the texts and their L2-normalised float32 vectors). Shards are
written to a temporary file and published with ``os.replace``; two processes embedding at once write
different shards (or byte-identical ones), so no write can corrupt another. Many small shards are
compacted into one under an ``fcntl`` lock.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from mop.assets import (
    BUNDLED_EMBEDDERS,
    DEFAULT_EMBEDDER,
    cache_dir,
    file_lock,
    load_embedder,
    resolve_embedder,
)
from mop.errors import MopError
from mop.files import atomic_path

SHARD_TEXTS = 4096  # misses are published every this many texts, so an interrupted run keeps its work
COMPACT_AFTER = 32  # shards in one folder before they are merged into one


def text_key(text: str) -> str:
    """The cache key of a text: sha1 of its UTF-8 bytes (40 hex characters)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def safe_name(name_or_path: str) -> str:
    """A folder name for an embedder: the bundled name, or a readable stem plus a hash of the full path/id."""
    if name_or_path in BUNDLED_EMBEDDERS:
        return name_or_path
    p = Path(name_or_path).expanduser()
    ident = str(p.resolve()) if p.exists() else name_or_path
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", p.name or ident).strip("._") or "embedder"
    return f"{stem[:60]}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


def _dim_from_folder(folder: Path) -> int | None:
    """Embedding size read from a sentence-transformers folder's configs (no model load), if it can be."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    dim = None
    for module in modules:
        kind = str(module.get("type", ""))
        cfg_path = folder / module.get("path", "") / "config.json"
        if kind.endswith(("Pooling", "Dense")) and cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text())
            except ValueError:
                return None
            dim = cfg.get("out_features", cfg.get("word_embedding_dimension", dim))
    return int(dim) if dim else None


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Embedder:
    """A frozen sentence encoder h(.) returning L2-normalised float32 vectors, cached on disk per text.

    The model is loaded lazily on the first cache miss, so a fully cached run never loads it.
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_EMBEDDER,
        device: str | None = None,
        batch_size: int = 64,
        cache: bool = True,
        cache_root: Path | None = None,
    ):
        if batch_size < 1:
            raise MopError(f"embedding batch_size must be >= 1, got {batch_size}")
        self.name = str(name_or_path)
        self.device = device
        self.batch_size = batch_size
        self.cache = cache
        root = Path(cache_root) if cache_root is not None else cache_dir() / "embeddings"
        self.cache_path = root / safe_name(self.name)
        self._model = None
        self._dim: int | None = None
        self._vectors: dict[str, np.ndarray] = {}  # key -> (dim,) vector, from the shards read so far
        self._shards_read: set[str] = set()

    # --- model ---------------------------------------------------------------------------------------------
    @property
    def model(self):
        """The sentence-transformers model (loaded on first access)."""
        if self._model is None:
            self._model = load_embedder(self.name, device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        """Embedding dimension, from the model folder's configs when possible (no load, no forward)."""
        if self._dim is None:
            dim = None
            if self._model is None:
                folder = Path(resolve_embedder(self.name)).expanduser()
                dim = _dim_from_folder(folder) if folder.is_dir() else None
            if dim is None:
                get = getattr(self.model, "get_embedding_dimension", None) or \
                    self.model.get_sentence_embedding_dimension
                dim = get()
            self._dim = int(dim)
        return self._dim

    # --- cache ---------------------------------------------------------------------------------------------
    def _read_shards(self) -> None:
        """Load every shard in the cache folder not read yet (another process may have added some)."""
        if not self.cache or not self.cache_path.is_dir():
            return
        for shard in sorted(self.cache_path.glob("*.npz")):
            if shard.name in self._shards_read:
                continue
            try:
                with np.load(shard) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except FileNotFoundError:  # compacted away by another process meanwhile; its rows live on
                continue
            except (OSError, ValueError, KeyError) as err:
                raise MopError(f"embedding cache shard {shard} is unreadable ({err}); delete it and rerun") \
                    from err
            if self._dim is None and vecs.ndim == 2:
                self._dim = int(vecs.shape[1])
            for key, vec in zip(keys.astype(str), vecs):
                self._vectors[key] = vec
            self._shards_read.add(shard.name)

    def _write_shard(self, keys: list[str], vectors: np.ndarray) -> None:
        """Publish one immutable shard atomically (temp file + os.replace)."""
        self.cache_path.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1("".join(keys).encode()).hexdigest() + ".npz"
        with atomic_path(self.cache_path / name) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(keys, dtype="S40"), vectors=vectors.astype(np.float32))
        self._shards_read.add(name)

    def _maybe_compact(self) -> None:
        """Merge many shards into one (under a lock), so later runs open few files."""
        shards = sorted(self.cache_path.glob("*.npz"))
        if len(shards) <= COMPACT_AFTER:
            return
        with file_lock(self.cache_path / ".compact.lock"):
            shards = sorted(self.cache_path.glob("*.npz"))
            if len(shards) <= COMPACT_AFTER:
                return
            self._read_shards()
            keys = sorted(self._vectors)
            self._write_shard(keys, np.stack([self._vectors[k] for k in keys]))
            merged = hashlib.sha1("".join(keys).encode()).hexdigest() + ".npz"
            for shard in shards:
                if shard.name != merged:
                    shard.unlink(missing_ok=True)

    # --- encoding ------------------------------------------------------------------------------------------
    def _forward(self, texts: list[str]) -> np.ndarray:
        """L2-normalised embeddings; a text the tokenizer turns into no token at all (the empty text, for a
        tokenizer that adds no special tokens) has no embedding and gets the zero vector."""
        has_tokens = [True] * len(texts)
        blank = [i for i, t in enumerate(texts) if not t.strip()]  # only a blank text can lack tokens
        tokenize = getattr(self.model, "preprocess", None) or getattr(self.model, "tokenize", None)
        if blank and tokenize is not None:
            mask = tokenize([texts[i] for i in blank]).get("attention_mask")
            for i, n in zip(blank, mask.sum(-1).tolist() if mask is not None else [1] * len(blank)):
                has_tokens[i] = n > 0
        keep = [t for t, ok in zip(texts, has_tokens) if ok]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if keep:
            vecs = self.model.encode(keep, batch_size=len(keep), show_progress_bar=False,
                                     convert_to_numpy=True, normalize_embeddings=True)
            out[np.flatnonzero(has_tokens)] = _l2_normalise(vecs)
        return out

    def encode(self, texts: list[str], desc: str = "embedding", show_progress: bool = True) -> np.ndarray:
        """Embed ``texts`` -> (N, dim) float32, L2-normalised; only cache misses reach the model."""
        from tqdm.auto import tqdm

        if isinstance(texts, str):
            raise MopError("Embedder.encode expects a list of texts, got a single string")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise MopError(f"text {bad} to embed is {type(texts[bad]).__name__}, expected str")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [text_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self._vectors}
        if missing and self.cache:
            self._read_shards()
            missing = {k: t for k, t in missing.items() if k not in self._vectors}
        if missing:
            order = sorted(missing, key=lambda k: len(missing[k]))  # similar lengths: little padding
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            pending_keys: list[str] = []
            pending_vecs: list[np.ndarray] = []
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not show_progress, leave=False):
                vecs = self._forward([missing[k] for k in batch])
                if self._dim is None:
                    self._dim = int(vecs.shape[1])
                for k, v in zip(batch, vecs):
                    self._vectors[k] = v
                pending_keys += batch
                pending_vecs.append(vecs)
                if self.cache and len(pending_keys) >= SHARD_TEXTS:
                    self._write_shard(pending_keys, np.concatenate(pending_vecs))
                    pending_keys, pending_vecs = [], []
            if self.cache and pending_keys:
                self._write_shard(pending_keys, np.concatenate(pending_vecs))
            if self.cache:
                self._maybe_compact()
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, cache={str(self.cache_path) if self.cache else None!r})"
