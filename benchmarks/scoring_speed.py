"""Frozen-LM scoring: FrozenLMScorer vs a naive Hugging Face scorer, side by side on real training prompts.

    python benchmarks/scoring_speed.py                        # SmolLM2 + Gemma-3, fp32 + bf16, 1 thread
    python benchmarks/scoring_speed.py --pairs 400 --half-pairs 400 --device cuda --dtypes bfloat16

The (prompt, target) pairs are Rotten Tomatoes training records rendered as in training (persona + exemplar +
context, the config's prompt template; see common.training_pairs), tau = 0.6. Both scorers get the same token ids
and are timed from ids (tokenisation excluded), alternately, ``--step`` pairs at a time (default 20, half of a
quickstart training step of 8 records x (M + 1)), the first of the two swapped at every chunk, so that noise
from other jobs hits both alike.

- naive: a plain forward over right-padded batches of ``--naive-batch`` pairs in input order (unsorted),
  full-vocabulary logits, log_softmax(z / tau) in float32, gather at the target positions;
- scorer: mop.scoring.FrozenLMScorer.score_ids (length-sorted micro-batches under a token budget, output head on
  the target positions only, tempered log-likelihood in float32 chunks).

Model FLOPs (the "useful" work both must do): 2 x body params x all real tokens + 2 x head params x scored target
tokens; body = all parameters but the input embedding (and the head), attention's L^2 term ignored. GFLOP/s is
that count over the wall time, against the peak of a square matmul in the same dtype measured in the same run.
Half-precision rows use ``--half-pairs`` pairs (on a CPU without bf16 instructions bf16 matmuls are emulated and
~50x slower than fp32: the row is there to show it).
Writes benchmarks/results/scoring_speed.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import (
    RESULTS,
    SHARED_NOTE,
    Timer,
    hardware,
    hardware_line,
    markdown_table,
    matmul_peak,
    param_counts,
    training_pairs,
    write_json,
)

TAU = 0.6


def naive_score(model, prompt_ids, target_ids, tau: float, batch_size: int, device: str):
    """Per-pair log p^tau(target | prompt) the plain way; returns (values (N,), padded positions, real tokens)."""
    out, padded, real = [], 0, 0
    pad = 0
    with torch.no_grad():
        for start in range(0, len(prompt_ids), batch_size):
            seqs = [list(p) + list(t)[:-1] for p, t in zip(prompt_ids[start:start + batch_size],
                                                            target_ids[start:start + batch_size])]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
            padded += ids.numel()
            real += sum(len(s) for s in seqs)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, L, V)
            logp = torch.log_softmax(logits.float() / tau, dim=-1)  # (B, L, V) float32
            for b, (p, t) in enumerate(zip(prompt_ids[start:start + batch_size],
                                           target_ids[start:start + batch_size])):
                pos = torch.arange(len(p) - 1, len(p) - 1 + len(t), device=device)
                out.append(logp[b, pos, torch.tensor(t, device=device)].sum())
            del logits, logp
    return torch.stack(out).cpu(), padded, real


def scorer_padding(scorer, prompt_ids, target_ids, step: int) -> tuple[int, int]:
    """Padded positions and real tokens of the scorer's micro-batches (one call per step of ``step`` pairs)."""
    padded = real = 0
    for start in range(0, len(prompt_ids), step):
        p, t = prompt_ids[start:start + step], target_ids[start:start + step]
        lengths = [len(a) + len(b) - 1 for a, b in zip(p, t)]
        for rows in scorer._micro_batches(list(range(len(p))), lengths):
            padded += len(rows) * max(lengths[r] for r in rows)
            real += sum(lengths[r] for r in rows)
    return padded, real


def run_model(name: str, dtype_name: str, args, prompts, targets, reference: dict) -> dict:
    from mop.assets import load_lm
    from mop.scoring import FrozenLMScorer

    dtype = getattr(torch, dtype_name)
    model, tok = load_lm(name, dtype=dtype_name, device=args.device)
    scorer = FrozenLMScorer(model, tok, target_prefix=" ", max_prompt_tokens=args.max_prompt_tokens,
                            max_target_tokens=args.max_target_tokens, max_batch_tokens=args.max_batch_tokens)
    half = dtype in (torch.bfloat16, torch.float16)
    n = min(len(prompts), args.half_pairs if half and args.half_pairs else len(prompts))
    enc = scorer.encode(prompts[:n], targets[:n])
    pids, tids = enc.prompt_ids, enc.target_ids
    # warm-up (allocator, kernels), untimed
    scorer.score_ids(pids[:2], tids[:2], TAU)
    naive_score(model, pids[:2], tids[:2], TAU, 2, args.device)

    t_naive, t_scorer = Timer(args.device), Timer(args.device)
    naive_vals, scorer_vals, naive_pad, naive_real = [], [], 0, 0
    for k, start in enumerate(range(0, n, args.step)):  # alternate, swapping which goes first at every chunk
        sl = slice(start, start + args.step)
        for which in (("naive", "scorer") if k % 2 == 0 else ("scorer", "naive")):
            if which == "naive":
                with t_naive:
                    vals, padded, real = naive_score(model, pids[sl], tids[sl], TAU, args.naive_batch, args.device)
                naive_vals.append(vals)
                naive_pad, naive_real = naive_pad + padded, naive_real + real
            else:
                with t_scorer:
                    scorer_vals.append(scorer.score_ids(pids[sl], tids[sl], TAU).cpu())
    naive_ll, scorer_ll = torch.cat(naive_vals).double(), torch.cat(scorer_vals).double()
    s_pad, s_real = scorer_padding(scorer, pids, tids, args.step)
    assert s_real == naive_real
    target_tokens = sum(len(t) for t in tids)
    counts = param_counts(model)
    flops = 2 * counts["body"] * naive_real + 2 * counts["head"] * target_tokens
    peak = matmul_peak(dtype, args.device, args.peak_size)
    row = {
        "model": name, "dtype": dtype_name, "pairs": n, "target_tokens": target_tokens, "total_tokens": naive_real,
        "params": counts, "naive_s": t_naive.seconds, "scorer_s": t_scorer.seconds,
        "naive_target_tok_s": target_tokens / t_naive.seconds, "scorer_target_tok_s": target_tokens / t_scorer.seconds,
        "naive_total_tok_s": naive_real / t_naive.seconds, "scorer_total_tok_s": naive_real / t_scorer.seconds,
        "speedup": t_naive.seconds / t_scorer.seconds,
        "naive_pad_pct": 100 * (1 - naive_real / naive_pad), "scorer_pad_pct": 100 * (1 - s_real / s_pad),
        "max_abs_ll_diff": float((naive_ll - scorer_ll).abs().max()),
        "naive_gflops": flops / t_naive.seconds / 1e9, "scorer_gflops": flops / t_scorer.seconds / 1e9,
        "matmul_peak_gflops": peak, "mean_ll_per_token": float(scorer_ll.sum() / target_tokens),
    }
    row["scorer_pct_peak"] = 100 * row["scorer_gflops"] / peak
    if not half:
        reference[name] = (scorer_ll, tids)
    elif name in reference:  # bf16 vs fp32 on the same pairs (the first n)
        ref_ll, ref_tids = reference[name]
        assert ref_tids[:n] == tids, "bf16 and fp32 tokenise alike"
        row["mean_token_ll_diff_vs_fp32"] = float((scorer_ll - ref_ll[:n]).sum().abs() / target_tokens)
        row["max_pair_token_ll_diff_vs_fp32"] = float(
            ((scorer_ll - ref_ll[:n]).abs() / torch.tensor([len(t) for t in tids])).max())
    del model, scorer
    return row


def table(rows: list[dict]) -> str:
    head = ["model", "dtype", "pairs", "naive tok/s (target / total)", "scorer tok/s (target / total)",
            "speed-up", "pad % naive / scorer", "max abs LL diff", "bf16 - fp32 mean LL/token",
            "GFLOP/s naive / scorer (matmul peak)", "scorer MFU"]
    out = []
    for r in rows:
        diff = r.get("mean_token_ll_diff_vs_fp32")
        out.append([r["model"], r["dtype"], r["pairs"],
                    f"{r['naive_target_tok_s']:.1f} / {r['naive_total_tok_s']:.0f}",
                    f"{r['scorer_target_tok_s']:.1f} / {r['scorer_total_tok_s']:.0f}",
                    f"**{r['speedup']:.2f}x**", f"{r['naive_pad_pct']:.0f} / {r['scorer_pad_pct']:.0f}",
                    f"{r['max_abs_ll_diff']:.1e}", "-" if diff is None else f"{diff:.4f}",
                    f"{r['naive_gflops']:.1f} / {r['scorer_gflops']:.1f} ({r['matmul_peak_gflops']:.1f})",
                    f"{r['scorer_pct_peak']:.0f}%"])

    return markdown_table(head, out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"],
                        help="bundled names or local model folders")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--config", default="configs/quickstart.yaml", help="config whose data and prompts to use")
    parser.add_argument("--pairs", type=int, default=40, help="(prompt, target) pairs per model (fp32)")
    parser.add_argument("--half-pairs", type=int, default=None,
                        help="pairs for bf16/fp16 rows (default: 5 on CPU, --pairs on cuda)")
    parser.add_argument("--step", type=int, default=20,
                        help="pairs per timed call (half a quickstart training step, B x (M + 1) = 40)")
    parser.add_argument("--naive-batch", type=int, default=8, help="pairs per naive forward")
    parser.add_argument("--max-batch-tokens", type=int, default=4096, help="scorer micro-batch token budget")
    parser.add_argument("--max-prompt-tokens", type=int, default=192)
    parser.add_argument("--max-target-tokens", type=int, default=64)
    parser.add_argument("--peak-size", type=int, default=None, help="matmul size of the peak (1024 CPU, 8192 cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "scoring_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.half_pairs is None:
        args.half_pairs = args.pairs if args.device.startswith("cuda") else min(5, args.pairs)

    hw = hardware(args.device)
    prompts, targets, source = training_pairs(args.config, args.pairs)
    rows, reference = [], {}
    for name in args.models:
        for dtype in args.dtypes:
            rows.append(run_model(name, dtype, args, prompts, targets, reference))
            r = rows[-1]
            print(f"done: {name} {dtype}: {r['speedup']:.2f}x ({r['naive_s']:.0f} s naive, "
                  f"{r['scorer_s']:.0f} s scorer)", flush=True)
    print(f"\nFrozen-LM scoring of {args.pairs} Rotten Tomatoes training pairs ({args.config}), tau {TAU}, "
          f"naive batches of {args.naive_batch}, scorer budget {args.max_batch_tokens} tokens")
    print(hardware_line(hw) + (f"; {SHARED_NOTE}" if args.device == "cpu" else "") + "\n")
    print(table(rows))
    write_json(args.out, {"hardware": hw, "args": {k: str(v) for k, v in vars(args).items()}, "pairs": source,
                          "results": rows})
    print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
