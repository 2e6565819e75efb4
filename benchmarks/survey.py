"""Survey fidelity on the 1996 American National Election Studies (issue 40, mop.survey).

Trains MoP on configs/anes96.yaml (SmolLM2-135M + MiniLM; party identification and expected vote, one record
per respondent and question), then, for every test respondent and question, samples answers with every method
through the same option sampling (each sampled prompt's option probabilities from the LM, one option drawn
from them): MoP, its baselines (zero-shot, persona, few-shot, uniform gate) and two ablations (MoP without
exemplars, MoP with a random persona) on SmolLM2, and the SmolLM2-trained gate transferred to Gemma-3-270M
beside Gemma's own baselines. The evaluation (mop.survey.evaluate_survey): per question, total variation,
Jensen-Shannon (and Wasserstein on the ordinal party-id scale) between the simulated and the real answer
distributions, overall and within each group of the respondents' ideology; the log-likelihood and Brier score
of the real answers under each method's per-respondent option distribution; 95% bootstrap intervals over the
test respondents and paired differences against the best baseline; a real-against-real reference and a
multinomial logistic regression on the profile.

    python benchmarks/survey.py                  # everything; resumable: re-run to continue
    python benchmarks/survey.py --steps evaluate # the tables from the sets already generated

The split (50 / 10 / 40 by respondent, seed 0), the number of answers per respondent and the seeds are fixed
before any run and the same for every method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINES = ("zerogen", "persona", "fewshot", "uniform")
DEFAULT_RUNS = [f"smollm2-135m:{m}" for m in ("mop", *BASELINES, "mop-no-exemplar", "mop-random-persona")] + [
    f"gemma3-270m:{m}" for m in ("mop", *BASELINES)
]
LABELS = {
    "mop": "MoP",
    "zerogen": "zero-shot",
    "persona": "persona",
    "fewshot": "few-shot (random exemplar)",
    "uniform": "uniform gate (untrained)",
    "mop-no-exemplar": "ablation: MoP without exemplars",
    "mop-random-persona": "ablation: MoP, random persona",
}
QUESTIONS = {
    "party_id": "party identification (7 options, ordinal)",
    "vote": "expected vote (Clinton / Dole)",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/anes96.yaml", help="training config (the survey, LM, gate)")
    p.add_argument("--workdir", default="runs/anes96", help="gate, answer sets, timings (resumable)")
    p.add_argument("--gate", default=None, help="the gate export (default: the config's model.export_dir)")
    p.add_argument(
        "--baseline-gate",
        default=None,
        help="the export the baselines read (they use only its personas, exemplars and templates, "
        "the same in every checkpoint's export of one training run; default: --gate), so "
        "they can run while the gate trains",
    )
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="MODEL:METHOD pairs, in order")
    p.add_argument(
        "--answers",
        type=int,
        default=1,
        help="answers sampled per test respondent and question, every method alike",
    )
    p.add_argument(
        "--respondents",
        type=int,
        default=100,
        help="test respondents evaluated (the first N of the test respondents in a seeded order; "
        "both questions each), every method alike",
    )
    p.add_argument(
        "--model-respondents",
        nargs="*",
        default=["gemma3-270m=60"],
        metavar="MODEL=N",
        help="fewer respondents for a slow LM (the first N of the same order): its sets are "
        "evaluated as their own group",
    )
    p.add_argument("--split", default="test", help="the evaluated split")
    p.add_argument("--group-by", default="ideology", help="the context column of the per-group distances")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the respondents")
    p.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per LM batch")
    p.add_argument("--steps", default="train,generate,evaluate", help="comma-separated subset")
    p.add_argument("--output", default="benchmarks/results/survey_anes96", help="writes OUTPUT.json and .md")
    return p.parse_args(argv)


def timings(workdir: Path) -> dict:
    path = workdir / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def add_timing(workdir: Path, key: str, seconds: float) -> None:
    t = timings(workdir)
    t[key] = round(t.get(key, 0.0) + seconds, 1)
    (workdir / "timings.json").write_text(json.dumps(t, indent=1, sort_keys=True))


def gate_dir(args) -> Path:
    if args.gate:
        return Path(args.gate)
    import yaml

    return Path(yaml.safe_load(Path(args.config).read_text())["model"]["export_dir"])


def train(args, workdir: Path) -> None:
    if (gate_dir(args) / "config.json").exists():
        return
    t0 = time.perf_counter()
    cmd = [sys.executable, "train.py", "fit", "-c", args.config]
    if list((workdir / "checkpoints").glob("last*.ckpt")) or list(workdir.rglob("last.ckpt")):
        cmd += ["--ckpt_path", "last"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    add_timing(workdir, "train", time.perf_counter() - t0)


def respondents_for(args, model: str, records) -> list[str]:
    """The evaluated test respondents of an LM: the first N of the split's respondents in the --seed order."""
    import numpy as np

    from mop.survey import respondent_key

    every = sorted({respondent_key(r) for r in records})
    order = [every[i] for i in np.random.default_rng(args.seed).permutation(len(every))]
    sizes = dict(item.split("=", 1) for item in args.model_respondents)
    return order[: int(sizes.get(model, args.respondents))]


def set_path(workdir: Path, run: str) -> Path:
    """A run's answers: ``answers/MODEL__METHOD.jsonl`` while it is written, or the ``.jsonl.gz`` it is
    committed as (evaluation only: a gzipped set is complete)."""
    model, method = run.split(":", 1)
    path = workdir / "answers" / f"{model}__{method}.jsonl"
    packed = path.with_name(path.name + ".gz")
    return packed if packed.exists() and not path.exists() else path


def generate(args, workdir: Path) -> None:
    """Every run's answers for every record of the split, ``--answers`` per record (resumable)."""
    import torch

    from mop.assets import load_lm
    from mop.embed import Embedder
    from mop.export import GateExport
    from mop.generate import GATED, Sampling, dataset_contexts, embed_contexts, generate_population

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from mop.survey import respondent_key

    exports = {}

    def export_for(method):
        path = gate_dir(args) if method in GATED or not args.baseline_gate else Path(args.baseline_gate)
        if path not in exports:
            exports[path] = GateExport.from_pretrained(path)
        return exports[path]

    export = export_for("mop" if not args.baseline_gate else "zerogen")
    every = dataset_contexts(args.config, args.split, export.config)
    (workdir / "answers").mkdir(parents=True, exist_ok=True)
    embedder, embedded = None, {}
    loaded: dict[str, tuple] = {}
    for run in args.runs:
        model_name, method = run.split(":", 1)
        at = {k: i for i, k in enumerate(respondents_for(args, model_name, every))}
        records = sorted(
            [r for r in every if respondent_key(r) in at],
            key=lambda r: (at[respondent_key(r)], r.label or ""),
        )
        out = set_path(workdir, run)
        n = args.answers * len(records)
        if out.exists() and sum(1 for _ in out.open()) >= n:
            continue
        export = export_for(method)
        emb = None
        if method in GATED:
            embedder = embedder or Embedder(export.embedder)
            if len(records) not in embedded:
                embedded[len(records)] = embed_contexts(export, records, embedder)
            emb = embedded[len(records)]
        if model_name not in loaded:
            loaded.clear()  # one LM in memory at a time
            loaded[model_name] = load_lm(model_name, device="cpu")
        model, tok = loaded[model_name]
        t0 = time.perf_counter()
        summary = generate_population(
            export,
            model,
            tok,
            records,
            out,
            Sampling(num_samples=n, method=method, seed=args.seed, batch_size=args.batch_size),
            context_emb=emb,
            model_name=model_name,
            progress=False,
        )
        add_timing(workdir, run, time.perf_counter() - t0)
        print(f"{run}: {summary['written']} row(s) in {time.perf_counter() - t0:.0f} s", flush=True)


def read_rows(path: Path) -> list[dict]:
    from mop.outputs import read_rows as rows_of  # .jsonl or .jsonl.gz

    return list(rows_of(path))


def evaluate(args, workdir: Path) -> dict:
    from mop.data import load_dataset_config, load_population
    from mop.survey import evaluate_survey

    population = load_population(load_dataset_config(args.config))
    runs = [r for r in args.runs if set_path(workdir, r).exists()]

    def needed(run):
        return args.answers * 2 * len(respondents_for(args, run.split(":")[0], population[args.split]))

    complete = [r for r in runs if sum(1 for _ in read_rows(set_path(workdir, r))) >= needed(r)]
    result = {
        "config": args.config,
        "gate": str(gate_dir(args)),
        "answers_per_respondent": args.answers,
        "group_by": args.group_by,
        "groups": {},
        "partial": sorted(set(runs) - set(complete)),
    }
    for model in dict.fromkeys(r.split(":")[0] for r in complete):
        sets = {
            r.split(":", 1)[1]: read_rows(set_path(workdir, r)) for r in complete if r.startswith(model + ":")
        }
        baselines = [b for b in BASELINES if b in sets]
        result["groups"][model] = evaluate_survey(
            population,
            sets,
            split=args.split,
            group_by=args.group_by,
            baselines=baselines,
            compare=[m for m in sets if m not in BASELINES],
            bootstrap=args.bootstrap,
            seed=args.seed,
            respondents=respondents_for(args, model, population[args.split]),
        )
    result["timings"] = timings(workdir)
    result["hardware"] = hardware()
    return result


def hardware() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


# ------------------------------------------------------------------------------------------------- tables
def _cell(d: dict, key: str, digits: int = 3) -> str:
    if key not in d:
        return "–"
    ci = d.get(f"{key}_ci")
    return f"{d[key]:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _diff(paired: dict, metric: str, digits: int = 3) -> str:
    best = (paired or {}).get("best_baseline", {}).get(metric)
    if not best:
        return "–"
    lo, hi = best["ci"]
    return f"{best['diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] vs {LABELS[best['baseline']]}"


LMS = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M"}
REFERENCES = {
    "real-against-real": "reference: real answers of train respondents",
    "logistic-regression": "reference: logistic regression on the profile (no LM)",
}


def table(result: dict) -> str:
    """One markdown table per question: every method of every LM with its references (on the same test
    respondents), then MoP's paired differences against the best baseline of its LM."""
    out = []
    for question, title in QUESTIONS.items():
        ordinal = question == "party_id"
        metrics = ["tv", "js"] + (["w"] if ordinal else []) + ["tv_group", "loglik", "brier"]
        head = {
            "tv": "TV ↓",
            "js": "JS ↓",
            "w": "W ↓",
            "tv_group": "TV within ideology ↓",
            "loglik": "log-lik ↑",
            "brier": "Brier ↓",
        }
        cols = ["LM (test respondents)", "method"] + [head[m] for m in metrics]
        lines = [f"**{title}**", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for model, group in result["groups"].items():
            q = group["questions"].get(question)
            if q is None:
                continue
            lm = f"{LMS.get(model, model)} ({q['n']})"
            rows = [
                (
                    LABELS.get(m, m)
                    + (" (the SmolLM2-trained gate)" if m == "mop" and model != "smollm2-135m" else ""),
                    d,
                )
                for m, d in q["sets"].items()
            ]
            rows += [(REFERENCES[name], d) for name, d in q["references"].items()]
            for label, d in rows:
                lines.append("| " + " | ".join([lm, label] + [_cell(d, m) for m in metrics]) + " |")
        diff_metrics = ["tv"] + (["w"] if ordinal else []) + ["tv_group", "loglik", "brier"]
        lines += [
            "",
            "| LM | MoP − the best baseline of its LM, paired | "
            + " | ".join(head[m] for m in diff_metrics)
            + " |",
            "| --- | --- |" + " --- |" * len(diff_metrics),
        ]
        for model, group in result["groups"].items():
            q = group["questions"].get(question) or {}
            for method, paired in (q.get("paired") or {}).items():
                lines.append(
                    f"| {LMS.get(model, model)} | {LABELS.get(method, method)} | "
                    + " | ".join(_diff(paired, m) for m in diff_metrics)
                    + " |"
                )
        out.append("\n".join(lines))
    note = (
        f"Per question, on the first test respondents of a seeded order (the same for every method of an "
        f"LM), {result['answers_per_respondent']} sampled answer per respondent and method. TV: total "
        "variation, JS: Jensen-Shannon (bits), W: Wasserstein on the 7-point scale (0 ... 1), between the "
        "simulated and the real answer distributions; within ideology: the same within each self-placement "
        "group, weighted by its real size; log-lik and Brier: the real answer under the method's option "
        "probabilities for that respondent. [95% percentile bootstrap over respondents, 1,000 resamples; a "
        "distance's resamples sit above it (finite-sample bias), so its interval can exclude the point.] "
        "Paired: the difference on the same resamples, against the baseline (zero-shot, persona, few-shot, "
        "uniform gate) best on that metric; below 0 is better for the distances and Brier, above 0 for "
        "log-lik."
    )
    return "\n\n".join(out) + "\n\n" + note


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps = set(args.steps.split(","))
    if "train" in steps:
        train(args, workdir)
    if "generate" in steps:
        generate(args, workdir)
    if "evaluate" in steps:
        t0 = time.perf_counter()
        result = evaluate(args, workdir)
        result["evaluate_seconds"] = round(time.perf_counter() - t0, 1)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        from mop.evaluate import write_json_atomic

        write_json_atomic(result, out.with_suffix(".json"))
        md = table(result)
        out.with_suffix(".md").write_text(md + "\n")
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
