"""Frozen-LM scoring: FrozenLMScorer vs a naive Hugging Face scorer, side by side on real training prompts.

    python benchmarks/scoring_speed.py                        # SmolLM2 + Gemma-3, fp32 + bf16, 1 thread
    python benchmarks/scoring_speed.py --pairs 400 --half-pairs 400 --device cuda --dtypes bfloat16

The (prompt, target) pairs are Rotten Tomatoes training records rendered as in training (persona + exemplar +
context, the config's prompt template; see common.training_pairs), tau = 0.6. Both scorers get the same token
ids and are timed from ids (tokenisation excluded), alternately, ``--step`` pairs at a time (default 20, half
of a quickstart training step of 8 records x (M + 1)), the first of the two swapped at every chunk, so that
noise from other jobs hits both alike.

- naive: a plain forward over right-padded batches of ``--naive-batch`` pairs in input order (unsorted),
  full-vocabulary logits, log_softmax(z / tau) in float32, gather at the target positions;
- scorer: mop.scoring.FrozenLMScorer.score_ids (length-sorted micro-batches under a token budget, output head
  on the target positions only, tempered log-likelihood in float32 chunks).

Model FLOPs (the "useful" work both must do): 2 x body params x all real tokens + 2 x head params x scored
target tokens; body = all parameters but the input embedding (and the head), attention's L^2 term ignored.
GFLOP/s is that count over the wall time, against the peak of a square matmul in the same dtype measured in
the same run.
Half-precision rows use ``--half-pairs`` pairs (on a CPU without bf16 instructions bf16 matmuls are emulated
and ~50x slower than fp32: the row is there to show it).
Writes benchmarks/results/scoring_speed.json.

``--workload epoch`` (prefix sharing, issue 12): the pair stream of the first ``--steps`` training steps of a
quickstart epoch, as mop.module selects it (mop.gating.select_candidates: top-M pairs + the exploration pair,
seeded), from the config's artifacts (``--artifacts-dir``; built with keyword personas if absent), for an
untrained Gate and a trained-like one (pi ~0.97 on one persona, see _trained_like_gate). One score_ids call
per step, as in training; naive, plain FrozenLMScorer(share_prefixes=False) and prefix-shared FrozenLMScorer
(its prefix cache kept across the steps, cold at the start) take turns, the order rotated every step, at each
``--thread-counts``. Reports pairs/s, decoder tokens run against all tokens and against the token trie of the
whole timed stream (the most sharing allows), FLOPs (naive: full head at every position; scorers: head at
target positions) against that bound, GFLOP/s against a matmul peak measured in the run, and the largest
log-likelihood differences. Results go under "prefix_sharing" in ``--out`` (other keys kept), after every row.

    python benchmarks/scoring_speed.py --workload epoch --steps 2 --thread-counts 1 2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from common import (
    RESULTS,
    SHARED_NOTE,
    Timer,
    hardware,
    hardware_line,
    load_bench_lm,
    markdown_table,
    matmul_peak,
    param_counts,
    training_pairs,
    write_json,
)

TAU = 0.6


def naive_score(model, prompt_ids, target_ids, tau: float, batch_size: int, device: str):
    """Per-pair log p^tau(target | prompt) the plain way; returns (values (N,), padded positions, real
    tokens)."""
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
    """Padded positions and real tokens of the scorer's micro-batches (one call per step of ``step``
    pairs)."""
    padded = real = 0
    for start in range(0, len(prompt_ids), step):
        p, t = prompt_ids[start:start + step], target_ids[start:start + step]
        lengths = [len(a) + len(b) - 1 for a, b in zip(p, t)]
        for rows in scorer._micro_batches(list(range(len(p))), lengths):
            padded += len(rows) * max(lengths[r] for r in rows)
            real += sum(lengths[r] for r in rows)
    return padded, real


def run_model(name: str, dtype_name: str, args, prompts, targets, reference: dict) -> dict:
    from mop.scoring import FrozenLMScorer

    dtype = getattr(torch, dtype_name)
    model, tok = load_bench_lm(name, dtype_name, args.device, args.random_weights)
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
                    vals, padded, real = naive_score(model, pids[sl], tids[sl], TAU, args.naive_batch,
                                                     args.device)
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
        "model": name, "dtype": dtype_name, "pairs": n, "target_tokens": target_tokens,
        "total_tokens": naive_real,
        "params": counts, "naive_s": t_naive.seconds, "scorer_s": t_scorer.seconds,
        "naive_target_tok_s": target_tokens / t_naive.seconds,
        "scorer_target_tok_s": target_tokens / t_scorer.seconds,
        "naive_total_tok_s": naive_real / t_naive.seconds,
        "scorer_total_tok_s": naive_real / t_scorer.seconds,
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


# ------------------------------------------------------------------------------------------------------------
# --workload epoch: the pair stream of a quickstart training epoch, naive vs plain scorer vs prefix-shared
# scorer
def _trained_like_gate(gate, hx, hg, target_pi: float = 0.97):
    """Rank-1 additions that put pi on one persona k* for every context, as training does today: W_x += v m^T,
    W_g += a v g*^T (m: mean context embedding, g*: persona k*'s embedding, v: a fixed unit vector), with a
    raised until the mean pi_k* over the contexts reaches ``target_pi``. Exemplar queries then also follow v,
    so records share their exemplars much more than with the untrained gate."""
    import copy

    gate = copy.deepcopy(gate)
    k_star = 0
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(gate.hidden_dim, generator=gen)
    v /= v.norm()
    m = hx.mean(0)
    m = m / m.norm()
    base_x, base_g = gate.W_x.weight.detach().clone(), gate.W_g.weight.detach().clone()
    scale = 1.0
    for _ in range(40):
        with torch.no_grad():
            gate.W_x.weight.copy_(base_x + scale * torch.outer(v, m))
            gate.W_g.weight.copy_(base_g + scale * torch.outer(v, hg[k_star]))
            pi = gate.log_pi(hx, hg).exp()[:, k_star].mean()
        if pi >= target_pi:
            break
        scale *= 1.5
    return gate, {"persona": k_star, "scale": scale, "mean_pi_k_star": float(pi)}


def epoch_streams(args) -> tuple[dict, dict]:
    """Per gate ("untrained", "trained"): the steps of a quickstart epoch, each a list of (prompt, target)
    pairs as mop.module.MixtureOfPersonas.mixture_loss selects them (select_candidates: top-M + exploration
    pair)."""
    from common import datamodule_from_config, load_config

    from mop.gating import Gate, select_candidates
    from mop.prompts import DEFAULT_TEMPLATE, render_prompt

    config = load_config(args.config)
    model_cfg = config.get("model") or {}
    data_cfg = config.get("data") or {}
    overrides = {"artifacts_dir": args.artifacts_dir} if args.artifacts_dir else {}
    dm = datamodule_from_config(config, **overrides)
    built_personas = "the config's (llm)"
    if not (dm.artifact_path / "meta.json").exists():  # not built: keyword personas need no LLM
        dm = datamodule_from_config(config, personas={"synthesizer": "keywords"}, **overrides)
        built_personas = "keywords (the config's LLM personas were not built)"
    dm.prepare_data()
    dm.setup()
    art = dm.artifacts
    train = art.population["train"]
    template = model_cfg.get("prompt_template", DEFAULT_TEMPLATE)
    M = int(model_cfg.get("num_candidates", 4))
    batch = int(data_cfg.get("batch_size", 8))
    hx_all = torch.as_tensor(art.context_emb["train"], dtype=torch.float32)
    hg = torch.as_tensor(art.persona_emb, dtype=torch.float32)
    pool = torch.as_tensor(art.pool_emb, dtype=torch.float32)
    gate = Gate(art.embed_dim, len(art.persona_texts), hidden_dim=int(model_cfg.get("hidden_dim", 128)),
                init_tau=float(model_cfg.get("init_tau", 0.6)), seed=0)
    trained, trained_info = _trained_like_gate(gate, hx_all, hg)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    streams, info = {}, {"artifacts": str(dm.artifact_path), "personas": built_personas,
                         "num_personas": len(art.persona_texts), "pool": len(art.pool), "M": M,
                         "batch": batch, "trained_gate": trained_info}
    for name, g in (("untrained", gate), ("trained", trained)):
        steps, pis = [], []
        gen = torch.Generator().manual_seed(0)
        for s in range(args.steps):
            rows = order[s * batch:(s + 1) * batch]
            idx = torch.tensor(rows)
            with torch.no_grad():
                cand = select_candidates(g, hx_all[idx], hg, pool, art.index,
                                         [dm.exclude["train"][r] for r in rows],
                                         M, explore=True, generator=gen)
            pis.append(float(cand.log_pi.exp().max(-1).values.mean()))
            pairs = []
            for b, m in (cand.exemplar >= 0).nonzero().tolist():
                record = train[rows[b]]
                pairs.append((render_prompt(template, art.population.spec.context_template, record,
                                            art.persona_texts[int(cand.persona[b, m])],
                                            art.pool[int(cand.exemplar[b, m])]), record.response,
                              int(cand.persona[b, m]), int(cand.exemplar[b, m])))
            steps.append(pairs)
        info[name] = {"mean_max_pi": sum(pis) / len(pis),
                      "distinct_personas_per_step": sum(len({p[2] for p in st}) for st in steps) / len(steps),
                      "distinct_persona_exemplar_per_step":
                          sum(len({(p[2], p[3]) for p in st}) for st in steps) / len(steps),
                      "pairs_per_step": sum(len(st) for st in steps) / len(steps)}
        streams[name] = [[(p[0], p[1]) for p in st] for st in steps]
    return streams, info


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def trie_tokens(seqs) -> int:
    """Distinct prefixes (nodes of the token trie) of ``seqs``: the tokens a perfectly shared forward runs."""
    root: dict = {}
    n = 0
    for s in seqs:
        node = root
        for t in s:
            nxt = node.get(t)
            if nxt is None:
                nxt = node[t] = {}
                n += 1
            node = nxt
    return n


def run_epoch_model(name: str, args, streams: dict, peak: dict, on_row=None) -> list[dict]:
    from mop.scoring import FrozenLMScorer

    model, tok = load_bench_lm(name, "float32", args.device, args.random_weights)
    counts = param_counts(model)
    kw = dict(target_prefix=" ", max_prompt_tokens=args.max_prompt_tokens,
              max_target_tokens=args.max_target_tokens, max_batch_tokens=args.max_batch_tokens)
    encoder = FrozenLMScorer(model, tok, share_prefixes=False, **kw)
    rows = []
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        for gate_name, steps in streams.items():
            enc = [encoder.encode([p for p, _ in st], [t for _, t in st]) for st in steps]
            plain = FrozenLMScorer(model, tok, share_prefixes=False, **kw)
            shared = FrozenLMScorer(model, tok, share_prefixes=True, prefix_cache_mb=args.prefix_cache_mb,
                                    **kw)
            # warm-up (allocator, kernels) on 2 pairs of another step's records, untimed; the shared scorer's
            # prefix cache is then cleared so that the timed stream starts cold, as a training run does
            wp, wt = enc[0].prompt_ids[:2], enc[0].target_ids[:2]
            naive_score(model, wp, wt, TAU, 2, args.device)
            plain.score_ids(wp, wt, TAU)
            shared.score_ids(wp, wt, TAU)
            shared.clear_prefix_cache()
            for sc in (plain, shared):
                sc.tokens_run = sc.tokens_real = 0
            timers = {k: Timer(args.device) for k in ("naive", "plain", "shared")}
            values = {k: [] for k in timers}
            for s, e in enumerate(enc):  # one scoring call per training step, the order rotated every step
                names = ["naive", "plain", "shared"]
                names = names[s % 3:] + names[:s % 3]
                for which in names:
                    with timers[which]:
                        if which == "naive":
                            v = naive_score(model, e.prompt_ids, e.target_ids, TAU, args.naive_batch,
                                            args.device)[0]
                        else:
                            v = (plain if which == "plain" else shared).score_ids(e.prompt_ids, e.target_ids,
                                                                                   TAU)
                    values[which].append(v.detach().cpu().double())
            vals = {k: torch.cat(v) for k, v in values.items()}
            seqs = [list(p) + list(t)[:-1] for e in enc for p, t in zip(e.prompt_ids, e.target_ids)]
            n_pairs = len(seqs)
            all_tokens = sum(len(s) for s in seqs)
            target_tokens = sum(len(t) for e in enc for t in e.target_ids)
            step_trie = sum(trie_tokens([list(p) + list(t)[:-1] for p, t in zip(e.prompt_ids, e.target_ids)])
                            for e in enc)
            stream_trie = trie_tokens(seqs)
            body, head = counts["body"], counts["head"]
            flops = {"naive": 2 * (body + head) * all_tokens,  # full logits at every position
                     "plain": 2 * body * plain.tokens_run + 2 * head * target_tokens,
                     "shared": 2 * body * shared.tokens_run + 2 * head * target_tokens,
                     "bound": 2 * body * stream_trie + 2 * head * target_tokens,
                     "bound_per_step": 2 * body * step_trie + 2 * head * target_tokens}
            row = {"model": name, "threads": threads, "gate": gate_name, "steps": len(enc), "pairs": n_pairs,
                   "all_tokens": all_tokens, "target_tokens": target_tokens,
                   "trie_tokens_per_step": step_trie, "trie_tokens_stream": stream_trie,
                   "tokens_run_plain": plain.tokens_run, "tokens_real_plain": plain.tokens_real,
                   "tokens_run_shared": shared.tokens_run, "tokens_real_shared": shared.tokens_real,
                   "prefix_cache": {k: v for k, v in shared.prefix_cache_info.items() if k != "lengths"},
                   "params": counts, "flops": flops, "matmul_peak_gflops": peak[threads]}
            for k, t in timers.items():
                row[f"{k}_s"] = t.seconds
                row[f"{k}_pairs_s"] = n_pairs / t.seconds
                row[f"{k}_gflops"] = flops[k] / t.seconds / 1e9
            row["speedup_shared_vs_naive"] = timers["naive"].seconds / timers["shared"].seconds
            row["speedup_shared_vs_plain"] = timers["plain"].seconds / timers["shared"].seconds
            row["speedup_plain_vs_naive"] = timers["naive"].seconds / timers["plain"].seconds
            row["flop_bound_speedup_vs_naive"] = flops["naive"] / flops["bound"]
            row["flop_efficiency_shared"] = flops["bound"] / flops["shared"]  # 1 = no position run in vain
            row["time_efficiency_shared"] = (row["speedup_shared_vs_naive"]
                                             / row["flop_bound_speedup_vs_naive"])
            row["max_abs_ll_diff_shared_vs_plain"] = float((vals["shared"] - vals["plain"]).abs().max())
            row["max_abs_ll_diff_shared_vs_naive"] = float((vals["shared"] - vals["naive"]).abs().max())
            row["max_abs_ll_diff_plain_vs_naive"] = float((vals["plain"] - vals["naive"]).abs().max())
            row["load_average_after"] = os.getloadavg()
            row["commit"] = _commit()
            rows.append(row)
            if on_row is not None:
                on_row(row)
            print(f"done: {name} {threads} thread(s) {gate_name}: shared "
                  f"{row['speedup_shared_vs_naive']:.2f}x naive, {row['speedup_shared_vs_plain']:.2f}x plain "
                  f"(bound {row['flop_bound_speedup_vs_naive']:.2f}x naive); load "
                  f"{row['load_average_after'][0]:.1f}", flush=True)
    del model
    return rows


def epoch_table(rows: list[dict]) -> str:
    head = ["model", "threads", "gate", "pairs", "pairs/s naive / plain / shared", "shared vs naive (bound)",
            "shared vs plain", "decoder tokens plain / shared / trie (all)", "FLOP eff.", "time eff.",
            "GFLOP/s naive / plain / shared (peak)", "max LL diff shared-plain / shared-naive"]
    out = []
    for r in rows:
        out.append([r["model"], r["threads"], r["gate"], r["pairs"],
                    f"{r['naive_pairs_s']:.2f} / {r['plain_pairs_s']:.2f} / {r['shared_pairs_s']:.2f}",
                    f"**{r['speedup_shared_vs_naive']:.2f}x** ({r['flop_bound_speedup_vs_naive']:.2f}x)",
                    f"{r['speedup_shared_vs_plain']:.2f}x",
                    f"{r['tokens_run_plain']} / {r['tokens_run_shared']} / {r['trie_tokens_stream']} "
                    f"({r['all_tokens']})",
                    f"{100 * r['flop_efficiency_shared']:.0f}%", f"{100 * r['time_efficiency_shared']:.0f}%",
                    f"{r['naive_gflops']:.1f} / {r['plain_gflops']:.1f} / {r['shared_gflops']:.1f} "
                    f"({r['matmul_peak_gflops']:.1f})",
                    f"{r['max_abs_ll_diff_shared_vs_plain']:.1e} / "
                    f"{r['max_abs_ll_diff_shared_vs_naive']:.1e}"])
    return markdown_table(head, out)


def main_epoch(args) -> list[dict]:
    hw = hardware(args.device)
    streams, info = epoch_streams(args)
    peak = {}
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        peak[threads] = matmul_peak(torch.float32, args.device, args.peak_size)
    rows = []
    payload = json.loads(args.out.read_text()) if args.out.exists() else {}
    done: list[dict] = []

    def save(row: dict) -> None:  # after each row, so a long run keeps what it measured
        done.append(row)
        payload["prefix_sharing"] = {"hardware": hw, "args": {k: str(v) for k, v in vars(args).items()},
                                     "workload": info, "results": done,
                                     "complete": len(done) == len(args.models) * len(args.thread_counts) * 2}
        write_json(args.out, payload)

    for name in args.models:
        rows.extend(run_epoch_model(name, args, streams, peak, on_row=save))
    print(f"\nFrozen-LM scoring of the first {args.steps} steps of a quickstart epoch ({args.config}), as "
          f"the gate selects pairs (top-M + exploration), tau {TAU}, float32, one score_ids call per step; "
          f"naive batches of {args.naive_batch}, scorer budget {args.max_batch_tokens} tokens, prefix cache "
          f"{args.prefix_cache_mb} MB")
    print(hardware_line(hw) + (f"; {SHARED_NOTE}" if args.device == "cpu" else "") + "\n")
    print(epoch_table(rows))
    print(f"\nwrote {args.out}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"],
                        help="bundled names or local model folders")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--config", default="configs/quickstart.yaml",
                        help="config whose data and prompts to use")
    parser.add_argument("--pairs", type=int, default=40, help="(prompt, target) pairs per model (fp32)")
    parser.add_argument("--half-pairs", type=int, default=None,
                        help="pairs for bf16/fp16 rows (default: 5 on CPU, --pairs on cuda)")
    parser.add_argument("--step", type=int, default=20,
                        help="pairs per timed call (half a quickstart training step, B x (M + 1) = 40)")
    parser.add_argument("--naive-batch", type=int, default=8, help="pairs per naive forward")
    parser.add_argument("--max-batch-tokens", type=int, default=4096, help="scorer micro-batch token budget")
    parser.add_argument("--max-prompt-tokens", type=int, default=192)
    parser.add_argument("--max-target-tokens", type=int, default=64)
    parser.add_argument("--peak-size", type=int, default=None,
                        help="matmul size of the peak (1024 CPU, 8192 cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-weights", action="store_true",
                        help="each model's shape from its config.json, seeded random weights (speed only; "
                             "see benchmarks/model_shapes.py)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scoring_speed.json")
    parser.add_argument("--workload", choices=["pairs", "epoch"], default="pairs",
                        help="pairs: --pairs random training pairs, fp32 + bf16 (the original rows); epoch: "
                             "the quickstart epoch's pair stream, naive vs plain vs prefix-shared (written "
                             "under 'prefix_sharing' in --out)")
    parser.add_argument("--steps", type=int, default=2, help="epoch: training steps (score_ids calls) timed")
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2], help="epoch: torch threads")
    parser.add_argument("--artifacts-dir", default=None,
                        help="epoch: artifacts folder of the config (default: the config's); built with "
                             "keyword personas when the config's are not there")
    parser.add_argument("--prefix-cache-mb", type=float, default=256.0,
                        help="epoch: the shared scorer's budget")
    args = parser.parse_args(argv)
    if args.workload == "epoch":
        return main_epoch(args)
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
