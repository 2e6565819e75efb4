"""Generation: batched mop.generate.sample_continuations (left-padded) vs one sample at a time, same prompts.

    python benchmarks/generation_speed.py                      # SmolLM2, 32 samples x 64 tokens, batch 1/8/32
    python benchmarks/generation_speed.py --device cuda --dtype bfloat16 --samples 256 --batch-sizes 1 32 128

Prompts are real training prompts (persona + exemplar + context, see common.training_pairs), each sampled at
tau 0.6 with its own seed. Every sample is forced to exactly ``--new-tokens`` tokens (min_new_tokens =
max_new_tokens, no newline stop), so every batch size does the same work; batch 1 is the one-at-a-time loop.
Each batch size is also run with a single new token ("prefill" column: the prompt forward, which costs the
same per sample at any batch size and bounds the speed-up). Batch sizes are timed one after the other in one
run. Writes benchmarks/results/generation_speed.json.

``--mode stops`` measures generation as it runs for real (rows end at a newline or the end token): the Hugging
Face generate loop mop used before (``common.hf_generate_reference``: batch 8, at most 96 new tokens, every
row decoded until the batch's slowest row stops) against mop's own decode loop (rows that end leave the batch)
at batch 8 and at the default batch size with the default max_new_tokens (1.25 x the longest training
response), on the same prompts and seeds, side by side in one run: samples/s, decode steps, and mean words per
text against the real training texts. Writes benchmarks/results/generation_stops.json.

``--engine hf vllm`` measures the engines (mop.engines) side by side in one run on the main job's workload,
``mop generate --gating GATE --model gemma3-270m -c CONFIG --split test --shuffle --num-samples 200`` (default
gate: the committed benchmarks/results/fidelity_scale_gate with configs/fidelity.yaml): the same gate draws,
prompts, temperatures, seeds, max_new_tokens and stop in every engine, through
mop.generate.generate_population itself. Per engine: the engine start, samples/s and new tokens/s of the
generation (the contexts are embedded once, before), empty texts and mean words against the real training
texts. Writes
benchmarks/results/generation_engines.json (``--out`` elsewhere).

    python benchmarks/generation_speed.py --engine hf vllm --model gemma3-270m --num-samples 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import (
    RESULTS,
    SHARED_NOTE,
    Timer,
    datamodule_from_config,
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


def generate_all(model, tok, prompts, seeds, batch_size: int, new_tokens: int,
                 device: str) -> tuple[float, list]:
    from mop.generate import sample_continuations

    rows = []
    with Timer(device) as t:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            rows += sample_continuations(model, tok, chunk, [TAU] * len(chunk),
                                         seeds[start:start + batch_size],
                                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         stop=())
    return t.seconds, rows


def stops_mode(args, model, tok, prompts, seeds, hw) -> list[dict]:
    """Real stopping: the old HF generate loop vs mop's decode loop (see the module docstring)."""
    import statistics

    from common import hf_generate_reference, load_config

    from mop.data import load_population
    from mop.generate import clean_text, sample_continuations

    population = load_population(datamodule_from_config(load_config(args.config)).dataset)
    real = [len(r.response.split()) for r in population["train"]]
    longest = max(len(ids) for ids in tok([" " + r.response for r in population["train"]],
                                          add_special_tokens=False)["input_ids"])
    default_max = max(16, int(1.25 * longest) + 1)
    runs = [("before: HF generate, batch 8, max 96", "hf", 8, 96),
            ("mop decode loop, batch 8, max 96", "mop", 8, 96),
            (f"mop decode loop, batch 32, max {default_max} (defaults)", "mop", 32, default_max)]
    rows = []
    for name, kind, bs, max_new in runs:
        texts, steps = [], 0
        with Timer(args.device) as t:
            for start in range(0, len(prompts), bs):
                chunk, chunk_seeds = prompts[start:start + bs], seeds[start:start + bs]
                if kind == "hf":
                    out = hf_generate_reference(model, tok, chunk, [TAU] * len(chunk), chunk_seeds,
                                                max_new_tokens=max_new)
                else:
                    out = sample_continuations(model, tok, chunk, [TAU] * len(chunk), chunk_seeds,
                                               max_new_tokens=max_new, stop=("\n",))
                steps += max(len(r) for r in out)
                texts += [clean_text(tok.decode(r, skip_special_tokens=True)) for r in out]
        words = [len(x.split()) for x in texts]
        rows.append({"run": name, "batch_size": bs, "max_new_tokens": max_new, "seconds": t.seconds,
                     "samples_per_s": len(texts) / t.seconds, "decode_steps": steps,
                     "mean_words": statistics.mean(words), "median_words": statistics.median(words),
                     "texts": texts})
        print(f"done: {name}: {t.seconds:.1f} s", flush=True)
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
        r["same_texts_as_before"] = (sum(a == b for a, b in zip(r["texts"], rows[0]["texts"]))
                                     / len(r["texts"]))
    for r in rows:
        r["example_texts"] = r.pop("texts")[:5]
    print(f"\nGeneration with stops, {args.model} {args.dtype}, {len(prompts)} real training prompts, "
          f"tau {TAU}; real training texts: {statistics.mean(real):.1f} words on average "
          f"(median {statistics.median(real)})")
    print(hardware_line(hw) + (f"; {SHARED_NOTE}" if args.device == "cpu" else "") + "\n")
    head = ["run", "samples/s", "speed-up", "decode steps", "mean words (real: "
            f"{statistics.mean(real):.1f})", "median words", "same texts as before"]
    print(markdown_table(head, [[r["run"], f"{r['samples_per_s']:.2f}", f"**{r['speedup']:.2f}x**",
                                 r["decode_steps"], f"{r['mean_words']:.1f}", r["median_words"],
                                 f"{100 * r['same_texts_as_before']:.0f}%"] for r in rows]))
    out = args.out if args.out != RESULTS / "generation_speed.json" else RESULTS / "generation_stops.json"
    write_json(out, {"hardware": hw, "args": {k: str(v) for k, v in vars(args).items()},
                     "real_mean_words": statistics.mean(real), "real_median_words": statistics.median(real),
                     "results": rows})
    print(f"\nwrote {out}")
    return rows


def engines_mode(args, hw) -> list[dict]:
    """The engines side by side on the main job's workload (see the module docstring)."""
    import statistics
    import tempfile
    import time

    from mop.data import load_dataset_config, load_population
    from mop.embed import Embedder
    from mop.engines import load_engine
    from mop.export import GateExport
    from mop.generate import Sampling, dataset_contexts, embed_contexts, generate_population, sample_plan

    export = GateExport.from_pretrained(args.gate)
    records = dataset_contexts(args.gate_config, "test", export.config)
    sampling = Sampling(num_samples=args.num_samples, shuffle=True, seed=0)
    plan = sample_plan(records, args.num_samples, sampling.seed)
    emb = embed_contexts(export, [records[p] for p, _ in plan], Embedder(export.embedder))
    at = {p: i for i, (p, _) in enumerate(plan)}

    def context_emb(positions):
        return emb[[at[p] for p in positions]]
    real = [len(r.response.split())
            for r in load_population(load_dataset_config(args.gate_config))["train"]]
    rows = []
    for name in args.engine:
        start = time.perf_counter()
        engine = load_engine(name, args.model, dtype=args.dtype, device=args.device)
        started = time.perf_counter() - start
        new_tokens = [0]
        generate = engine.generate

        def counting(*a, _generate=generate, **kw):
            out = _generate(*a, **kw)
            new_tokens[0] += sum(map(len, out))
            return out
        engine.generate = counting
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.jsonl"
            with Timer(args.device) as t:
                generate_population(export, engine, engine.tokenizer, records, out, sampling,
                                    context_emb=context_emb, model_name=args.model, progress=False)
            texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
        engine.unload()
        words = [len(x.split()) for x in texts]
        rows.append({"engine": name, "version": engine.version, "start_s": started, "seconds": t.seconds,
                     "samples": len(texts), "samples_per_s": len(texts) / t.seconds,
                     "new_tokens": new_tokens[0],
                     "new_tok_s": new_tokens[0] / t.seconds, "empty": sum(not x for x in texts),
                     "mean_words": statistics.mean(words), "example_texts": texts[:5]})
        print(f"done: {name}: start {started:.1f} s, {t.seconds:.1f} s", flush=True)
    print(f"\nEngines, {args.model} {args.dtype}, the main job's {args.num_samples} prompts "
          f"(gate {args.gate}, {args.gate_config}, test split, shuffled, seed 0); real training texts: "
          f"{statistics.mean(real):.1f} words on average")
    print(hardware_line(hw) + (f"; {SHARED_NOTE}" if args.device == "cpu" else "") + "\n")
    head = ["engine", "engine start s", "generation s", "samples/s", "new tokens", "new tokens/s",
            "empty texts", f"mean words (real: {statistics.mean(real):.1f})"]
    print(markdown_table(head, [[f"{r['engine']} {r['version']}", f"{r['start_s']:.1f}",
                                 f"{r['seconds']:.1f}",
                                 f"{r['samples_per_s']:.2f}", r["new_tokens"], f"{r['new_tok_s']:.1f}",
                                 f"{r['empty']}/{r['samples']} ({100 * r['empty'] / r['samples']:.1f}%)",
                                 f"{r['mean_words']:.1f}"] for r in rows]))
    out = args.out if args.out != RESULTS / "generation_speed.json" else RESULTS / "generation_engines.json"
    write_json(out, {"hardware": hw, "args": {k: str(v) for k, v in vars(args).items()},
                     "real_mean_words": statistics.mean(real), "results": rows})
    print(f"\nwrote {out}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled name or local model folder")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--config", default="configs/quickstart.yaml",
                        help="config whose data and prompts to use")
    parser.add_argument("--samples", type=int, default=32, help="prompts (one sample each)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sample (forced)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--peak-size", type=int, default=None,
                        help="matmul size of the peak (1024 CPU, 8192 cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-weights", action="store_true",
                        help="the model's shape from its config.json, seeded random weights (speed only)")
    parser.add_argument("--out", type=Path, default=RESULTS / "generation_speed.json")
    parser.add_argument("--mode", choices=["forced", "stops"], default="forced",
                        help="forced: equal lengths per batch size; stops: real stopping, before vs after")
    parser.add_argument("--engine", nargs="+", choices=["hf", "vllm"], default=None,
                        help="engines mode: these engines side by side on the main job's workload")
    parser.add_argument("--gate", default=str(RESULTS / "fidelity_scale_gate"),
                        help="engines mode: the export")
    parser.add_argument("--gate-config", default="configs/fidelity.yaml",
                        help="engines mode: the config whose test split gives the contexts")
    parser.add_argument("--num-samples", type=int, default=200, help="engines mode: rows per engine")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    hw = hardware(args.device)
    if args.engine:
        return engines_mode(args, hw)
    prompts, _, source = training_pairs(args.config, args.samples, per_record=1)
    seeds = list(range(1000, 1000 + len(prompts)))
    model, tok = load_bench_lm(args.model, args.dtype, args.device, args.random_weights)
    generate_all(model, tok, prompts[:2], seeds[:2], 2, 2, args.device)  # warm-up, untimed
    if args.mode == "stops":
        return stops_mode(args, model, tok, prompts, seeds, hw)
    prompt_tokens = sum(len(ids) for ids in tok(prompts)["input_ids"])
    rows = []
    for bs in args.batch_sizes:
        prefill_s, _ = generate_all(model, tok, prompts, seeds, bs, 1, args.device)
        seconds, out = generate_all(model, tok, prompts, seeds, bs, args.new_tokens, args.device)
        lengths = {len(r) for r in out}
        assert lengths == {args.new_tokens}, f"unequal generated lengths {sorted(lengths)}"
        generated = sum(len(r) for r in out)
        rows.append({"batch_size": bs, "samples": len(out), "new_tokens": args.new_tokens, "seconds": seconds,
                     "prefill_seconds": prefill_s, "samples_per_s": len(out) / seconds,
                     "generated_tok_s": generated / seconds,
                     "decode_tok_s": generated / (seconds - prefill_s) if seconds - prefill_s > 0.05 * seconds
                     else None, "tokens": out})
        print(f"done: batch {bs}: {seconds:.1f} s ({prefill_s:.1f} s with one new token)", flush=True)
    base = rows[0]
    base_tokens = base["tokens"]
    for r in rows:  # decode = the run minus its one-token (prefill) run: None where noise swamps it
        r["speedup"] = base["seconds"] / r["seconds"]
        r["decode_speedup"] = (r["decode_tok_s"] / base["decode_tok_s"]
                               if r["decode_tok_s"] and base["decode_tok_s"] else None)
        # per-row seeds: a sample does not depend on its batch, up to float rounding of the padded batch
        r["identical_to_first"] = sum(a == b for a, b in zip(r["tokens"], base_tokens)) / len(base_tokens)
    for r in rows:
        del r["tokens"]
    counts = param_counts(model)
    peak = matmul_peak(getattr(torch, args.dtype), args.device, args.peak_size)
    for r in rows:  # model FLOPs: every prompt and generated token through the body and the head
        r["gflops"] = (2 * counts["total"] * (prompt_tokens + r["samples"] * r["new_tokens"])
                       / r["seconds"] / 1e9)
        r["pct_peak"] = 100 * r["gflops"] / peak

    print(f"\nGeneration, {args.model} {args.dtype}, {len(prompts)} real training prompts "
          f"({prompt_tokens / len(prompts):.0f} tokens on average) x {args.new_tokens} forced new tokens, "
          f"tau {TAU}")
    print(hardware_line(hw) + (f"; {SHARED_NOTE}" if args.device == "cpu" else "") + "\n")
    head = ["batch", "samples/s", "generated tok/s", "speed-up vs batch 1", "prefill s (1 token)",
            "decode tok/s", "decode speed-up", "same samples as batch 1", f"GFLOP/s (peak {peak:.0f})"]
    print(markdown_table(head, [[r["batch_size"], f"{r['samples_per_s']:.2f}", f"{r['generated_tok_s']:.1f}",
                                 f"**{r['speedup']:.2f}x**", f"{r['prefill_seconds']:.1f}",
                                 "n/a" if r["decode_tok_s"] is None else f"{r['decode_tok_s']:.1f}",
                                 "n/a" if r["decode_speedup"] is None else f"{r['decode_speedup']:.2f}x",
                                 f"{100 * r['identical_to_first']:.0f}%",
                                 f"{r['gflops']:.1f}"] for r in rows]))
    write_json(args.out, {"hardware": hw, "args": {k: str(v) for k, v in vars(args).items()},
                          "prompts": source, "params": counts, "matmul_peak_gflops": peak,
                          "prompt_tokens": prompt_tokens, "results": rows})
    print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
