"""FAISS index over the frozen exemplar embeddings h(e_j), searched by maximum inner product.

The gate queries it with q_k = W_e^T (x~ + g~_k), so (x~ + g~_k) . e~_j = q_k . h(e_j): the index holds h(e_j)
once and is never rebuilt while the gate trains. Pools below ``ivf_threshold`` use an exact ``IndexFlatIP``;
larger pools an ``IndexIVFFlat`` (inner-product metric, seeded k-means on a sample), on the GPU when faiss has
GPU support. ``search`` can exclude given pool positions per query (target masking).
The method: docs/method.md sections 1 and 9.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mop.errors import MopError
from mop.files import atomic_path

INDEX_FILE = "exemplars.faiss"
EMBEDDINGS_FILE = "exemplar_embeddings.npy"
CENTROIDS_FILE = "ivf_centroids.npy"  # the IVF coarse centroids of an export (mop.export); none for flat
DEFAULT_IVF_THRESHOLD = 200_000
GPU_MAX_K = 2048  # faiss GPU indexes return at most 2048 neighbours (and probe at most 2048 lists)
KMEANS_ITERS = 10  # faiss's own default for IVF coarse training
TRAIN_POINTS_PER_LIST = 64  # k-means sample: up to 64 * nlist pool rows
MIN_POINTS_PER_LIST = 39  # below this faiss's k-means warns that it has too few points per centroid
NPROBE_FRACTION = 8  # default nprobe = nlist / 8 (see default_nprobe)
MIN_NPROBE = 16
SEARCH_BATCH = 8192  # queries per faiss call (bounds the temporary (B, k + excluded) arrays)


def faiss_has_gpu() -> bool:
    """True when the installed faiss is a GPU build and sees at least one CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_nlist(n: int) -> int:
    """IVF lists for a pool of ``n`` rows: 4 sqrt(n), at most n / 39 so that k-means has enough points per
    list."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST, 65_536))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: nlist / 8 (at least 16, at most nlist), so about 1/8 of the pool is scanned.

    On 100k random 384-d vectors of intrinsic dimension 16 (a stand-in for sentence embeddings: top-10 cosine
    about 0.8) this gives recall@10 of about 0.99 against exact search (tests/test_index.py,
    benchmarks/investigations/index_search.py). Recall depends on the data: on isotropic random vectors, which
    have no neighbourhood structure, recall@10 is roughly the fraction of lists probed whatever the index.
    """
    return max(1, min(nlist, max(MIN_NPROBE, math.ceil(nlist / NPROBE_FRACTION))))


def _as_float32_matrix(array: Any, what: str) -> np.ndarray:
    """A (rows, D) float32 C-contiguous numpy view/copy of a numpy array or torch tensor."""
    if hasattr(array, "detach"):  # torch tensor (also bfloat16/half, which numpy cannot hold directly)
        import torch

        array = array.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        raise MopError(f"{what} must be a numeric array, found dtype {array.dtype}")
    if array.ndim != 2:
        raise MopError(f"{what} must be a 2-D array (rows, dim), found shape {tuple(array.shape)}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise MopError(f"{what} contains NaN or infinite values")
    return array


def read_float32_matrix(path: str | os.PathLike, shape: tuple[int, int], what: str) -> np.ndarray:
    """A C-order little-endian float32 ``.npy`` of exactly ``shape`` (rows, D), all finite.

    The header is read and checked first (numpy's own header reader, capped at 10,000 bytes, no pickle), and
    the file's size must be the header plus rows x D x 4 bytes: a header that claims another or a huge shape
    is refused before anything is allocated.
    """
    from numpy.lib import format as npy_format

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                           else npy_format.read_array_header_2_0)
            found_shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
        size = path.stat().st_size
    except Exception as err:  # noqa: BLE001 - numpy's header parser of untrusted bytes (ValueError,
        # SyntaxError, tokenize.TokenError, RecursionError...): any failure means the file is not a .npy array
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise MopError(f"{what}: {path.name} is not a readable .npy array ({reason})") from err
    if dtype != np.dtype("<f4") or fortran or tuple(found_shape) != tuple(shape):
        raise MopError(f"{what}: {path.name} holds an array of {dtype} of shape {tuple(found_shape)}"
                       f"{' (Fortran order)' if fortran else ''}, expected float32 of shape {tuple(shape)}")
    rows, dim = shape
    if size != offset + rows * dim * 4:
        raise MopError(f"{what}: {path.name} has {size} bytes, expected {offset + rows * dim * 4} for a "
                       f"float32 array of shape {tuple(shape)}")
    array = np.fromfile(path, dtype="<f4", count=rows * dim, offset=offset).reshape(shape)
    if not np.isfinite(array).all():
        raise MopError(f"{what}: {path.name} contains NaN or infinite values")
    return array


@contextlib.contextmanager
def _blas_for_batches() -> Iterator[None]:
    """Let faiss's flat kernels use BLAS for any batch of queries while inside the block.

    faiss >= 1.13 only switches to BLAS once n_queries * dim >= 128000 (334 queries at d=384); below that its
    one-query-at-a-time kernel was 2-3x slower than BLAS for batches of 32-256 queries on our CPU machines
    (benchmarks/investigations/index_search.py). The global is restored on exit.
    """
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def _resolve_device(device: str) -> int | None:
    """GPU id to use, or None for CPU."""
    if device == "cpu":
        return None
    if device == "auto":
        return 0 if faiss_has_gpu() else None
    if device == "cuda" or device.startswith("cuda:"):
        if not hasattr(faiss, "StandardGpuResources"):
            raise MopError(
                f"device={device!r} but the installed faiss has no GPU support "
                "(uninstall faiss-cpu and install faiss-gpu-cu12, see README), or use device='cpu'"
            )
        gpu_id = 0 if device == "cuda" else device.split(":", 1)[1]
        if not str(gpu_id).isdigit():
            raise MopError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', found {device!r}")
        n_gpus = faiss.get_num_gpus()
        if int(gpu_id) >= n_gpus:
            raise MopError(f"device={device!r} but faiss sees {n_gpus} GPU(s)")
        return int(gpu_id)
    raise MopError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', found {device!r}")


class ExemplarIndex:
    """Maximum-inner-product index over the (N, D) frozen exemplar embeddings; returns pool positions 0..N-1.

    ``embeddings`` is kept (read-only, not copied when already float32 and contiguous) for the gate's dense,
    exact normalisation of Omega. ``kind``: "flat" (exact), "ivf" (approximate, for millions of rows) or
    "auto" (flat below ``ivf_threshold`` rows). ``nlist``/``nprobe`` default to :func:`default_nlist` and
    :func:`default_nprobe`. ``device``: "auto" (GPU when faiss has GPU support and sees a GPU), "cpu", "cuda"
    or "cuda:<n>". ``seed`` fixes the IVF k-means sample and initialisation.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        kind: str = "auto",
        nlist: int | None = None,
        nprobe: int | None = None,
        device: str = "auto",
        ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
        seed: int = 0,
    ) -> None:
        emb = _as_float32_matrix(embeddings, "exemplar embeddings")
        n, dim = emb.shape
        if n == 0 or dim == 0:
            raise MopError(f"exemplar embeddings must have at least one row and column, found shape "
                           f"{emb.shape}")
        if kind not in ("auto", "flat", "ivf"):
            raise MopError(f"index kind must be 'auto', 'flat' or 'ivf', found {kind!r}")
        if kind == "flat" and (nlist is not None or nprobe is not None):
            raise MopError("nlist/nprobe only apply to kind='ivf'; kind='flat' is exact")
        if kind == "auto":  # nlist/nprobe are then settings for the IVF case, unused by a small (flat) pool
            kind = "ivf" if n >= ivf_threshold else "flat"
        gpu_id = _resolve_device(device)
        self.seed = int(seed) if kind == "ivf" else None

        if kind == "flat":
            cpu_index: faiss.Index = faiss.IndexFlatIP(dim)
        else:
            nlist = default_nlist(n) if nlist is None else int(nlist)
            if not 1 <= nlist <= n:
                raise MopError(f"nlist must be between 1 and the pool size {n}, found {nlist}")
            cpu_index = self._trained_ivf(emb, nlist, seed, gpu_id)
        self._setup(emb, kind, cpu_index, gpu_id, add=True)
        if kind == "ivf":
            self.nprobe = default_nprobe(self.nlist) if nprobe is None else nprobe

    # ----------------------------------------------------------------------------------------------- building
    @staticmethod
    def _trained_ivf(emb: np.ndarray, nlist: int, seed: int, gpu_id: int | None) -> faiss.IndexIVFFlat:
        """An empty IndexIVFFlat whose coarse centroids come from seeded spherical k-means on a pool
        sample."""
        n, dim = emb.shape
        rng = np.random.default_rng(seed)
        n_train = min(n, TRAIN_POINTS_PER_LIST * nlist)
        sample = emb if n_train == n else emb[np.sort(rng.choice(n, n_train, replace=False))]  # (n_train, D)
        params = faiss.ClusteringParameters()
        params.niter = KMEANS_ITERS
        params.seed = seed
        params.spherical = True  # what faiss does for an inner-product IVF
        params.max_points_per_centroid = TRAIN_POINTS_PER_LIST  # the sample already has the intended size
        params.min_points_per_centroid = 1
        params.verbose = False
        clustering = faiss.Clustering(dim, nlist, params)
        assign: faiss.Index = faiss.IndexFlatIP(dim)
        if gpu_id is not None:
            resources = faiss.StandardGpuResources()
            assign = faiss.index_cpu_to_gpu(resources, gpu_id, assign)
        with _blas_for_batches():
            clustering.train(sample, assign)
        centroids = faiss.vector_to_array(clustering.centroids).reshape(nlist, dim)
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(centroids)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()  # the IVF index now owns (and frees) its quantizer
        assert index.is_trained
        return index

    @classmethod
    def rebuild(cls, embeddings: np.ndarray, kind: str, centroids: np.ndarray | None = None,
                nprobe: int | None = None, seed: int | None = None, device: str = "auto") -> ExemplarIndex:
        """The index over ``embeddings`` without a serialised FAISS index (what an export loads from): flat at
        once; IVF from its coarse ``centroids`` (nlist, D), each row assigned to its nearest centroid in pool
        order, exactly as the trained index assigned them, so searches return the same results. ``seed``:
        recorded with the centroids (the k-means seed they came from)."""
        emb = _as_float32_matrix(embeddings, "exemplar embeddings")
        n, dim = emb.shape
        if n == 0 or dim == 0:
            raise MopError(f"exemplar embeddings must have at least one row and column, found shape "
                           f"{emb.shape}")
        gpu_id = _resolve_device(device)
        if kind == "flat":
            if centroids is not None or nprobe is not None:
                raise MopError("a flat exemplar index has no centroids or nprobe")
            cpu_index: faiss.Index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            cents = _as_float32_matrix(centroids, "IVF centroids") if centroids is not None else None
            if cents is None or cents.shape[1] != dim or not 1 <= cents.shape[0] <= n:
                found = "none" if cents is None else f"shape {cents.shape}"
                raise MopError(f"an IVF exemplar index needs (nlist, {dim}) centroids with 1 <= nlist <= "
                               f"{n}, found {found}")
            quantizer = faiss.IndexFlatIP(dim)
            quantizer.add(cents)
            cpu_index = faiss.IndexIVFFlat(quantizer, dim, cents.shape[0], faiss.METRIC_INNER_PRODUCT)
            cpu_index.own_fields = True
            quantizer.this.disown()
        else:
            raise MopError(f"index kind must be 'flat' or 'ivf', found {kind!r}")
        self = cls.__new__(cls)
        self.seed = None if seed is None or kind == "flat" else int(seed)
        self._setup(emb, kind, cpu_index, gpu_id, add=True)
        if kind == "ivf":
            self.nprobe = default_nprobe(self.nlist) if nprobe is None else nprobe
        return self

    def centroids(self) -> np.ndarray | None:
        """(nlist, D) float32 coarse centroids of an IVF index (None for flat)."""
        if self.kind != "ivf":
            return None
        cpu_index = faiss.index_gpu_to_cpu(self._index) if self._gpu_resources is not None else self._index
        quantizer = faiss.extract_index_ivf(cpu_index).quantizer
        return quantizer.reconstruct_n(0, quantizer.ntotal).astype(np.float32, copy=False)

    def params(self) -> dict[str, Any]:
        """What :meth:`rebuild` needs besides the vectors: kind, and for IVF nlist, nprobe and seed."""
        if self.kind != "ivf":
            return {"kind": "flat"}
        return {"kind": "ivf", "nlist": self.nlist, "nprobe": self.nprobe, "seed": self.seed}

    def _setup(self, emb: np.ndarray, kind: str, cpu_index: faiss.Index, gpu_id: int | None,
               add: bool) -> None:
        emb = emb.view()
        emb.flags.writeable = False  # frozen: the index would silently disagree with a modified matrix
        self.embeddings = emb  # (N, D) float32
        self.ntotal, self.dim = emb.shape
        self.kind = kind
        self.nlist = int(faiss.extract_index_ivf(cpu_index).nlist) if kind == "ivf" else None
        self._gpu_resources = None
        index = cpu_index
        if gpu_id is not None:
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, gpu_id, cpu_index)
        if add:
            for start in range(0, self.ntotal, 262_144):  # bounded temporary memory for IVF assignment
                with _blas_for_batches():
                    index.add(emb[start : start + 262_144])
        self._index = index
        self.device = "cpu" if gpu_id is None else f"cuda:{gpu_id}"

    # ------------------------------------------------------------------------------------------- properties
    @property
    def nprobe(self) -> int | None:
        """IVF lists visited per query (None for a flat index); settable."""
        if self.kind != "ivf":
            return None
        index = self._index if self._gpu_resources is not None else faiss.extract_index_ivf(self._index)
        return int(index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise MopError("nprobe only applies to kind='ivf' (this index is exact 'flat')")
        value = int(value)
        limit = min(self.nlist, GPU_MAX_K) if self._gpu_resources is not None else self.nlist
        if not 1 <= value <= limit:
            raise MopError(f"nprobe must be between 1 and {limit} for this index (nlist={self.nlist}), "
                           f"found {value}")
        index = self._index if self._gpu_resources is not None else faiss.extract_index_ivf(self._index)
        index.nprobe = value

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        ivf = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.kind == "ivf" else ""
        return (f"ExemplarIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim}{ivf}, "
                f"device={self.device!r})")

    # ----------------------------------------------------------------------------------------------- search
    def search(self, queries: Any, k: int, exclude: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` pool rows by inner product for each query, never returning the rows in ``exclude[b]``.

        ``queries``: (B, D) numpy array or torch tensor. ``exclude``: per query, the pool positions it must
        not get back (target masking): a sequence of B sequences (ragged), or an integer array/tensor of shape
        (B,) or (B, m) where -1 entries are padding. Returns (scores (B, k) float32, positions (B, k) int64),
        best first; where fewer than ``k`` rows qualify, positions are -1 and scores -inf. For kind="flat" the
        result is exact (brute force over the non-excluded rows).
        """
        q = _as_float32_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise MopError(f"queries have dimension {q.shape[1]} but the exemplar index has dimension "
                           f"{self.dim}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MopError(f"k must be a positive integer, found {k!r}")
        k = int(k)
        if self._gpu_resources is not None and k > GPU_MAX_K:
            raise MopError(f"k={k} exceeds the faiss GPU limit of {GPU_MAX_K}; build the index with "
                           "device='cpu'")
        n_queries = q.shape[0]
        pairs = self._exclusion_pairs(exclude, n_queries)  # (query rows, pool positions), sorted by query row
        scores = np.empty((n_queries, k), dtype=np.float32)
        positions = np.empty((n_queries, k), dtype=np.int64)
        for start in range(0, n_queries, SEARCH_BATCH):
            stop = min(start + SEARCH_BATCH, n_queries)
            chunk_pairs = None
            if pairs is not None:
                lo, hi = np.searchsorted(pairs[0], [start, stop])
                chunk_pairs = (pairs[0][lo:hi] - start, pairs[1][lo:hi])
            scores[start:stop], positions[start:stop] = self._search_chunk(q[start:stop], k, chunk_pairs)
        return scores, positions

    def _exclusion_pairs(self, exclude: Any, n_queries: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Validated ``exclude`` as two int64 arrays (query row, pool position), ordered by query row."""
        if exclude is None:
            return None
        if hasattr(exclude, "detach"):
            exclude = exclude.detach().cpu().numpy()
        if isinstance(exclude, np.ndarray) and exclude.ndim in (1, 2) and exclude.dtype != object:
            if exclude.dtype.kind not in "iu":
                raise MopError(f"exclude must hold integer pool positions, found dtype {exclude.dtype}")
            table = exclude.reshape(len(exclude), -1)  # (B, m); -1 = padding
            if table.shape[0] != n_queries:
                raise MopError(f"exclude must have one entry per query ({n_queries}), found {table.shape[0]}")
            keep = table >= 0
            rows = np.broadcast_to(np.arange(n_queries, dtype=np.int64)[:, None], table.shape)[keep]
            cols = table[keep].astype(np.int64)
        else:
            if not hasattr(exclude, "__len__"):
                raise MopError(f"exclude must be one sequence of pool positions per query, found "
                               f"{type(exclude)}")
            if len(exclude) != n_queries:
                raise MopError(f"exclude must have one entry per query ({n_queries}), found {len(exclude)}")
            lists = []
            for row in exclude:
                if hasattr(row, "detach"):
                    row = row.detach().cpu().numpy()
                lists.append(np.asarray(row if row is not None else [], dtype=np.int64).reshape(-1))
            lengths = np.array([len(ids) for ids in lists], dtype=np.int64)
            rows = np.repeat(np.arange(n_queries, dtype=np.int64), lengths)
            cols = np.concatenate(lists) if lists else np.empty(0, dtype=np.int64)
        if cols.size and (cols.min() < 0 or cols.max() >= self.ntotal):
            raise MopError(
                f"excluded pool positions must lie in [0, {self.ntotal}), found {cols.min()}..{cols.max()}"
            )
        return rows, cols

    def _search_chunk(
        self, q: np.ndarray, k: int, pairs: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        n_queries = q.shape[0]
        extra = 0  # the largest number of exclusions of one query
        if pairs is not None and pairs[0].size:
            extra = int(np.bincount(pairs[0], minlength=n_queries).max())
        k_search = min(k + extra, self.ntotal)
        if self._gpu_resources is not None and k_search > GPU_MAX_K:
            raise MopError(
                f"k plus the largest exclusion list ({k} + {extra}) exceeds the faiss GPU limit of "
                f"{GPU_MAX_K}; build the index with device='cpu'"
            )
        with _blas_for_batches():
            found_scores, found = self._index.search(q, k_search)  # (B, k_search), best first; -1 = none
        valid = found >= 0
        if extra:
            # One key per (query, pool row) pair; a single sorted membership test filters every row at once.
            excl_keys = pairs[0] * self.ntotal + pairs[1]
            found_keys = np.arange(n_queries, dtype=np.int64)[:, None] * self.ntotal + found
            valid &= ~np.isin(found_keys, excl_keys)
        # Move the valid hits to the front of each row, keeping their (descending-score) order.
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        positions = np.take_along_axis(found, order, axis=1)
        scores = np.take_along_axis(found_scores, order, axis=1).astype(np.float32, copy=False)
        keep = np.take_along_axis(valid, order, axis=1)
        positions = np.where(keep, positions, -1)
        scores = np.where(keep, scores, np.float32(-np.inf))
        if k_search < k:  # pool smaller than k
            pad = k - k_search
            positions = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, positions

    # ----------------------------------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``exemplars.faiss`` (CPU copy of the index) and ``exemplar_embeddings.npy``, each
        atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cpu_index = faiss.index_gpu_to_cpu(self._index) if self._gpu_resources is not None else self._index
        with atomic_path(directory / EMBEDDINGS_FILE) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(self.embeddings))
        with atomic_path(directory / INDEX_FILE) as tmp:
            faiss.write_index(cpu_index, str(tmp))

    @classmethod
    def load(
        cls, directory: str | os.PathLike, device: str = "auto", nprobe: int | None = None, mmap: bool = False
    ) -> ExemplarIndex:
        """Read an index written by :meth:`save`; ``mmap`` memory-maps the embeddings instead of reading
        them."""
        directory = Path(directory)
        index_path, emb_path = directory / INDEX_FILE, directory / EMBEDDINGS_FILE
        missing = [p.name for p in (index_path, emb_path) if not p.is_file()]
        if missing:
            raise MopError(f"exemplar index directory {directory} is missing {', '.join(missing)}")
        try:
            emb = np.load(emb_path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise MopError(f"cannot read {emb_path}: {e}") from e
        if emb.ndim != 2 or emb.dtype != np.float32:
            raise MopError(f"{emb_path} must hold a 2-D float32 array, found {emb.dtype} {emb.shape}")
        try:
            cpu_index = faiss.read_index(str(index_path))  # already downcast to its concrete class
        except RuntimeError as e:
            raise MopError(f"cannot read faiss index {index_path}: {str(e).strip().splitlines()[-1]}") from e
        if isinstance(cpu_index, faiss.IndexFlatIP):
            kind = "flat"
        elif (isinstance(cpu_index, faiss.IndexIVFFlat)
              and cpu_index.metric_type == faiss.METRIC_INNER_PRODUCT):
            kind = "ivf"
        else:
            raise MopError(f"{index_path} holds a {type(cpu_index).__name__}, expected IndexFlatIP or "
                           "IndexIVFFlat (IP)")
        if cpu_index.d != emb.shape[1] or cpu_index.ntotal != emb.shape[0]:
            raise MopError(
                f"{index_path.name} has {cpu_index.ntotal} vectors of dimension {cpu_index.d} but "
                f"{emb_path.name} has shape {emb.shape}; the two files come from different pools"
            )
        self = cls.__new__(cls)
        self.seed = None
        self._setup(emb, kind, cpu_index, _resolve_device(device), add=False)
        if nprobe is not None:
            self.nprobe = nprobe
        self._check_rows_match()
        return self

    def _check_rows_match(self, n_check: int = 8) -> None:
        """Spot-check that the index holds ``embeddings``: a row searched for itself scores at least |e|^2."""
        rows = np.unique(np.linspace(0, self.ntotal - 1, n_check).astype(np.int64))
        probe = np.ascontiguousarray(self.embeddings[rows])
        top, _ = self._index.search(probe, 1)
        self_scores = np.einsum("ij,ij->i", probe, probe)
        if np.any(top[:, 0] < self_scores - 1e-3 * np.maximum(1.0, self_scores)):
            raise MopError(
                f"{INDEX_FILE} does not contain the vectors in {EMBEDDINGS_FILE}; the two files come from "
                "different pools"
            )
