"""Exemplar index: exact flat vs IVF search latency, IVF recall@k and build time at several pool sizes.

    python benchmarks/investigations/index_search.py --sizes 100000 1000000 --queries 256 --k 10

Pools are random normalised float32 vectors of two kinds: "lowrank" (intrinsic dimension 16 plus noise, so
that neighbourhoods exist as in sentence embeddings) and "isotropic" (no structure: the worst case for any IVF
index). Queries come from the same distribution. Flat and IVF are timed alternately in one run on the same
machine (these machines are shared and noisy): read the speed-up column, not absolute times. "flat, faiss
default" is the same flat index searched without ExemplarIndex's BLAS switch
(mop/index.py: _blas_for_batches).
Writes benchmarks/results/index_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from mop.index import ExemplarIndex, faiss_has_gpu

RESULTS = Path(__file__).resolve().parents[1] / "results" / "index_search.json"
RANK, NOISE = 16, 0.5  # "lowrank" pools: z @ basis + noise, z ~ N(0, I_16)


def hardware() -> dict:
    """CPU model, cores and library versions, so that numbers can be compared across machines."""
    model = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "faiss": faiss.__version__,
        "faiss_gpu": faiss_has_gpu(),
        "numpy": np.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def make_vectors(kind: str, n: int, dim: int, rng: np.random.Generator, basis: np.ndarray) -> np.ndarray:
    """(n, dim) float32 unit rows, generated in blocks to bound temporary memory."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        if kind == "isotropic":
            block = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            block = rng.standard_normal((m, RANK), dtype=np.float32) @ basis
            block += NOISE / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time in seconds over ``repeats`` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


def run_one(kind: str, n: int, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    basis = rng.standard_normal((RANK, args.dim), dtype=np.float32)
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    pool = make_vectors(kind, n, args.dim, rng, basis)
    queries = make_vectors(kind, args.queries, args.dim, rng, basis)

    start = time.perf_counter()
    flat = ExemplarIndex(pool, kind="flat", device=args.device)
    flat_build = time.perf_counter() - start
    start = time.perf_counter()
    ivf = ExemplarIndex(pool, kind="ivf", nprobe=args.nprobe, device=args.device, seed=args.seed)
    ivf_build = time.perf_counter() - start

    # Alternate the timed searches so that machine noise hits all of them alike.
    flat_s, (_, truth) = timed(lambda: flat.search(queries, args.k), args.repeats)
    ivf_s, (_, found) = timed(lambda: ivf.search(queries, args.k), args.repeats)
    raw_s, _ = timed(lambda: flat._index.search(queries, args.k), args.repeats)
    flat_s2, _ = timed(lambda: flat.search(queries, args.k), args.repeats)
    ivf_s2, _ = timed(lambda: ivf.search(queries, args.k), args.repeats)
    flat_ms, ivf_ms = 1e3 * min(flat_s, flat_s2), 1e3 * min(ivf_s, ivf_s2)

    with tempfile.TemporaryDirectory() as tmp:  # persistence cost of the larger (IVF) index
        start = time.perf_counter()
        ivf.save(tmp)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        ExemplarIndex.load(tmp, device=args.device)
        load_s = time.perf_counter() - start

    row = {
        "data": kind,
        "pool": n,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "nlist": ivf.nlist,
        "nprobe": ivf.nprobe,
        "device": ivf.device,
        "flat_build_s": flat_build,
        "ivf_build_s": ivf_build,
        "flat_ms": flat_ms,
        "flat_faiss_default_ms": 1e3 * raw_s,
        "ivf_ms": ivf_ms,
        "ivf_speedup": flat_ms / ivf_ms,
        "ivf_recall": recall(found, truth),
        "ivf_save_s": save_s,
        "ivf_load_s": load_s,
    }
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| data | pool | nlist | nprobe | build flat / IVF (s) | flat ms | flat, faiss default ms | IVF ms "
        "| IVF speed-up | IVF recall@k |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['pool']:,} | {r['nlist']} | {r['nprobe']} | {r['flat_build_s']:.2f} / "
            f"{r['ivf_build_s']:.1f} | {r['flat_ms']:.0f} | {r['flat_faiss_default_ms']:.0f} | "
            f"{r['ivf_ms']:.0f} | {r['ivf_speedup']:.1f}x | {r['ivf_recall']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="pool sizes")
    parser.add_argument("--queries", type=int, default=256, help="queries per search batch")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: default_nprobe)")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension")
    parser.add_argument(
        "--data", nargs="+", default=["lowrank", "isotropic"], choices=["lowrank", "isotropic"],
        help="pool kinds"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed searches per setting (median)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()

    hw = hardware()
    rows = []
    for n in args.sizes:
        for kind in args.data:
            rows.append(run_one(kind, n, args))
            print(f"done: {kind} {n:,} (nlist {rows[-1]['nlist']}, nprobe {rows[-1]['nprobe']})", flush=True)
    gpu = "faiss GPU" if hw["faiss_gpu"] else "no faiss GPU"
    print(f"\nExemplar index search, {args.queries} queries x top-{args.k}, {args.dim}-d, latency per batch")
    print(f"Hardware: {hw['cpu']}, {hw['cores']} cores, faiss {hw['faiss']} ({gpu}); "
          f"load average at start {hw['load_average_at_start'][0]:.1f}\n")
    print(table(rows))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"hardware": hw,
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "results": rows}
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
