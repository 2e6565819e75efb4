"""Where the fidelity gap lies: length, or what the texts say (issue 13).

Every generated Rotten Tomatoes set is 33-41 words long against the population's 19, and 30-41% of generated
reviews are one sentence against 88% of the real ones. Two questions, answered on the committed sets without
generating anything:

``cut``: does matching the population's length close the gap? Each text of a committed set is cut at a
sentence end, the same rule for every method, decided from the training responses alone (never from a metric):

- ``first``: the first sentence;
- ``budget``: as many sentences as a count drawn (seeded, by row position, so every method's row i gets the
  same count) from the training responses' sentence counts.

Cutting a sampled text at a sentence end is what stopping the generation there would have written: a row's
tokens depend only on its prompt, temperature and seed (``mop.generate.sample_continuations``), so the prefix
is the same. The cut sets land in ``WORKDIR/samples`` under the names ``benchmarks/fidelity.py`` reads, so
its evaluate step scores them with every interval:

    python benchmarks/fidelity_gap.py cut --samples benchmarks/results/fidelity_scale_samples \\
        --gate benchmarks/results/fidelity_scale_gate --policy budget --workdir runs/rt_cut_budget
    python benchmarks/fidelity.py --config configs/fidelity.yaml \\
        --gate benchmarks/results/fidelity_scale_gate \\
        --workdir runs/rt_cut_budget --num-samples 1000 --embedders minilm-l6 --steps evaluate \\
        --runs smollm2-135m:mop smollm2-135m:zerogen ... --output benchmarks/results/fidelity_gap_budget

``decompose``: FID = ||mu_r - mu_g||^2 (the mean term: what the texts are about, on average) + the covariance
term (how they spread), and FID extrapolated to infinitely many texts (``mop.evaluate.fid_infinity``: plain
FID at n = 1,000 is biased up by about c / n, and c is nearly the same for every set), for every set of a
folder and for the real training texts, against the same real test texts as ``benchmarks/fidelity.py``:

    python benchmarks/fidelity_gap.py decompose --config configs/fidelity.yaml \\
        --gate benchmarks/results/fidelity_scale_gate --samples benchmarks/results/fidelity_scale_samples \\
        --num-samples 1000 --output benchmarks/results/fidelity_gap_decompose

``blocks``: can a validation split of B texts tell the sets apart? The temperatures of
``benchmarks/fidelity.py --temperature-grid`` are chosen by FID on 100-200 val texts. FID on each of the n / B
disjoint blocks of B consecutive contexts (row i of every set and of the real texts belongs to context i), its
mean and std per set, and for every pair of sets the share of blocks that order the pair as FID on all n texts
does:

    python benchmarks/fidelity_gap.py blocks --config configs/fidelity.yaml \\
        --gate benchmarks/results/fidelity_scale_gate --samples benchmarks/results/fidelity_scale_samples \\
        benchmarks/results/fidelity_scale_gt_samples --model smollm2-135m --num-samples 1000 --block 100 \\
        --output benchmarks/results/fidelity_gap_blocks

``axes``: where the covariance term comes from. Each set's variance along the real test texts' principal axes
(over the real variance) and its mean shift there, and the share of its total variance inside the real top-50
PCA subspace (the reference: real training texts):

    python benchmarks/fidelity_gap.py axes --config configs/fidelity.yaml \\
        --gate benchmarks/results/fidelity_scale_gate --samples benchmarks/results/fidelity_scale_samples \\
        --model smollm2-135m --num-samples 1000 --output benchmarks/results/fidelity_gap_axes

``paired``: is one set closer to the real texts than another, on the same contexts? The per-set intervals of
``benchmarks/fidelity.py`` resample each set on its own, so two of them can overlap while one set is closer on
nearly every resample of the contexts. --against's FID and KL-cosine minus each other set's (below 0:
--against is closer), with a paired bootstrap interval (``mop.evaluate.paired_difference``: each replicate
resamples the contexts, the same ones for the real texts and both sets). Sets of several folders are named
FOLDER/NAME:

    python benchmarks/fidelity_gap.py paired --config configs/fidelity.yaml \\
        --gate benchmarks/results/fidelity_scale_gate --samples benchmarks/results/fidelity_scale_samples \\
        --model smollm2-135m --num-samples 1000 --against smollm2-135m__mop \\
        --output benchmarks/results/fidelity_gap_paired
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import lm_file_name  # noqa: E402

# a sentence ends at a run of . ! ? (closing quotes or brackets kept with it) followed by whitespace or the
# end of the text
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


def sentence_ends(text: str) -> list[int]:
    """The character offsets just past each sentence end of ``text`` (stripped)."""
    return [m.end() for m in SENTENCE_END.finditer(text.strip())]


def count_sentences(text: str) -> int:
    """Sentences in ``text``: its sentence ends before the last character, plus one (an unterminated tail is a
    sentence)."""
    text = text.strip()
    return sum(e < len(text) for e in sentence_ends(text)) + 1


def cut_sentences(text: str, k: int) -> str:
    """``text`` cut after its k-th sentence end (whole, if it has fewer)."""
    text = text.strip()
    ends = sentence_ends(text)
    return text[:ends[k - 1]].strip() if len(ends) >= k else text


def read_set(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def sets_in(folder: Path) -> dict[str, Path]:
    """``model__method`` -> file, for the ``.jsonl`` and ``.jsonl.gz`` sets of a folder."""
    out = {}
    for p in sorted(folder.iterdir()):
        for suffix in (".jsonl.gz", ".jsonl"):
            if p.name.endswith(suffix):
                out[p.name[: -len(suffix)]] = p
    if not out:
        raise SystemExit(f"no .jsonl(.gz) sets in {folder}")
    return out


def sentence_budget(gate: Path, n: int, seed: int):
    """n sentence counts drawn from the export's training responses (its exemplars), and their
    distribution."""
    import numpy as np

    from mop.export import load_export

    counts = np.array([count_sentences(e.response) for e in load_export(gate).exemplars])
    draws = np.random.default_rng(seed).choice(counts, size=n)
    return [int(k) for k in draws], {"one_sentence_share": round(float((counts == 1).mean()), 3),
                                     "mean_sentences": round(float(counts.mean()), 2)}


def cut(args) -> int:
    samples, workdir = Path(args.samples), Path(args.workdir)
    out_dir = workdir / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = {name: read_set(path) for name, path in sets_in(samples).items()}
    n = max(len(rows) for rows in sets.values())
    budget, dist = sentence_budget(Path(args.gate), n, args.seed)
    print(f"[gap] training responses: {dist['one_sentence_share']:.1%} one sentence, "
          f"{dist['mean_sentences']} sentences on average; policy {args.policy}")
    report = {"policy": args.policy, "seed": args.seed, "samples": str(samples), "training": dist, "sets": {}}
    for name, rows in sets.items():
        before = [r["text"] for r in rows]
        after = [cut_sentences(t, 1 if args.policy == "first" else budget[i]) for i, t in enumerate(before)]
        with open(out_dir / f"{name}.jsonl", "w") as f:
            for row, text in zip(rows, after):
                f.write(json.dumps({**row, "text": text, "uncut_text": row["text"]}) + "\n")
        n_cut = sum(a != b.strip() for a, b in zip(after, before))
        stats = {"rows": len(rows), "cut_share": round(n_cut / len(rows), 3),
                 "words_before": round(sum(len(t.split()) for t in before) / len(rows), 1),
                 "words_after": round(sum(len(t.split()) for t in after) / len(rows), 1),
                 "one_sentence_before": round(sum(count_sentences(t) == 1 for t in before) / len(rows), 3)}
        report["sets"][name] = stats
        print(f"[gap] {name}: {stats['cut_share']:.1%} of {stats['rows']} texts cut, words "
              f"{stats['words_before']} -> {stats['words_after']} (one sentence before: "
              f"{stats['one_sentence_before']:.1%})")
    (workdir / "cut.json").write_text(json.dumps(report, indent=1))
    return 0


def load_real(args):
    """(embed, real texts, their L2-normalised embeddings, real training texts): the same real test texts, of
    the same shuffled contexts, as ``benchmarks/fidelity.py`` (row i of a set belongs to context i); ``embed``
    maps (texts, name) to L2-normalised embeddings (cached)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fidelity import real_sets

    from mop.evaluate import _encode, _make_embedder, l2_normalise

    embedder = _make_embedder(args.embedder)

    def embed(texts, name):
        return l2_normalise(_encode(embedder, texts, name, False))
    ns = types.SimpleNamespace(config=args.config, seed=args.seed)
    (real_texts, _), (train_texts, _) = real_sets(ns, Path(args.gate), args.num_samples)
    return embed, real_texts, embed(real_texts, "real"), train_texts


def full_sets(args, folder: str | None = None) -> dict[str, list[str]]:
    """``model__method`` -> the first --num-samples texts of each set in ``folder`` (default --samples;
    --model's sets only) that has that many."""
    named = {}
    for name, path in sets_in(Path(folder or args.samples)).items():
        if args.model and not name.startswith(f"{lm_file_name(args.model)}__"):
            continue
        rows = read_set(path)[: args.num_samples]
        if len(rows) == args.num_samples:
            named[name] = [r["text"] for r in rows]
    return named


def decompose(args) -> int:
    import numpy as np

    from mop.evaluate import fid, fid_infinity

    embed, _, real, train_texts = load_real(args)
    named = {"real training texts (reference)": train_texts, **full_sets(args)}
    out = {"embedder": args.embedder, "n": args.num_samples, "config": args.config, "samples": args.samples,
           "rows": []}
    lines = ["| set | FID | mean term (share) | covariance term "
             "| FID∞ ± std over 5 subsample seeds | words |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, texts in named.items():
        gen = embed(texts, name)
        total = fid(real, gen)
        diff = real.mean(0) - gen.mean(0)
        mean_term = float(diff @ diff)
        infs = [fid_infinity(real, gen, seed=args.seed + k)["fid_inf"] for k in range(5)]  # subsample seeds
        inf, inf_std = infs[0], float(np.std(infs, ddof=1))
        words = round(float(np.mean([len(t.split()) for t in texts])), 1)
        out["rows"].append({"set": name, "fid": round(total, 4), "mean_term": round(mean_term, 4),
                            "covariance_term": round(total - mean_term, 4), "fid_inf": round(inf, 4),
                            "fid_inf_std_over_5_seeds": round(inf_std, 4),
                            "words": words})
        lines.append(f"| {name} | {total:.4f} | {mean_term:.4f} ({mean_term / total:.0%}) | "
                     f"{total - mean_term:.4f} | {inf:.4f} ± {inf_std:.4f} | {words} |")
    md = "\n".join(lines)
    print(md)
    if args.output:
        Path(args.output).with_suffix(".json").write_text(json.dumps(out, indent=1))
        Path(args.output).with_suffix(".md").write_text(
            f"### FID decomposed: {args.samples}, n = {args.num_samples}, {args.embedder}\n\n{md}\n")
    return 0


def block_agreement(real, gens: dict, block: int) -> dict:
    """FID of each set on all n rows and on the n // block disjoint blocks of ``block`` consecutive rows (the
    same rows of ``real``), and, per pair of sets, the share of blocks that order the pair as the full-n FIDs
    do (a tie in a block counts as disagreeing)."""
    import numpy as np

    from mop.evaluate import fid

    n = len(real)
    if block < 10 or block > n // 2:
        raise SystemExit(f"--block must be between 10 and n / 2 = {n // 2}, got {block}")
    starts = range(0, n - block + 1, block)
    sets = {}
    for name, gen in gens.items():
        if len(gen) != n:
            raise SystemExit(f"{name}: {len(gen)} rows, the real texts {n}")
        per_block = [fid(real[i:i + block], gen[i:i + block]) for i in starts]
        sets[name] = {"fid": fid(real, gen), "blocks": per_block, "trace_cov": _trace_cov(gen),
                      "block_mean": float(np.mean(per_block)), "block_std": float(np.std(per_block, ddof=1))}
    pairs = []
    names = sorted(sets, key=lambda k: sets[k]["fid"])
    for i, better in enumerate(names):
        for worse in names[i + 1:]:
            agree = np.mean([b < w for b, w in zip(sets[better]["blocks"], sets[worse]["blocks"])])
            pairs.append({"better": better, "worse": worse,
                          "fid_gap": sets[worse]["fid"] - sets[better]["fid"],
                          "block_gap": sets[worse]["block_mean"] - sets[better]["block_mean"],
                          "agreeing_blocks": float(agree)})
    return {"n": n, "block": block, "blocks": len(starts), "real_trace_cov": _trace_cov(real), "sets": sets,
            "pairs": pairs}


def _trace_cov(x) -> float:
    """The total variance of a set's embeddings: how widely its texts spread."""
    import numpy as np

    return float(np.trace(np.cov(x, rowvar=False)))


def blocks(args) -> int:
    embed, _, real, _ = load_real(args)
    gens = {}
    for folder in args.samples:
        for name, path in sets_in(Path(folder)).items():
            if args.model and not name.startswith(f"{lm_file_name(args.model)}__"):
                continue
            rows = read_set(path)[: args.num_samples]
            if len(rows) < args.num_samples:
                print(f"[gap] {folder}/{name}: {len(rows)} rows < {args.num_samples}, left out")
                continue
            temperature = rows[0].get("temperature")
            label = f"{name} (tau {temperature:g})" if temperature is not None else name
            if label in gens:  # another folder's set of the same name and temperature
                label = f"{label} [{Path(folder).name}]"
            gens[label] = embed([r["text"] for r in rows], label)
    res = block_agreement(real, gens, args.block)
    lines = [f"| set | FID, n = {res['n']} | FID on {res['blocks']} blocks of {res['block']}: mean ± std | "
             f"trace of the covariance (real texts: {res['real_trace_cov']:.3f}) |",
             "| --- | --- | --- | --- |"]
    for name, r in sorted(res["sets"].items(), key=lambda kv: kv[1]["fid"]):
        lines.append(f"| {name} | {r['fid']:.4f} | {r['block_mean']:.4f} ± {r['block_std']:.4f} | "
                     f"{r['trace_cov']:.3f} |")
    lines += ["", f"| better at n = {res['n']} | worse | FID gap at n | mean gap on blocks | "
              "blocks agreeing |", "| --- | --- | --- | --- | --- |"]
    for pr in res["pairs"]:
        lines.append(f"| {pr['better']} | {pr['worse']} | {pr['fid_gap']:.4f} | {pr['block_gap']:.4f} | "
                     f"{pr['agreeing_blocks']:.0%} |")
    md = "\n".join(lines)
    print(md)
    if args.output:
        out = {"embedder": args.embedder, "config": args.config, "samples": args.samples, **res}
        Path(args.output).with_suffix(".json").write_text(json.dumps(out, indent=1))
        Path(args.output).with_suffix(".md").write_text(
            f"### FID on disjoint blocks of {args.block} contexts: {', '.join(args.samples)}, "
            f"{args.embedder}\n\n{md}\n")
    return 0


def axis_profile(real, gens: dict, n_axes: int = 10, subspace: int = 50) -> dict:
    """How each set spreads along the real texts' principal axes: per axis k (the real covariance's k-th
    eigenvector), the set's variance over the real variance and its mean's shift in real standard deviations;
    the set's total variance and the share of it inside the real top-``subspace`` PCA subspace."""
    import numpy as np

    mu = real.mean(0)
    w, v = np.linalg.eigh(np.cov(real, rowvar=False))
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    n_axes, subspace = min(n_axes, len(w)), min(subspace, len(w))

    def profile(x):
        axis_var = np.einsum("da,de,ea->a", v, np.cov(x, rowvar=False), v)  # the set's variance per real axis
        total = float(axis_var.sum())  # the trace: the axes are an orthonormal basis
        return {"total_var": total, "share_in_subspace": float(axis_var[:subspace].sum()) / total,
                "var_ratio": (axis_var[:n_axes] / w[:n_axes]).tolist(),
                "mean_shift": ((x.mean(0) - mu) @ v[:, :n_axes] / np.sqrt(w[:n_axes])).tolist()}
    return {"n_axes": n_axes, "subspace": subspace, "real_axis_var": w[:n_axes].tolist(),
            "real": profile(real), "sets": {name: profile(g) for name, g in gens.items()},
            "axes": v[:, :n_axes]}


def axes(args) -> int:
    import numpy as np

    embed, real_texts, real, train_texts = load_real(args)
    named = {"real training texts (reference)": train_texts, **full_sets(args)}
    res = axis_profile(real, {name: embed(texts, name) for name, texts in named.items()}, args.axes,
                       args.subspace)
    k, sub = res["n_axes"], res["subspace"]
    lines = [f"| set | total variance | share in the real top-{sub} subspace | variance ÷ real's, axes 1-{k} "
             f"(mean) | mean shift in real stds, axes 1-{k} (mean of abs) |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in [("real test texts (the target)", res["real"]), *res["sets"].items()]:
        lines.append(f"| {name} | {r['total_var']:.3f} | {r['share_in_subspace']:.3f} | "
                     f"{np.mean(r['var_ratio']):.2f} | {np.mean(np.abs(r['mean_shift'])):.2f} |")
    names = list(res["sets"])
    lines += ["", "| axis | real variance | " + " | ".join(names) + " |",
              "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for a in range(k):
        lines.append(f"| {a + 1} | {res['real_axis_var'][a]:.4f} | " + " | ".join(
            f"{res['sets'][n]['var_ratio'][a]:.2f} / {res['sets'][n]['mean_shift'][a]:+.2f}" for n in names)
            + " |")
    lines += ["", "(each cell: variance ÷ the real texts' / mean shift in real standard deviations)", "",
              "The real test texts at each end of the first axes:", ""]
    coords = (real - real.mean(0)) @ res["axes"]
    for a in range(min(3, k)):
        idx = np.argsort(coords[:, a])
        ends = [[real_texts[i][:90] for i in idx[:2]], [real_texts[i][:90] for i in idx[-2:]]]
        lines.append(f"- axis {a + 1}: low {ends[0]}; high {ends[1]}")
    md = "\n".join(lines)
    print(md)
    if args.output:
        out = {"embedder": args.embedder, "config": args.config, "samples": args.samples,
               "n": args.num_samples, **{key: val for key, val in res.items() if key != "axes"}}
        Path(args.output).with_suffix(".json").write_text(json.dumps(out, indent=1))
        Path(args.output).with_suffix(".md").write_text(
            f"### Spread along the real texts' principal axes: {args.samples}, n = {args.num_samples}, "
            f"{args.embedder}\n\n{md}\n")
    return 0


def _diff(m: dict) -> str:
    return f"{m['diff']:+.4f} [{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]"


def paired(args) -> int:
    """Each set against --against, on the same contexts: the difference of FID and of KL-cosine with a paired
    bootstrap interval (``mop.evaluate.paired_differences``: each replicate resamples the contexts, the same
    ones for the real texts and every set; the real side is computed once per replicate for all the sets)."""
    from mop.evaluate import paired_differences

    embed, _, real, _ = load_real(args)
    many = len(args.samples) > 1
    named = {}
    for spec in args.samples:  # FOLDER (labelled by its name) or LABEL=FOLDER
        label, sep, folder = spec.partition("=")
        if not sep or Path(spec).exists():
            label, folder = Path(spec).name, spec
        for name, texts in full_sets(args, folder).items():
            key = f"{label}/{name}" if many else name
            if key in named:
                raise SystemExit(f"--samples: two folders give a set named {key!r}; label them LABEL=FOLDER")
            named[key] = texts
    if args.against not in named:
        raise SystemExit(f"--against {args.against!r}: no set of {args.num_samples} rows by that name; sets: "
                         f"{', '.join(named) or 'none'}")
    base = embed(named[args.against], args.against)
    rows, lines = [], ["| set | its FID | FID difference [95% paired CI] | share of resamples lower "
                       "| KL-cos difference [95% paired CI] | share lower |",
                       "| --- | --- | --- | --- | --- | --- |"]
    others = {name: embed(texts, name) for name, texts in named.items() if name != args.against}
    results = (paired_differences(real, base, list(others.values()), draws=args.draws, seed=args.seed)
               if others else [])
    for name, res in zip(others, results):
        f, k = res["fid"], res["kl_cosine"]
        rows.append({"set": name, **res})
        lines.append(f"| {name} | {f['b']:.4f} | {_diff(f)} | {f['a_lower_share']:.1%} | {_diff(k)} | "
                     f"{k['a_lower_share']:.1%} |")
    head = (f"{args.against}: FID {rows[0]['fid']['a']:.4f}, KL-cos {rows[0]['kl_cosine']['a']:.4f}. "
            f"A difference is {args.against}'s score minus the set's (below 0: {args.against} is closer to "
            "the real texts); the share is that of the paired resamples where it is below 0." if rows
            else f"{args.against}: no other set")
    md = head + "\n\n" + "\n".join(lines)
    print(md)
    if args.output:
        out = {"embedder": args.embedder, "config": args.config, "samples": args.samples,
               "n": args.num_samples, "against": args.against, "draws": args.draws, "rows": rows}
        Path(args.output).with_suffix(".json").write_text(json.dumps(out, indent=1))
        Path(args.output).with_suffix(".md").write_text(
            f"### Paired differences against {args.against}: {', '.join(args.samples)}, "
            f"n = {args.num_samples}, {args.embedder}, {args.draws} paired resamples of the contexts"
            f"\n\n{md}\n")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cut", help="write sentence-cut copies of committed sets")
    c.add_argument("--samples", required=True, help="folder of model__method.jsonl(.gz) sets")
    c.add_argument("--gate", required=True, help="the export whose exemplars give the sentence counts")
    c.add_argument("--policy", choices=("first", "budget"), required=True)
    c.add_argument("--workdir", required=True, help="writes WORKDIR/samples/*.jsonl and WORKDIR/cut.json")
    c.add_argument("--seed", type=int, default=0)
    scored = argparse.ArgumentParser(add_help=False)  # the options of every subcommand that scores sets
    scored.add_argument("--config", required=True)
    scored.add_argument("--gate", required=True)
    scored.add_argument("--num-samples", type=int, required=True)
    scored.add_argument("--embedder", default="minilm-l6")
    scored.add_argument("--model", default=None,
                        help="only this LM's sets (e.g. gemma3-270m, or the folder or hub id the sets were "
                             "generated with)")
    scored.add_argument("--seed", type=int, default=0,
                        help="benchmarks/fidelity.py's --seed (the contexts' shuffle)")
    scored.add_argument("--output", default=None, help="writes OUTPUT.json and OUTPUT.md")
    d = sub.add_parser("decompose", parents=[scored], help="FID = mean term + covariance term, per set")
    d.add_argument("--samples", required=True, help="folder of model__method.jsonl(.gz) sets")
    b = sub.add_parser("blocks", parents=[scored],
                       help="FID on disjoint blocks of B contexts: does a val of B order the sets?")
    b.add_argument("--samples", nargs="+", required=True, help="folders of model__method.jsonl(.gz) sets")
    b.add_argument("--block", type=int, default=100, help="texts per block (the val size in question)")
    a = sub.add_parser("axes", parents=[scored],
                       help="each set's spread along the real texts' principal axes")
    a.add_argument("--samples", required=True, help="folder of model__method.jsonl(.gz) sets")
    a.add_argument("--axes", type=int, default=10, help="principal axes listed one by one")
    a.add_argument("--subspace", type=int, default=50, help="the real top-S subspace of the share column")
    q = sub.add_parser("paired", parents=[scored],
                       help="each set against one, on the same contexts: differences with paired intervals")
    q.add_argument("--samples", nargs="+", required=True,
                   help="folders of model__method.jsonl(.gz) sets, each FOLDER (its sets named "
                        "FOLDER_NAME/model__method) or LABEL=FOLDER (LABEL/model__method)")
    q.add_argument("--against", required=True,
                   help="the set the others are compared with, e.g. smollm2-135m__mop (FOLDER/NAME with "
                        "several --samples folders)")
    q.add_argument("--draws", type=int, default=200, help="paired bootstrap resamples")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    return {"cut": cut, "decompose": decompose, "blocks": blocks, "axes": axes,
            "paired": paired}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
