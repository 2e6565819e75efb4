"""Gate + retrieval cost per training batch with a large exemplar pool (IVF index, top-k normalised Omega).

    python benchmarks/investigations/scale.py    # 1M x 384-d pool, K = 100, batch 8 and 64
    python benchmarks/investigations/scale.py --pool 100000 --batch-sizes 8 --nlist 0  # 0: the default nlist

Times mop.gating.select_candidates as training calls it (M = 4 pairs from the top-4 personas, one exploration
pair, each record masked out of its own pool) with the pool above exact_omega_max_pool (20,000, or the pool
size minus one for a smaller pool), so Omega is normalised over the omega_topk = 256 exemplars the IVF index
retrieves per persona. The pool is random "lowrank" unit vectors as in
benchmarks/investigations/index_search.py. The IVF index uses nlist 1024 / nprobe 128 by default (the same
12.5% of the pool scanned per query as the project's default nlist 4000 / nprobe 500, ~10x faster to build on
a CPU). An optional row (``--exact-batch``) shows the
exact dense normalisation over the whole pool for contrast. Memory: the process's peak RSS, and the pool /
index / per-batch temporary sizes. The LM, for comparison, reads B x (M + 1) prompts per step. Writes
benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py

from common import (  # noqa: E402
    RESULTS,
    SHARED_NOTE,
    hardware,
    hardware_line,
    markdown_table,
    peak_rss_mb,
    write_json,
)
from index_search import RANK, make_vectors  # noqa: E402


def time_batches(fn, repeats: int, after_warm_up=None) -> tuple[float, float]:
    """(median seconds per call, total seconds of the timed calls); the warm-up call is not timed, and
    ``after_warm_up()`` runs after it (to reset counters)."""
    fn()  # warm-up
    if after_warm_up is not None:
        after_warm_up()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), sum(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=1_000_000, help="exemplars in the pool")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension D")
    parser.add_argument("--personas", type=int, default=100, help="K")
    parser.add_argument("--hidden-dim", type=int, default=128, help="d")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--num-candidates", type=int, default=4, help="M")
    parser.add_argument("--omega-topk", type=int, default=256)
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (0: mop.index.default_nlist)")
    parser.add_argument("--nprobe", type=int, default=128, help="IVF lists probed (0: mop.index default)")
    parser.add_argument("--exact-batch", type=int, default=8,
                        help="batch size of the exact dense row (0: none)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per setting (median)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / faiss threads (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss

    from mop.gating import Gate, select_candidates
    from mop.index import ExemplarIndex

    faiss.omp_set_num_threads(args.threads)
    hw = hardware("cpu")
    rng = np.random.default_rng(args.seed)
    basis = rng.standard_normal((RANK, args.dim), dtype=np.float32)
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    start = time.perf_counter()
    pool = make_vectors("lowrank", args.pool, args.dim, rng, basis)
    gen_s = time.perf_counter() - start
    start = time.perf_counter()
    index = ExemplarIndex(pool, kind="ivf", nlist=args.nlist or None, nprobe=args.nprobe or None,
                          seed=args.seed)
    build_s = time.perf_counter() - start
    pool_t = torch.as_tensor(index.embeddings)  # (N, D), shares the index's frozen matrix
    gate = Gate(args.dim, args.personas, args.hidden_dim, seed=args.seed)
    personas = torch.as_tensor(make_vectors("lowrank", args.personas, args.dim, rng, basis))
    contexts = torch.as_tensor(make_vectors("lowrank", max(args.batch_sizes + [args.exact_batch]), args.dim,
                                            rng, basis))
    rss_after_build = peak_rss_mb()

    searches = {"s": 0.0}
    search = index.search

    def counted(*a, **k):
        t = time.perf_counter()
        try:
            return search(*a, **k)
        finally:
            searches["s"] += time.perf_counter() - t

    index.search = counted
    rows = []
    settings = ([(b, False) for b in args.batch_sizes]
                + ([(args.exact_batch, True)] if args.exact_batch else []))
    for batch, exact in settings:
        hx = contexts[:batch]
        exclude = [[int(j)] for j in rng.integers(0, args.pool, size=batch)]  # the record itself, in the pool

        def step():
            torch.manual_seed(0)
            cand = select_candidates(gate, hx, personas, pool_t, index, exclude, args.num_candidates,
                                     exact_max_pool=args.pool if exact else min(20_000, args.pool - 1),
                                     approx_topk=args.omega_topk,
                                     explore=True)
            cand.log_weight.sum().backward()  # the gate's backward is part of the step
            gate.zero_grad()
            return cand

        seconds, total = time_batches(step, args.repeats, after_warm_up=lambda: searches.update(s=0.0))
        search_share = searches["s"] / total  # of the timed calls only
        cand = step()
        assert cand.approximate != exact and cand.persona.shape == (batch, args.num_candidates + 1)
        assert all(int(e) not in ex for row, ex in zip(cand.exemplar.tolist(), exclude) for e in row)
        P = min(args.personas, args.num_candidates)
        temp_mb = (batch * P * args.pool * 4 if exact else batch * P * args.omega_topk * args.dim * 4) / 2**20
        rows.append({"batch": batch, "omega": "exact (dense)" if exact else f"top-{args.omega_topk} (IVF)",
                     "ms_per_batch": 1e3 * seconds, "index_search_share": search_share,
                     "per_batch_temporary_mb": temp_mb, "peak_rss_mb": peak_rss_mb()})
        print(f"done: batch {batch} {'exact' if exact else 'top-k'}: {1e3 * seconds:.0f} ms", flush=True)

    pool_mb = pool.nbytes / 2**20
    print(f"\nGate + retrieval per training batch: pool {args.pool:,} x {args.dim}-d, K = {args.personas}, "
          f"d = {args.hidden_dim}, M = {args.num_candidates} + 1 exploration pair, IVF nlist {index.nlist} "
          f"/ nprobe {index.nprobe} (built in {build_s:.0f} s), median of {args.repeats} batches incl. the "
          f"gate's backward")
    print(hardware_line(hw) + f"; {SHARED_NOTE}")
    print(f"Memory: pool embeddings {pool_mb:.0f} MB + IVF index (its own copy) ~{pool_mb:.0f} MB; peak RSS "
          f"after the build {rss_after_build:.0f} MB\n")
    print(markdown_table(["batch", "Omega normalised over", "ms / batch", "ms / record", "index search share",
                          "per-batch temporaries MB", "peak RSS MB"],
                         [[r["batch"], r["omega"], f"{r['ms_per_batch']:.0f}",
                           f"{r['ms_per_batch'] / r['batch']:.1f}", f"{100 * r['index_search_share']:.0f}%",
                           f"{r['per_batch_temporary_mb']:.0f}",
                           f"{r['peak_rss_mb']:.0f}"] for r in rows]))
    write_json(args.out, {"hardware": hw, "args": {k: str(v) for k, v in vars(args).items()},
                          "pool_generation_s": gen_s, "ivf_build_s": build_s, "nlist": index.nlist,
                          "nprobe": index.nprobe, "pool_mb": pool_mb, "rss_after_build_mb": rss_after_build,
                          "results": rows})
    print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
