"""The documents' result tables, rendered from the committed result files: one source for every figure.

    python benchmarks/tables.py --check     # exit 1, naming each block that differs from what renders now
    python benchmarks/tables.py --write     # rewrite every block in place
    python benchmarks/tables.py --list      # every NAME, its source files and what it shows

A block in README.md or docs/*.md is delimited by markers; what lies between them is the renderer's output:

    <!-- table: NAME -->
    | ... |
    <!-- /table -->

NAME maps, in ``TABLES``, to its source files under benchmarks/results/ (JSON written by fidelity.py,
fidelity_gap.py, ...) and a renderer that reads nothing else. The renderers reuse the scripts' own cells
(``fidelity.set_cells`` and friends) so a document and the script's committed .md agree figure for figure.
Labels, column choices and row order are the renderer's; every figure comes from a source file. A table that
holds no result (a table of options) needs no marker. tests/test_tables.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from common import markdown_table  # noqa: E402
from fidelity import BASELINES, LABELS, reference_cells, set_cells, split_run, target_cells  # noqa: E402

BLOCK = re.compile(r"^<!-- table: (?P<name>[^ ]*) -->\n(?P<body>.*?)^<!-- /table -->$", re.M | re.S)
OPEN = re.compile(r"^<!-- table: ", re.M)
EMBEDDERS = {"minilm-l6": "MiniLM (all-MiniLM-L6-v2)", "mpnet-base-v2": "mpnet (all-mpnet-base-v2)"}
LMS = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M"}


@dataclass(frozen=True)
class Table:
    sources: tuple[str, ...]  # files under benchmarks/results/, read in this order
    render: Callable[..., str]  # the loaded sources -> the block's markdown

    @property
    def about(self) -> str:
        return (self.render.__doc__ or "").strip().splitlines()[0]


TABLES: dict[str, Table] = {}


def table(name: str, *sources: str):
    """Register a renderer for the blocks named ``name``, fed with ``sources`` (loaded JSON)."""
    def register(fn):
        TABLES[name] = Table(sources, fn)
        return fn
    return register


# ------------------------------------------------------------------------------------------------- helpers
def group(result: dict, model: str, n: int, embedder: str = "minilm-l6") -> dict:
    """A fidelity.py result's group of one LM, sample size and embedder."""
    for g in result["groups"]:
        if g["n"] == n and g["embedder"] == embedder and any(
                split_run(r["name"])[0] == model for r in g["rows"]):
            return g
    raise KeyError(f"no {model} group of n = {n} on {embedder}")


def row(g: dict, run: str) -> dict:
    """A generated set's row (run: MODEL:METHOD) of a group."""
    for r in g["rows"]:
        if r["name"] == run:
            return r
    raise KeyError(f"no row {run!r} in the {g['model']} group of n = {g['n']}")


def cells(g: dict, run: str, timings: dict | None = None, label: str | None = None) -> dict[str, str]:
    """One set's cells (fidelity.set_cells), plus point-only columns, under ``label`` when given."""
    r = row(g, run)
    out = {**set_cells(r, timings or {}), **_points(r)}
    return {**out, "method": label} if label else out


def _points(r: dict) -> dict[str, str]:
    return {"F1 ↑": _num(r.get("f1"), 3), "FID ↓": _num(r.get("fid"), 4), "MAUVE ↑": _num(r.get("mauve"), 3),
            "KL-cos ↓": _num(r.get("kl_cosine"), 4)}


def reference(g: dict, label: str | None = None) -> dict[str, str]:
    ref = g["reference"]
    out = {**reference_cells(ref), **_points(ref)}
    return {**out, "method": label} if label else out


def target(g: dict) -> dict[str, str]:
    return {**target_cells(g), "F1 ↑": "–", "FID ↓": "0", "MAUVE ↑": "1", "KL-cos ↓": "0"}


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_rows(columns: list[str], rows: list[dict[str, str]], head: list[str] | None = None) -> str:
    """A markdown table of ``columns`` picked from each row's cells; ``head`` renames the columns."""
    return markdown_table(head or columns, [[r[c] for c in columns] for r in rows])


def bootstrap_note(g: dict) -> str:
    return (g.get("bootstrap") or {}).get("method", "")


def interval(value: float, ci, digits: int = 4, sign: bool = False) -> str:
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f.format(value) + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if ci else "")


def paired_row(paired: dict, method: str, b_fid: float, a_fid: float) -> dict:
    """The paired result's row for ``method``'s set whose FID is ``b_fid``, against a set of FID ``a_fid``:
    the FIDs tie the paired row to the very sets of the table (a paired file may list a method twice)."""
    for r in paired["rows"]:
        if r["set"].endswith(f"__{method}") and abs(r["fid"]["b"] - b_fid) < 1e-5 \
                and abs(r["fid"]["a"] - a_fid) < 1e-5:
            return r
    raise KeyError(f"no paired row for {method} (FID {b_fid:.4f}) against a set of FID {a_fid:.4f}")


def setting(r: dict) -> str:
    """A set's sampling temperature, and its gate temperature where it is not 1."""
    out = f"tau {r.get('temperature', 1.0):.1f}"
    return out + (f", gate T {r['gate_temperature']:g}" if r.get("gate_temperature", 1.0) != 1.0 else "")


# ------------------------------------------------------------------------------------- docs/results.md
MAIN = ["method", "FID ↓ [95% CI]", "MAUVE ↑ [95% CI]", "KL-cos ↓ [95% CI]", "F1 ↑ [95% CI]",
        "personas / exemplars used (effective)", "Vendi", "words",
        "prompt echo / persona start / exemplar copy"]
RUNS = ("mop", *BASELINES)


@table("rt_main", "fidelity_scale.json")
def rt_main(result: dict) -> str:
    """Rotten Tomatoes, SmolLM2, n = 1,000, MiniLM: MoP, the five baselines, the reference and the target."""
    g = group(result, "smollm2-135m", 1000)
    rows = [cells(g, f"smollm2-135m:{m}") for m in RUNS] + [reference(g), target(g)]
    return render_rows(MAIN, rows) + "\n\n" + bootstrap_note(g)


@table("rt_ablations_gemma", "fidelity_scale.json")
def rt_ablations_gemma(result: dict) -> str:
    """Rotten Tomatoes, MiniLM: the ablations (SmolLM2, n = 500), Gemma-3-270M with the transferred gate."""
    cols = ["method", "n", "FID ↓ [95% CI]", "MAUVE ↑ [95% CI]", "KL-cos ↓ [95% CI]", "F1 ↑", "words",
            "prompt echo / persona start / exemplar copy"]
    s, gm = group(result, "smollm2-135m", 500), group(result, "gemma3-270m", 200)
    rows = [cells(s, "smollm2-135m:mop", label="SmolLM2 MoP (its first 500 rows)"),
            cells(s, "smollm2-135m:mop-no-exemplar"), cells(s, "smollm2-135m:mop-random-persona"),
            reference(s)]
    rows += [cells(gm, f"gemma3-270m:{m}", label="Gemma " + ("MoP (transferred gate)" if m == "mop" else
                                                              _short(m))) for m in RUNS]
    return render_rows(cols, rows + [reference(gm)], ["set (MiniLM)", *cols[1:]])


def _short(method: str) -> str:
    return {"uniform": "uniform gate", "fewshot": "few-shot"}.get(method, LABELS[method])


@table("guardian_smollm2", "fidelity_guardian.json")
def guardian_smollm2(result: dict) -> str:
    """Guardian, SmolLM2, n = 408, MiniLM: MoP, the baselines, both ablations, the reference, the target."""
    g = group(result, "smollm2-135m", 408)
    rows = [cells(g, r["name"], result.get("timings_s")) for r in g["rows"]] + [reference(g), target(g)]
    return render_rows([*MAIN, "gen s"], rows)


@table("guardian_gemma", "fidelity_guardian.json")
def guardian_gemma(result: dict) -> str:
    """Guardian, Gemma-3-270M with the SmolLM2-trained gate (transferred), n = 200, MiniLM."""
    g = group(result, "gemma3-270m", 200)
    rows = [cells(g, r["name"], result.get("timings_s")) for r in g["rows"]] + [reference(g), target(g)]
    return render_rows([*MAIN, "gen s"], rows)


GLANCE = (  # population, result file (MoP and the baselines as compared), LM, n, paired result file, LM label
    ("Rotten Tomatoes reviews", "fidelity_scale.json", "smollm2-135m", 1000,
     "fidelity_gap_paired.json", "SmolLM2-135M"),
    ("Guardian headlines", "fidelity_guardian_gt.json", "smollm2-135m", 408,
     "fidelity_gap_paired_guardian.json", "SmolLM2-135M"),
    ("Rotten Tomatoes reviews", "fidelity_scale_gemma_tg.json", "gemma3-270m", 200,
     "fidelity_gap_paired_gemma.json", "Gemma-3-270M, the SmolLM2 gate transferred"),
)


@table("glance", *dict.fromkeys(f for spec in GLANCE for f in (spec[1], spec[4])))
def glance(*loaded: dict) -> str:
    """Results at a glance: per population, MoP, the best baseline, the real texts and MoP's paired lead."""
    files = dict(zip(dict.fromkeys(f for spec in GLANCE for f in (spec[1], spec[4])), loaded))
    rows, embedders = [], set()
    for population, result, model, n, paired, lm in GLANCE:
        paired = files[paired]
        g = group(files[result], model, n, paired["embedder"])
        embedders.add(g["embedder"])
        mop = row(g, f"{model}:mop")
        base = {m: r for m in BASELINES if (r := next((x for x in g["rows"] if x["name"] == f"{model}:{m}"),
                                                        None))}
        best = min(base, key=lambda m: base[m]["fid"])
        p = paired_row(paired, best, base[best]["fid"], mop["fid"])["fid"]
        rows.append([f"{population} (n = {n:,})", lm,
                     f"{interval(mop['fid'], mop['ci95']['fid'])} ({setting(mop)})",
                     f"{_short(best)}: {interval(base[best]['fid'], base[best]['ci95']['fid'])} "
                     f"({setting(base[best])})",
                     f"{g['reference']['fid']:.4f}",
                     interval(p["diff"], p["ci95"], sign=True)])
    (embedder,) = embedders
    head = ["population", "LM", "MoP: FID ↓ [95% CI]", "best baseline: FID ↓ [95% CI]", "real texts: FID",
            "MoP − best baseline, paired [95% CI]"]
    return (markdown_table(head, rows) + "\n\n"
            f"FID against the real test texts of the same contexts on {EMBEDDERS[embedder]} embeddings "
            "(lower is closer); 95% bootstrap intervals. Real texts: real training texts through the same "
            "metric. The paired lead is MoP's FID minus the best baseline's on the same resampled contexts "
            "(below 0: MoP is closer). Each set at the temperatures shown (tau: the LM's; T: the gate's).")


_GUARDIAN = "fidelity_guardian{}_samples/smollm2-135m__{}"
_GEMMA = "fidelity_scale_gemma_tg_samples/gemma3-270m__{}"
PAIRED = (  # the paired table: (first row's label, the next rows', result file, the sets MoP faces)
    ("RT (n = 1,000)", "RT", "fidelity_gap_paired.json",
     [f"smollm2-135m__{m}" for m in ("uniform", "fewshot", "persona", "attrprompt", "zerogen")]),
    ("Guardian (n = 408; MoP at gate T 2, tau 0.6)", "Guardian", "fidelity_gap_paired_guardian.json",
     [_GUARDIAN.format("_tau", "fewshot"), _GUARDIAN.format("_tau", "uniform"),
      _GUARDIAN.format("", "fewshot")]),
    ("Gemma on RT (n = 200; MoP at gate T 2)", "Gemma", "fidelity_gap_paired_gemma.json",
     [_GEMMA.format(m) for m in ("attrprompt", "persona", "fewshot", "uniform", "zerogen")]),
)
PAIRED_SETTING = {"fidelity_guardian_tau_samples": " at tau 0.6", "fidelity_guardian_samples": " at tau 1.0"}


@table("paired", *(spec[2] for spec in PAIRED))
def paired(*loaded: dict) -> str:
    """MoP against each baseline on the same contexts: FID and KL-cos differences with paired intervals."""
    rows = []
    for (first, label, _, sets), result in zip(PAIRED, loaded):
        by_set = {r["set"]: r for r in result["rows"]}
        for i, name in enumerate(sets):
            folder, _, set_name = name.rpartition("/")
            method = split_run(set_name.replace("__", ":"))[1]
            r = by_set[name]
            rows.append([f"{label if i else first}: {_short(method)}{PAIRED_SETTING.get(folder, '')}",
                         interval(r["fid"]["diff"], r["fid"]["ci95"], sign=True),
                         interval(r["kl_cosine"]["diff"], r["kl_cosine"]["ci95"], sign=True)])
    return markdown_table(["MoP against", "FID difference [95% paired CI]",
                           "KL-cos difference [95% paired CI]"], rows)


# ------------------------------------------------------------------------------------- docs/fidelity.md
BEST = {"FID ↓ [95% CI]": min, "MAUVE ↑ [95% CI]": max, "KL-cos ↓ [95% CI]": min, "F1 ↑ [95% CI]": max,
        "FID ↓ mpnet [95% CI]": min}
_RAW = {"FID ↓ [95% CI]": "fid", "MAUVE ↑ [95% CI]": "mauve", "KL-cos ↓ [95% CI]": "kl_cosine",
        "F1 ↑ [95% CI]": "f1", "FID ↓ mpnet [95% CI]": "fid_mpnet"}


def bold_best(columns: list[str], rows: list[dict], raws: list[dict | None]) -> None:
    """Bold, in each metric column, the best generated set's cell (the reference rows, raw None, excluded)."""
    for col in columns:
        if col not in BEST:
            continue
        have = [(raw[_RAW[col]], i) for i, raw in enumerate(raws) if raw and raw.get(_RAW[col]) is not None]
        if have:
            i = BEST[col](have)[1]
            rows[i] = {**rows[i], col: f"**{rows[i][col]}**"}


def _exemplars(r: dict) -> str:
    eff = r.get("effective_exemplars")
    return f"{r['exemplars_used']} ({eff})" if r.get("exemplars_used") else "–"


@table("guardian_tau", "fidelity_guardian_tau.json")
def guardian_tau(result: dict) -> str:
    """Guardian, SmolLM2: each method's temperature chosen on val (val FIDs), its test figures."""
    g, sweep = group(result, "smollm2-135m", 408), result["temperatures"]
    cols = ["method", "val", "chosen", "FID ↓ [95% CI]", "MAUVE ↑ [95% CI]", "KL-cos ↓ [95% CI]", "copy"]
    rows, raws = [], []
    for m in RUNS:
        run = f"smollm2-135m:{m}"
        val = {float(t): v for t, v in sweep["val_fid"][run].items()}
        low = min(val, key=val.get)
        r = row(g, run)
        rows.append({**cells(g, run, label=_short(m)), "chosen": f"{sweep['chosen'][run]:.1f}",
                     "val": " / ".join(f"**{val[t]:.4f}**" if t == low else f"{val[t]:.4f}"
                                       for t in sweep["grid"]),
                     "copy": _num(r.get("exemplar_copy"), 2)})
        raws.append(r)
    bold_best(cols, rows, raws)
    rows.append({**reference(g, "real training texts"), "val": "", "chosen": "", "copy": "–"})
    grid = " / ".join(f"{t:.1f}" for t in sweep["grid"])
    return render_rows(cols, rows, ["method", f"val FID at {grid}", "chosen", "test FID ↓ [95% CI]",
                                    "test MAUVE ↑ [95% CI]", "test KL-cos ↓ [95% CI]", "exemplar copy"])


@table("guardian_gt", "fidelity_guardian_gt.json", "fidelity_guardian.json")
def guardian_gt(gt: dict, committed: dict) -> str:
    """Guardian, SmolLM2: MoP at the gate temperature chosen on val, against the sets at their chosen tau."""
    cols = ["method", "FID ↓ [95% CI]", "MAUVE ↑ [95% CI]", "KL-cos ↓ [95% CI]", "FID ↓ mpnet [95% CI]",
            "personas / exemplars used (effective)", "Vendi"]
    rows, raws = [], []
    for result, m, label in ((gt, "mop", "MoP, gate T 2, tau 0.6"),
                             (committed, "mop", "MoP, trained gate (T 1), tau 1.0 (committed)"),
                             (gt, "fewshot", "few-shot, tau 0.6"), (gt, "uniform", "uniform gate, tau 0.6"),
                             (gt, "persona", "persona only, tau 1.0")):
        run = f"smollm2-135m:{m}"
        mini, mp = row(group(result, "smollm2-135m", 408), run), row(group(result, "smollm2-135m", 408,
                                                                           "mpnet-base-v2"), run)
        rows.append({**cells(group(result, "smollm2-135m", 408), run, label=label),
                     "FID ↓ mpnet [95% CI]": interval(mp["fid"], mp["ci95"]["fid"])})
        raws.append({**mini, "fid_mpnet": mp["fid"]})
    bold_best(cols, rows, raws)
    ref = group(gt, "smollm2-135m", 408, "mpnet-base-v2")["reference"]
    rows.append({**reference(group(gt, "smollm2-135m", 408)),
                 "FID ↓ mpnet [95% CI]": interval(ref["fid"], ref["ci95"]["fid"])})
    return render_rows(cols, rows, ["set", "FID ↓ MiniLM [95% CI]", "MAUVE ↑ MiniLM [95% CI]",
                                    "KL-cos ↓ MiniLM [95% CI]", *cols[4:]])


@table("rt_gt", "fidelity_scale_gt.json", "fidelity_scale.json")
def rt_gt(gt: dict, committed: dict) -> str:
    """Rotten Tomatoes, SmolLM2: every method at its val-chosen temperature; the uniform gate also at 1.0."""
    cols = ["method", "FID ↓ [95% CI]", "MAUVE ↑ [95% CI]", "KL-cos ↓ [95% CI]", "F1 ↑ [95% CI]",
            "exemplars", "exemplar label match", "Vendi", "words"]
    rows, raws = [], []
    for result, m, label in ((gt, "mop", "MoP, trained gate (T 1), tau 1.0"),
                             (gt, "fewshot", "few-shot, tau 1.0"), (gt, "persona", "persona only, tau 1.0"),
                             (gt, "attrprompt", "AttrPrompt, tau 1.0"),
                             (gt, "zerogen", "ZeroGen, tau 1.0"),
                             (gt, "uniform", "uniform gate, tau 0.6 (its val choice, new)"),
                             (committed, "uniform", "uniform gate, tau 1.0 (committed, not its val choice)")):
        g = group(result, "smollm2-135m", 1000)
        r = row(g, f"smollm2-135m:{m}")
        rows.append({**cells(g, r["name"], label=label), "exemplars": _exemplars(r)})
        raws.append(r)
    bold_best(cols, rows, raws)
    rows.append({**reference(group(gt, "smollm2-135m", 1000)), "exemplars": "–"})
    return render_rows(cols, rows, ["set", *cols[1:5], "exemplars used (effective)", *cols[6:]])


@table("k100", "fidelity_k100.json", "fidelity_scale.json")
def k100(result: dict, k20: dict) -> str:
    """Rotten Tomatoes, SmolLM2, K = 100 personas: the K = 100 sets beside K = 20's FID."""
    g, g20 = group(result, "smollm2-135m", 1000), group(k20, "smollm2-135m", 1000)
    rows = []
    for m, label in (("mop", "MoP"), ("uniform", "the uniform gate"), ("persona", "persona only")):
        r = row(g, f"smollm2-135m:{m}")
        rows.append([label, interval(r["fid"], r["ci95"]["fid"]), _num(r.get("fid_inf"), 4),
                     interval(r["mauve"], r["ci95"]["mauve"], 3), _num(r["kl_cosine"], 4),
                     _num(r.get("effective_personas"), 1), _num(row(g20, f"smollm2-135m:{m}")["fid"], 4)])
    rest = [row(g, f"smollm2-135m:{m}") for m in ("fewshot", "attrprompt", "zerogen")]
    rows.append(["few-shot / AttrPrompt / ZeroGen (no personas)",
                 *(" / ".join(_num(r.get(k), d) for r in rest)
                   for k, d in (("fid", 4), ("fid_inf", 4), ("mauve", 3), ("kl_cosine", 4))),
                 "–", "the same sets"])
    return markdown_table(["RT, n = 1,000 (MiniLM)", "K = 100: FID ↓ [95% CI]", "FID∞", "MAUVE ↑ [95% CI]",
                           "KL-cos ↓", "effective personas", "K = 20: FID"], rows)


@table("k100_paired", "fidelity_gap_paired_k100.json")
def k100_paired(result: dict) -> str:
    """Rotten Tomatoes, K = 100: its MoP against the K = 100 baselines and the K = 20 MoP, paired."""
    by_set = {r["set"]: r for r in result["rows"]}
    rows = []
    for name, label in (("samples/smollm2-135m__uniform", "the uniform gate, K = 100"),
                        ("samples/smollm2-135m__fewshot", "few-shot"),
                        ("samples/smollm2-135m__persona", "persona only, K = 100"),
                        ("k20_sets/smollm2-135m__mop", "MoP with K = 20")):
        r = by_set[name]
        rows.append([label, interval(r["fid"]["diff"], r["fid"]["ci95"], sign=True),
                     interval(r["kl_cosine"]["diff"], r["kl_cosine"]["ci95"], sign=True)])
    return markdown_table(["set", "FID difference [95% paired CI]", "KL-cos difference [95% paired CI]"],
                          rows)



# ---------------------------------------------------------------- docs/fidelity.md: the variants of the gate
def md_table(text: str) -> dict[str, list[str]]:
    """A committed .md result's first table: its first column -> the other cells (bold removed)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def diag(result: dict, gate: str, split: str = "val") -> dict:
    """A gate_diagnosis.py result's figures for one gate and split."""
    return result["results"][gate][split]


def mean(d: dict, key: str) -> float:
    return d[key]["mean"]


def val_nll(result: dict) -> str:
    return f"{result['gate_metrics']['val/nll_per_token']:.4f}"


def by_set(paired: dict) -> dict[str, dict]:
    return {r["set"]: r for r in paired["rows"]}


def pdiff(r: dict, key: str = "fid") -> str:
    """A paired difference with its interval."""
    return interval(r[key]["diff"], r[key]["ci95"], sign=True)


def psign(r: dict, key: str = "fid") -> str:
    return f"{r[key]['diff']:+.4f}"


def ci(r: dict, key: str, digits: int = 4) -> str:
    return interval(r[key], (r.get("ci95") or {}).get(key), digits)


def grid_cells(fids: dict, grid, chosen=None) -> str:
    """A val sweep's FIDs over ``grid``, the chosen one in bold."""
    return " / ".join(f"**{fids[k]:.4f}**" if chosen is not None and float(k) == chosen else f"{fids[k]:.4f}"
                      for k in (f"{t:.1f}" for t in grid))


def used(r: dict, digits: int | None = None) -> str:
    """Personas / exemplars used (effective) of a set."""
    def one(n, eff):
        return "–" if not n else f"{n} ({eff if digits is None else format(eff, f'.{digits}f')})"
    return f"{one(r['personas_used'], r.get('effective_personas'))} / " \
           f"{one(r['exemplars_used'], r.get('effective_exemplars'))}"


def _sweep(*temps: dict) -> dict[str, dict]:
    """The val FIDs of several sweeps, merged per run (a later sweep adds its grid points)."""
    out: dict[str, dict] = {}
    for t in temps:
        for run, fids in t["val_fid"].items():
            out.setdefault(run, {}).update(fids)
    return out


def _test(r: dict, vendi: bool = True) -> list[str]:
    out = [ci(r, "fid"), ci(r, "mauve", 3), ci(r, "kl_cosine")]
    return out + [f"{r['diversity']['vendi']:.1f}"] if vendi else out


def _chosen(t: dict, run: str) -> str:
    return f"{t['chosen'][run]:.1f}"


G = "smollm2-135m:{}"


@table("guardian_tau06_gate", "gate_diagnosis_guardian_tau06.json", "fidelity_guardian_tau_temperatures.json",
       "fidelity_guardian_tau12_temperatures.json", "fidelity_guardian_tau06_temperatures.json",
       "fidelity_guardian_tau.json", "fidelity_guardian_tau06.json")
def guardian_tau06_gate(dg: dict, t: dict, t12: dict, t06: dict, tau: dict, tau06: dict) -> str:
    """Guardian: the gate trained at tau 0.6 beside the tau-1.0 gate, few-shot and the uniform gate."""
    sweep, grid = _sweep(t, t12), [*t["grid"], *t12["grid"]]
    g1, g6 = group(tau, "smollm2-135m", 408), group(tau06, "smollm2-135m", 408)
    K, pool = dg["meta"]["K"], dg["meta"]["pool"]
    rows = []
    for label, gate, fids, chosen, r in (
            ("trained at tau 1.0 (above)", "tau1.0", sweep[G.format("mop")], t["chosen"][G.format("mop")],
             row(g1, G.format("mop"))),
            ("trained at tau 0.6", "tau0.6", t06["val_fid"][G.format("mop")], t06["chosen"][G.format("mop")],
             row(g6, G.format("mop"))),
            ("few-shot (baseline, 0.6)", None, sweep[G.format("fewshot")], t["chosen"][G.format("fewshot")],
             row(g6, G.format("fewshot"))),
            ("uniform gate (0.6)", "", sweep[G.format("uniform")], t["chosen"][G.format("uniform")],
             row(g6, G.format("uniform")))):
        v = diag(dg, gate) if gate else None
        gate_cells = ([f"{mean(v, 'eff_personas'):.1f}", f"{mean(v, 'top_persona'):.2f}",
                       f"{mean(v, 'eff_exemplars'):.0f}"] if v else
                      ["–", "–", f"{pool:,} (uniform)"] if gate is None else
                      [str(K), f"{1 / K:.2f}", f"{pool:,}"])
        rows.append([label, *gate_cells, grid_cells(fids, grid, chosen), f"{chosen:.1f}", *_test(r)])
    grid_s = " / ".join(f"{x:.1f}" for x in grid)
    return markdown_table(["gate", "eff. personas (val)", "top persona", "eff. exemplars (val)",
                           f"val FID at {grid_s}", "chosen", "test FID [95% CI]", "test MAUVE [95% CI]",
                           "test KL-cos [95% CI]", "Vendi"], rows)


@table("rt_tau06_gate", "gate_diagnosis_fidelity_tau06.json", "fidelity_scale_tau_val_temperatures.json",
       "fidelity_scale_tau06_temperatures.json", "fidelity_scale.json", "fidelity_scale_tau06.json")
def rt_tau06_gate(dg: dict, t: dict, t06: dict, committed: dict, tau06: dict) -> str:
    """Rotten Tomatoes: the gate trained at tau 0.6 beside the committed gate, few-shot, the uniform gate."""
    g1, g6 = group(committed, "smollm2-135m", 1000), group(tau06, "smollm2-135m", 1000)
    K, pool = dg["meta"]["K"], dg["meta"]["pool"]
    uni = diag(dg, "tau1.0")["label_match_uniform"]
    rows = []
    for label, gate, fids, chosen, r in (
            ("trained at tau 1.0 (committed)", "tau1.0", t["val_fid"][G.format("mop")],
             t["chosen"][G.format("mop")],
             row(g1, G.format("mop"))),
            ("trained at tau 0.6", "tau0.6", t06["val_fid"][G.format("mop")], t06["chosen"][G.format("mop")],
             row(g6, G.format("mop"))),
            ("few-shot (1.0)", None, t["val_fid"][G.format("fewshot")], t["chosen"][G.format("fewshot")],
             row(g6, G.format("fewshot"))),
            ("uniform gate (1.0 on test)", "", t["val_fid"][G.format("uniform")],
             t["chosen"][G.format("uniform")],
             row(g6, G.format("uniform")))):
        v = diag(dg, gate) if gate else None
        gate_cells = ([f"{mean(v, 'eff_personas'):.1f}", f"{mean(v, 'eff_exemplars'):.1f}",
                       f"{mean(v, 'label_match'):.3f}"] if v else
                      ["–", f"{pool:,} (uniform)", f"{uni:.3f}"] if gate is None else
                      [str(K), f"{pool:,}", f"{uni:.3f}"])
        rows.append([label, *gate_cells, grid_cells(fids, t["grid"], chosen), f"{chosen:.1f}",
                     *_test(r, vendi=False)])
    return markdown_table(["RT gate", "eff. personas (val)", "eff. exemplars / context (val)",
                           f"label-match (uniform {uni:.3f})",
                           "val FID at " + " / ".join(f"{x:.1f}" for x in t["grid"]), "chosen",
                           "test FID [95% CI]", "test MAUVE [95% CI]", "test KL-cos [95% CI]"], rows)


@table("guardian_null", "gate_diagnosis_guardian.json", "gate_diagnosis_guardian_null.json",
       "gate_diagnosis_guardian_null06.json", "fidelity_guardian_tau_temperatures.json",
       "fidelity_guardian_tau12_temperatures.json", "fidelity_guardian_null_temperatures.json",
       "fidelity_guardian_null06_temperatures.json", "fidelity_guardian.json", "fidelity_guardian_null.json",
       "fidelity_guardian_null06.json")
def guardian_null(d20: dict, dnull: dict, dnull06: dict, t: dict, t12: dict, tn: dict, tn06: dict,
                  committed: dict, null: dict, null06: dict) -> str:
    """Guardian: the gate with a persona-free component (trained at tau 1.0, 0.6) beside the committed one."""
    sweep, grid = _sweep(t, t12), [*t["grid"], *t12["grid"]]
    mop, few = G.format("mop"), G.format("fewshot")
    rows = []
    for label, v, fids, chosen, r in (
            ("20 personas (committed)", diag(d20, "trained"), sweep[mop], t["chosen"][mop],
             row(group(committed, "smollm2-135m", 408), mop)),
            ("20 personas + persona-free", diag(dnull, "null"), tn["val_fid"][mop], tn["chosen"][mop],
             row(group(null, "smollm2-135m", 408), mop)),
            ("20 personas + persona-free, trained at tau 0.6", diag(dnull06, "null_tau0.6"),
             tn06["val_fid"][mop], tn06["chosen"][mop], row(group(null06, "smollm2-135m", 408), mop)),
            ("few-shot (0.6)", None, sweep[few], t["chosen"][few],
             row(group(null, "smollm2-135m", 408), few))):
        gate_cells = ([f"{mean(v, 'eff_personas'):.1f}",
                       f"{mean(v, 'null_persona'):.2f}" if "null_persona" in v else "–",
                       f"{mean(v, 'eff_exemplars'):.0f}"] if v else
                      ["–", "–", f"{d20['meta']['pool']:,} (uniform)"])
        rows.append([label, *gate_cells, grid_cells(fids, grid, chosen), f"{chosen:.1f}", *_test(r)])
    return markdown_table(["gate", "eff. personas (val)", "persona-free mass", "eff. exemplars (val)",
                           "val FID at " + " / ".join(f"{x:.1f}" for x in grid), "chosen",
                           "test FID [95% CI]", "test MAUVE [95% CI]", "test KL-cos [95% CI]", "Vendi"], rows)


@table("gate_t_val", "fidelity_guardian_gt_temperatures.json", "fidelity_guardian_tau_temperatures.json",
       "fidelity_scale_gt_temperatures.json", "fidelity_scale_tau_val_temperatures.json")
def gate_t_val(gg: dict, gb: dict, rg: dict, rb: dict) -> str:
    """Val FID of MoP per gate temperature and tau, both populations, beside the two best baselines on val."""
    rows = []
    taus = sorted({*gg["grid"], *rg["grid"]})
    for population, t, base in (("Guardian", gg, gb), ("Rotten Tomatoes", rg, rb)):
        mop = G.format("mop")
        by_t = t["val_fid_by_gate_temperature"][mop]
        T, tau = t["chosen_gate_temperature"][mop], t["chosen"][mop]
        best = sorted(((min(v.values()), run, base["chosen"][run]) for run, v in base["val_fid"].items()
                       if run != mop))[:2]
        for i, gt in enumerate(t["gate_temperature_grid"]):
            fids = by_t[f"{gt:g}"]
            cells = []
            for x in taus:
                f = fids.get(f"{x:.1f}")
                chosen = gt == T and x == tau
                cells.append("–" if f is None else f"**{f:.4f}** (chosen)" if chosen else f"{f:.4f}")
            name = f"**{gt:g}**" if gt == T else f"{gt:g}"
            rows.append([population, name + (" (trained)" if gt == 1 else ""), *cells,
                         ", ".join(f"{_short(split_run(run)[1])} {v:.4f} ({c:.1f})" for v, run, c in best)
                         if i == 0 else ""])
    return markdown_table(["population", "gate T", *(f"tau {x:.1f}" for x in taus), "best baseline on val"],
                          rows)


@table("rt_gt05", "fidelity_scale_gt05.json")
def rt_gt05(result: dict) -> str:
    """Rotten Tomatoes: MoP with the gate sharpened (T 0.5), re-evaluated beside the committed sets."""
    labels = {"mop-gate0.5": "MoP, gate T 0.5, tau 1.0", "mop": "MoP, trained gate (T 1), tau 1.0",
              "uniform": "the uniform gate, tau 1.0", "fewshot": "few-shot, tau 1.0"}
    by = {r["name"]: r for r in result["rows"]}
    rows = [[label, ci(by[G.format(m)], "fid"), ci(by[G.format(m)], "mauve", 3),
             ci(by[G.format(m)], "kl_cosine"), ci(by[G.format(m)], "f1", 3),
             f"{by[G.format(m)]['diversity']['vendi']:.1f}"] for m, label in labels.items()]
    ref = result["reference"]
    rows.append(["real training texts (reference)", ci(ref, "fid"), ci(ref, "mauve", 3), ci(ref, "kl_cosine"),
                 ci(ref, "f1", 3), f"{ref['diversity']['vendi']:.1f}"])
    return markdown_table(["set", "FID ↓ [95% CI]", "MAUVE ↑ [95% CI]", "KL-cos ↓ [95% CI]", "F1 ↑ [95% CI]",
                           "Vendi"], rows)


@table("rt_label", "fidelity_scale_label.json", "fidelity_scale_gt.json")
def rt_label(label: dict, committed: dict) -> str:
    """Rotten Tomatoes: every exemplar drawn with the context's label (MoP, few-shot, the uniform gate)."""
    cols = ["method", "FID ↓ [95% CI]", "MAUVE ↑ [95% CI]", "KL-cos ↓ [95% CI]", "F1 ↑ [95% CI]", "exemplars",
            "exemplar label match"]
    g, gc = group(label, "smollm2-135m", 1000), group(committed, "smollm2-135m", 1000)
    rows, raws = [], []
    for grp, m, name in ((g, "mop", "MoP, label-matched, T {T:g}, tau {tau:.1f}"),
                         (g, "fewshot", "few-shot, label-matched, tau {tau:.1f}"),
                         (g, "uniform", "uniform gate, label-matched, tau {tau:.1f}"),
                         (g, "persona", "persona only, tau {tau:.1f} (no exemplar)"),
                         (gc, "mop", "MoP, whole pool, T {T:g} (table above)")):
        r = row(grp, G.format(m))
        rows.append({**cells(grp, r["name"], label=name.format(T=r.get("gate_temperature", 1.0),
                                                               tau=r.get("temperature", 1.0))),
                     "exemplars": _exemplars(r)})
        raws.append(r if grp is g else None)
    bold_best(cols, rows, raws)
    rows.append({**reference(g), "exemplars": "–"})
    return render_rows(cols, rows, ["set", *cols[1:5], "exemplars used (effective)", cols[6]])


@table("rt_topp", "fidelity_scale_topp_choice.json", "fidelity_scale_topp.json", "fidelity_scale.json")
def rt_topp(choice: dict, topp: dict, committed: dict) -> str:
    """Rotten Tomatoes: each method's top-p (0.9 or 1.0) chosen on val, its test FID beside top-p 1.0's."""
    g, gc = group(topp, "smollm2-135m", 1000), group(committed, "smollm2-135m", 1000)
    rows = []
    for run, c in choice["runs"].items():
        v, p = c["val_fid"], c["chosen_top_p"]
        r = row(g, run)
        rows.append([_short(split_run(run)[1]),
                     " / ".join(f"**{v[k]:.4f}**" if float(k) == p else f"{v[k]:.4f}"
                                for k in ("0.9", "1.0")),
                     f"{p:.1f}", ci(r, "fid"), f"{row(gc, run)['fid']:.4f}"])
    return markdown_table(["method (MiniLM)", "val FID, top-p 0.9 / 1.0 (n = 200)", "chosen",
                           "test FID at the choice [95% CI] (n = 1,000)", "test FID at top-p 1.0"], rows)


QUICK = {"mop": "MoP", "zerogen": "ZeroGen", "attrprompt": "AttrPrompt", "persona": "persona only",
         "fewshot": "few-shot (random exemplar)", "uniform": "MoP, untrained (uniform gate)",
         "mop-no-exemplar": "ablation: MoP without exemplars",
         "mop-random-persona": "ablation: MoP, random persona"}


@table("quickstart", "fidelity.json")
def quickstart(result: dict) -> str:
    """The quickstart-scale benchmark: every LM's sets, the reference and the target, point figures."""
    rows = []
    for g in result["groups"]:
        for r in g["rows"]:
            model, method = split_run(r["name"])
            rows.append([model, QUICK[method], str(r["n"]), f"{r['fid']:.4f}",
                         f"{r['mauve']:.3f} ± {r['mauve_std']:.3f}", f"{r['kl_cosine']:.4f}",
                         f"{r['f1']:.3f}",
                         f"{r['personas_used']} / {r['exemplars_used']}", str(r["mean_words"])])
        rows.append(["–", "real training reviews (reference)", str(g["reference"]["n"]), "–", "–", "–",
                     f"{g['reference']['f1']:.3f}", "–", "–"])
        rows.append(["–", "real test reviews (the target)", str(g["n"]), "0", "1", "0", "–", "–",
                     str(g["real_words"])])
    return markdown_table(["LM", "method", "n", "FID ↓", "MAUVE ↑", "KL-cos ↓", "F1 ↑",
                           "personas / exemplars used", "words"], rows)


def _fid_inf_below(x: float, few: float) -> str:
    d = 1 - x / few
    return f"{d:.1%}" if d >= 0 else f"{-d:.1%} above"


@table("decompose", "fidelity_gap_decompose.json", "fidelity_gap_decompose_guardian_tau.json",
       "fidelity_gap_decompose_guardian_gt.json", "fidelity_gap_decompose_scale_gemma_tg_gemma.json")
def decompose(rt: dict, gtau: dict, ggt: dict, gemma: dict) -> str:
    """FID split into its mean term, and FID∞, per set (RT, Guardian, Gemma on RT), against few-shot's."""
    def sets(result):
        return {r["set"].split("__")[-1] if "__" in r["set"] else "ref": r for r in result["rows"]}

    def share(r):
        return f"{r['mean_term'] / r['fid']:.0%}"

    def line(label, r, few):
        return [label, f"{r['fid']:.4f}", f"{r['mean_term']:.4f} ({share(r)})",
                f"{r['fid_inf']:.4f} ± {r['fid_inf_std_over_5_seeds']:.4f}",
                "–" if r is few else _fid_inf_below(r["fid_inf"], few["fid_inf"])]

    def joined(label, rs, few):
        return [label, " / ".join(f"{r['fid']:.4f}" for r in rs), " / ".join(share(r) for r in rs),
                " / ".join(f"{r['fid_inf']:.4f}" for r in rs),
                " / ".join("–" if r is few else _fid_inf_below(r["fid_inf"], few["fid_inf"]) for r in rs)]

    r, gt, gg, gm = sets(rt), sets(gtau), sets(ggt), sets(gemma)
    rows = [line(f"RT, real training texts (reference), n = {rt['n']:,}", r["ref"], r["fewshot"]),
            line("RT, MoP", r["mop"], r["fewshot"]), line("RT, the uniform gate", r["uniform"], r["fewshot"]),
            line("RT, few-shot", r["fewshot"], r["fewshot"]),
            joined("RT, persona only / AttrPrompt / ZeroGen", [r["persona"], r["attrprompt"], r["zerogen"]],
                   r["fewshot"]),
            line(f"Guardian, real training texts (reference), n = {gtau['n']}", gt["ref"], gt["fewshot"]),
            line("Guardian, few-shot (tau 0.6, chosen on val)", gt["fewshot"], gt["fewshot"]),
            line("Guardian, MoP (gate temperature T 2, tau 0.6, both chosen on val)", gg["mop"],
                 gt["fewshot"]),
            line(f"Gemma on RT, real training texts, n = {gemma['n']}", gm["ref"], gm["fewshot"]),
            joined("Gemma, MoP at T 2 / AttrPrompt (the best) / few-shot",
                   [gm["mop"], gm["attrprompt"], gm["fewshot"]], gm["fewshot"])]
    return markdown_table(["set (MiniLM)", "FID", "mean term (share)", "FID∞", "FID∞ below few-shot's"], rows)


def _mop(result: dict, model: str = "smollm2-135m", n: int = 1000) -> dict:
    return row(group(result, model, n), f"{model}:mop")


def _committed_mop(result: dict, dec: dict) -> dict:
    """The committed RT MoP set, its FID∞ from fidelity_gap.py decompose (fidelity_scale.json has none)."""
    (inf,) = [r["fid_inf"] for r in dec["rows"] if r["set"] == "smollm2-135m__mop"]
    return {**_mop(result), "fid_inf": inf}


def _fid(result: dict, method: str, model: str = "smollm2-135m", n: int = 1000) -> float:
    return row(group(result, model, n), f"{model}:{method}")["fid"]


def _val(v: dict) -> str:
    return f"{mean(v, 'eff_personas'):.2f} / {mean(v, 'top_persona'):.3f}"


def _exs(v: dict, t: dict) -> str:
    return f"{mean(v, 'eff_exemplars'):.1f} / {mean(t, 'eff_exemplars'):.1f}"


def _lm(v: dict, t: dict) -> str:
    return f"{mean(v, 'label_match'):.3f} / {mean(t, 'label_match'):.3f}"


def _lm_uniform(v: dict, t: dict) -> str:
    return f"{v['label_match_uniform']:.3f} / {t['label_match_uniform']:.3f}"


def _texts(r: dict) -> str:
    return f"{r['exemplars_used']} ({r['effective_exemplars']})"


def _vs(label: str, left: str, right: str) -> list[str]:
    return [label, left, right]


def _row_of(rows: dict[str, list[str]], start: str) -> list[str]:
    (key,) = [k for k in rows if k.startswith(start)]
    return rows[key]


def _variant(head: list[str], d1: tuple, d2: tuple, c: dict, v: dict, p1: dict, p2: dict, against: str,
             label2: str, cg: dict, vg: dict, pg: dict, dec: dict) -> list[list[str]]:
    """The rows an RT training variant shares with the committed gate: the gate (val / test diagnosis), MoP's
    test figures, the paired differences against the baselines and the committed MoP, the Gemma transfer."""
    (v1, t1), (v2, t2) = d1, d2
    m1, m2 = _committed_mop(c, dec), _mop(v)
    q1, q2 = by_set(p1), by_set(p2)
    gm1, gm2 = _mop(cg, "gemma3-270m", 200), _mop(vg, "gemma3-270m", 200)
    att = row(group(vg, "gemma3-270m", 200), "gemma3-270m:attrprompt")
    qg = by_set(pg)["samples/gemma3-270m__attrprompt"]
    e1, first = q2["e1_sets/smollm2-135m__mop"], head[1].split(" (")[0]
    return [
        _vs("train NLL per record, epoch mean", f"{c['gate_metrics']['train/nll_epoch']:.3f}",
            f"{v['gate_metrics']['train/nll_epoch']:.3f}"),
        _vs("effective personas / top-persona share (val, per context)", _val(v1), _val(v2)),
        _vs("effective exemplars per val context / over the split",
            f"{mean(v1, 'eff_exemplars'):.1f} / {v1['eff_exemplars_global']:.1f}",
            f"{mean(v2, 'eff_exemplars'):.1f} / {v2['eff_exemplars_global']:.1f}"),
        _vs(f"label-match mass (val; uniform Omega {v1['label_match_uniform']:.3f}) / test",
            f"{mean(v1, 'label_match'):.3f} / {mean(t1, 'label_match'):.3f}",
            f"{mean(v2, 'label_match'):.3f} / {mean(t2, 'label_match'):.3f}"),
        _vs("MoP FID [95% CI]", ci(m1, "fid"), ci(m2, "fid")),
        _vs("MoP FID∞ / MAUVE [95% CI]", f"{m1['fid_inf']:.4f} / {ci(m1, 'mauve', 3)}",
            f"{m2['fid_inf']:.4f} / {ci(m2, 'mauve', 3)}"),
        _vs("MoP KL-cos [95% CI]", ci(m1, "kl_cosine"), ci(m2, "kl_cosine")),
        _vs("exemplars in MoP's 1,000 texts (effective) / Vendi / mean words",
            f"{_texts(m1)} / {m1['diversity']['vendi']:.1f} / {m1['mean_words']}",
            f"{_texts(m2)} / {m2['diversity']['vendi']:.1f} / {m2['mean_words']}"),
        _vs(f"paired FID difference, {label2} minus: the uniform gate",
            f"{pdiff(q1['smollm2-135m__uniform'])} ({first} minus)",
            pdiff(q2["samples/smollm2-135m__uniform"])),
        _vs("... few-shot / persona-only",
            f"{pdiff(q1['smollm2-135m__fewshot'])} / {pdiff(q1['smollm2-135m__persona'])} ({first} minus)",
            f"{pdiff(q2['samples/smollm2-135m__fewshot'])} / {pdiff(q2['samples/smollm2-135m__persona'])}"),
        _vs(f"... MoP {against}", "–",
            f"{pdiff(e1)} (KL-cos {pdiff(e1, 'kl_cosine')})"),
        _vs("Gemma (n = 200), the gate transferred: MoP FID", ci(gm1, "fid"),
            f"{ci(gm2, 'fid')} (AttrPrompt {att['fid']:.4f}; paired {pdiff(qg)})"),
    ]


@table("rt_e2", "val_nll_s16.md", "gate_diagnosis_e2.json", "fidelity_scale.json", "fidelity_e2.json",
       "fidelity_gap_paired.json", "fidelity_gap_paired_e2.json", "fidelity_e2_gemma.json",
       "fidelity_gap_paired_e2_gemma.json", "fidelity_gap_decompose.json")
def rt_e2(nll: str, dg: dict, c: dict, e2: dict, p1: dict, p2: dict, e2g: dict, pg: dict, dec: dict) -> str:
    """Rotten Tomatoes: the gate after a second epoch beside the committed one-epoch gate."""
    head = ["RT, n = 1,000 (MiniLM)", "1 epoch (committed)", "2 epochs"]
    untrained = md_table(nll)["untrained (uniform)"][1]
    rows = [_vs(f"validation NLL per token (8-pair estimate; untrained {untrained})", val_nll(c),
                val_nll(e2))]
    rows += _variant(head, (diag(dg, "epoch1"), diag(dg, "epoch1", "test")),
                     (diag(dg, "epoch2"), diag(dg, "epoch2", "test")), c, e2, p1, p2, "after 1 epoch",
                     "2 epochs", c, e2g, pg, dec)
    return markdown_table(head, rows)


@table("rt_s16", "val_nll_s16.md", "gate_diagnosis_s16.json", "fidelity_scale.json", "fidelity_s16.json",
       "fidelity_gap_paired.json", "fidelity_gap_paired_s16.json", "fidelity_s16_gemma.json",
       "fidelity_gap_paired_s16_gemma.json", "fidelity_gap_decompose.json")
def rt_s16(nll: str, dg: dict, c: dict, s16: dict, p1: dict, p2: dict, sg: dict, pg: dict, dec: dict) -> str:
    """Rotten Tomatoes: the gate trained with 16 exploration pairs beside the committed S = 8 gate."""
    head = ["RT, n = 1,000 (MiniLM)", "S = 8 (committed)", "S = 16"]
    t = md_table(nll)
    rows = [_vs(f"validation NLL per token, 8-pair estimate (untrained {t['untrained (uniform)'][1]})",
                val_nll(c), val_nll(s16)),
            _vs(f"... re-validated with a 32-pair estimate (untrained {t['untrained (uniform)'][2]})",
                _row_of(t, "S = 8, 1 epoch")[2], t["S = 16, 1 epoch"][2])]
    rows += _variant(head, (diag(dg, "epoch1_S8"), diag(dg, "epoch1_S8", "test")),
                     (diag(dg, "epoch1_S16"), diag(dg, "epoch1_S16", "test")), c, s16, p1, p2, "with S = 8",
                     "S = 16", c, sg, pg, dec)
    return markdown_table(head, rows)


def _lever(dec, c, v, dc, dv, p1, p2, paired_against):
    """The rows of a pool or data-size variant against the committed gate (its own baselines if any)."""
    (v1, t1), (v2, t2) = dc, dv
    m1, m2 = _committed_mop(c, dec), _mop(v)
    q1, q2 = by_set(p1), by_set(p2)
    k = q2["k20/smollm2-135m__mop"]
    return [
        _vs("validation NLL per token (8-pair estimate), trained", val_nll(c), val_nll(v)),
        _vs("effective personas per val context / top-persona share", _val(v1), _val(v2)),
        _vs("effective exemplars per context, val / test", _exs(v1, t1), _exs(v2, t2)),
        _vs("distinct top persona / top exemplar over the val contexts",
            f"{v1['distinct_top_personas']} / {v1['distinct_top_exemplars']}",
            f"{v2['distinct_top_personas']} / {v2['distinct_top_exemplars']}"),
        _vs("label-match mass, val / test (uniform Omega: in brackets)",
            f"{_lm(v1, t1)} ({_lm_uniform(v1, t1)})", f"{_lm(v2, t2)} ({_lm_uniform(v2, t2)})"),
        _vs("in MoP's 1,000 texts: personas / exemplars used (effective)", used(m1), used(m2)),
        _vs("MoP FID [95% CI] / FID∞", f"{ci(m1, 'fid')} / {m1['fid_inf']:.4f}",
            f"{ci(m2, 'fid')} / {m2['fid_inf']:.4f}"),
        _vs("MoP MAUVE / KL-cos [95% CI]", f"{ci(m1, 'mauve', 3)} / {ci(m1, 'kl_cosine')}",
            f"{ci(m2, 'mauve', 3)} / {ci(m2, 'kl_cosine')}"),
        _vs("the uniform gate / few-shot / persona only, FID",
            " / ".join(f"{_fid(c, m):.4f}" for m in ("uniform", "fewshot", "persona")),
            " / ".join(f"{_fid(v, m):.4f}" for m in ("uniform", "fewshot", "persona"))),
        _vs("paired FID difference, MoP minus: the uniform gate", pdiff(q1["smollm2-135m__uniform"]),
            pdiff(q2["samples/smollm2-135m__uniform"])),
        _vs("... few-shot / persona only",
            f"{pdiff(q1['smollm2-135m__fewshot'])} / {pdiff(q1['smollm2-135m__persona'])}",
            f"{pdiff(q2['samples/smollm2-135m__fewshot'])} / {pdiff(q2['samples/smollm2-135m__persona'])}"),
        _vs(f"... {paired_against}", "–", f"{pdiff(k)} (KL-cos {pdiff(k, 'kl_cosine')})"),
    ]


@table("rt_pool2k", "gate_diagnosis_gemma_trained.json", "gate_diagnosis_pool2k.json", "fidelity_scale.json",
       "fidelity_pool2k.json", "fidelity_gap_paired.json", "fidelity_gap_paired_pool2k.json",
       "fidelity_gap_decompose.json")
def rt_pool2k(dc: dict, dv: dict, c: dict, v: dict, p1: dict, p2: dict, dec: dict) -> str:
    """Rotten Tomatoes: the gate trained with a pool of 2,000 exemplars beside the committed 1,000 pool."""
    return markdown_table(["RT, SmolLM2, n = 1,000 (MiniLM)", "pool of 1,000 (committed)", "pool of 2,000"],
                          _lever(dec, c, v, (diag(dc, "smollm2_S8"), diag(dc, "smollm2_S8", "test")),
                                 (diag(dv, "pool2k"), diag(dv, "pool2k", "test")), p1, p2,
                                 "the 1,000-pool MoP gate"))


@table("rt_rec4k", "gate_diagnosis_gemma_trained.json", "gate_diagnosis_rec4k.json", "fidelity_scale.json",
       "fidelity_rec4k.json", "fidelity_gap_paired.json", "fidelity_gap_paired_rec4k.json",
       "fidelity_gap_decompose.json")
def rt_rec4k(dc: dict, dv: dict, c: dict, v: dict, p1: dict, p2: dict, dec: dict) -> str:
    """Rotten Tomatoes: the gate trained on 4,000 records (its own baselines) beside the committed gate."""
    return markdown_table(["RT, SmolLM2, n = 1,000 (MiniLM)", "2,000 records (committed)", "4,000 records"],
                          _lever(dec, c, v, (diag(dc, "smollm2_S8"), diag(dc, "smollm2_S8", "test")),
                                 (diag(dv, "rec4k"), diag(dv, "rec4k", "test")), p1, p2,
                                 "the 2,000-record MoP gate"))


def _gemma_cmp(a: dict, b: dict) -> dict[str, str]:
    """Point differences of set ``a``'s MoP FID from each baseline of result ``b`` (unpaired)."""
    return {m: f"{a['fid'] - _fid(b, m, 'gemma3-270m', 200):+.4f}" for m in BASELINES}


@table("rt_gemma_trained", "val_nll_gemma_trained.md", "gate_diagnosis_gemma_trained.json",
       "fidelity_scale.json", "fidelity_gemma_trained.json", "fidelity_gap_paired_gemma_trained.json",
       "fidelity_gemma_trained_smol.json", "fidelity_gap_paired_gemma_trained_smol.json")
def rt_gemma_trained(nll: str, dg: dict, c: dict, v: dict, pv: dict, smol: dict, ps: dict) -> str:
    """Rotten Tomatoes with Gemma: the gate trained on Gemma beside the SmolLM2 gate transferred."""
    t = md_table(nll)
    (v1, t1), (v2, t2) = [(diag(dg, g), diag(dg, g, "test")) for g in ("smollm2_S8", "gemma_S8")]
    m1, m2 = _mop(c, "gemma3-270m", 200), _mop(v, "gemma3-270m", 200)
    q, qs = by_set(pv), by_set(ps)
    d1 = _gemma_cmp(m1, v)
    tr, sm = q["e1_sets/gemma3-270m__mop"], qs["e1_sets/smollm2-135m__mop"]
    s1, s2 = _mop(c), _mop(smol)

    def fids(ms):
        return " / ".join(f"{_fid(v, m, 'gemma3-270m', 200):.4f}" for m in ms)

    rows = [
        _vs(f"validation NLL per token under Gemma (untrained {t['untrained (uniform)'][1]})",
            t["trained on SmolLM2"][1], t["trained on Gemma"][1]),
        _vs(f"... under SmolLM2 (untrained {t['untrained (uniform)'][0]})", t["trained on SmolLM2"][0],
            t["trained on Gemma"][0]),
        _vs("effective personas (val / test, per context)",
            f"{mean(v1, 'eff_personas'):.2f} / {mean(t1, 'eff_personas'):.2f}",
            f"{mean(v2, 'eff_personas'):.2f} / {mean(t2, 'eff_personas'):.2f}"),
        _vs("effective exemplars per context (val / test)", _exs(v1, t1), _exs(v2, t2)),
        _vs("label-match mass, val / test (uniform Omega: in brackets)",
            f"{_lm(v1, t1)} ({_lm_uniform(v1, t1)})",
            f"{_lm(v2, t2)} ({_lm_uniform(v2, t2)})"),
        _vs("MoP FID [95% CI] / FID∞", f"{ci(m1, 'fid')} / {_num(m1.get('fid_inf'), 4)}",
            f"{ci(m2, 'fid')} / {_num(m2.get('fid_inf'), 4)}"),
        _vs("MoP MAUVE [95% CI]", ci(m1, "mauve", 3), ci(m2, "mauve", 3)),
        _vs("MoP KL-cos [95% CI] / F1", f"{ci(m1, 'kl_cosine')} / {m1['f1']:.3f}",
            f"{ci(m2, 'kl_cosine')} / {m2['f1']:.3f}"),
        _vs("personas / exemplars in MoP's 200 texts (effective)", used(m1), used(m2)),
        _vs("paired FID difference, Gemma-trained minus: the transferred gate", "–",
            f"{pdiff(tr)} (KL-cos {pdiff(tr, 'kl_cosine')})"),
        _vs(f"... AttrPrompt / persona-only / ZeroGen (FID {fids(('attrprompt', 'persona', 'zerogen'))})",
            " / ".join(d1[m] for m in ("attrprompt", "persona", "zerogen")) + " (unpaired)",
            " / ".join(pdiff(q[f"samples/gemma3-270m__{m}"]) for m in ("attrprompt", "persona", "zerogen"))),
        _vs(f"... few-shot / the uniform gate (FID {fids(('fewshot', 'uniform'))})",
            " / ".join(d1[m] for m in ("fewshot", "uniform")) + " (unpaired)",
            " / ".join(pdiff(q[f"samples/gemma3-270m__{m}"]) for m in ("fewshot", "uniform"))),
        _vs("paired KL-cos difference vs AttrPrompt / ZeroGen / few-shot", "–",
            " / ".join(pdiff(q[f"samples/gemma3-270m__{m}"], "kl_cosine") for m in ("attrprompt", "zerogen",
                                                                                     "fewshot"))),
        _vs("the other way: the gate sampled with SmolLM2 (n = 1,000): MoP FID / KL-cos",
            f"{s1['fid']:.4f} / {s1['kl_cosine']:.4f} (its own LM)",
            f"{ci(s2, 'fid')} / {s2['kl_cosine']:.4f}; paired against the SmolLM2 gate "
            f"{pdiff(sm)} (KL-cos {pdiff(sm, 'kl_cosine')}),"
            f" against the uniform gate {pdiff(qs['samples/smollm2-135m__uniform'])}"),
    ]
    return markdown_table(["RT, Gemma-3-270M, n = 200 (MiniLM)", "gate trained on SmolLM2 (transferred)",
                           "gate trained on Gemma"], rows)


@table("rt_gemma_trained_e2", "val_nll_gemma_trained_e2.md", "gate_diagnosis_gemma_trained_e2.json",
       "fidelity_gemma_trained.json", "fidelity_gemma_trained_e2.json",
       "fidelity_gap_paired_gemma_trained.json", "fidelity_gap_paired_gemma_trained_e2.json")
def rt_gemma_trained_e2(nll: str, dg: dict, c: dict, v: dict, p1: dict, p2: dict) -> str:
    """Rotten Tomatoes with Gemma: the Gemma-trained gate after a second epoch beside its first."""
    t = md_table(nll)
    (v1, t1), (v2, t2) = [(diag(dg, g), diag(dg, g, "test")) for g in ("gemma_epoch1", "gemma_epoch2")]
    m1, m2 = _mop(c, "gemma3-270m", 200), _mop(v, "gemma3-270m", 200)
    q1, q2 = by_set(p1), by_set(p2)
    e1 = q2["e1/gemma3-270m__mop"]

    def fids(ms):
        return " / ".join(f"{_fid(v, m, 'gemma3-270m', 200):.4f}" for m in ms)

    def diffs(q, ms):
        return " / ".join(pdiff(q[f"samples/gemma3-270m__{m}"]) for m in ms)

    un = t["untrained (uniform)"]
    one, two = _row_of(t, "trained on Gemma, 1 epoch"), _row_of(t, "trained on Gemma, 2")
    rows = [
        _vs(f"validation NLL per token under Gemma (untrained {un[0]}) / under SmolLM2 ({un[1]})",
            f"{one[0]} / {one[1]}", f"{two[0]} / {two[1]}"),
        _vs("effective personas / top-persona share (val, per context)", _val(v1), _val(v2)),
        _vs("effective exemplars per context, val / test", _exs(v1, t1), _exs(v2, t2)),
        _vs("label-match mass, val / test (uniform Omega: in brackets)",
            f"{_lm(v1, t1)} ({_lm_uniform(v1, t1)})",
            f"{_lm(v2, t2)} ({_lm_uniform(v2, t2)})"),
        _vs("MoP FID [95% CI] / FID∞", f"{ci(m1, 'fid')} / {m1['fid_inf']:.4f}",
            f"{ci(m2, 'fid')} / {m2['fid_inf']:.4f}"),
        _vs("MoP MAUVE [95% CI]", ci(m1, "mauve", 3), ci(m2, "mauve", 3)),
        _vs("MoP KL-cos [95% CI] / F1", f"{ci(m1, 'kl_cosine')} / {m1['f1']:.3f}",
            f"{ci(m2, 'kl_cosine')} / {m2['f1']:.3f}"),
        _vs("personas / exemplars in MoP's 200 texts (effective)", used(m1), used(m2)),
        _vs("paired FID difference, 2 epochs minus: 1 epoch", "–",
            f"{pdiff(e1)} (KL-cos {pdiff(e1, 'kl_cosine')})"),
        _vs(f"... AttrPrompt / persona-only / ZeroGen (FID {fids(('attrprompt', 'persona', 'zerogen'))})",
            diffs(q1, ("attrprompt", "persona", "zerogen")), diffs(q2, ("attrprompt", "persona", "zerogen"))),
        _vs(f"... few-shot / the uniform gate (FID {fids(('fewshot', 'uniform'))})",
            diffs(q1, ("fewshot", "uniform")), diffs(q2, ("fewshot", "uniform"))),
    ]
    return markdown_table(["RT, Gemma-3-270M, n = 200 (MiniLM)", "Gemma-trained, 1 epoch", "2 epochs"], rows)


@table("guardian_gemma_trained", "val_nll_guardian_gemma_trained.md",
       "gate_diagnosis_guardian_gemma_trained.json", "fidelity_guardian.json",
       "fidelity_guardian_gemma_trained.json",
       "fidelity_gap_paired_guardian_gemma_trained.json", "fidelity_guardian_gemma_trained_smol.json",
       "fidelity_gap_paired_guardian_gemma_trained_smol.json")
def guardian_gemma_trained(nll: str, dg: dict, c: dict, v: dict, pv: dict, smol: dict, ps: dict) -> str:
    """Guardian with Gemma: the gate trained on Gemma beside the SmolLM2 gate transferred."""
    t = md_table(nll)
    v1, v2 = diag(dg, "smollm2_S8"), diag(dg, "gemma_S8")
    m1, m2 = _mop(c, "gemma3-270m", 200), _mop(v, "gemma3-270m", 200)
    q, qs = by_set(pv), by_set(ps)
    s1, s2 = _mop(c, "smollm2-135m", 408), _mop(smol, "smollm2-135m", 408)
    tr = q["transferred/gemma3-270m__mop"]

    def base(m):
        return row(group(v, "gemma3-270m", 200), f"gemma3-270m:{m}")

    far = [q[f"samples/gemma3-270m__{m}"] for m in ("persona", "attrprompt", "zerogen")]
    rows = [
        _vs(f"validation NLL per token under Gemma (untrained {t['untrained (uniform)'][1]})",
            t["trained on SmolLM2"][1], t["trained on Gemma"][1]),
        _vs(f"... under SmolLM2 (untrained {t['untrained (uniform)'][0]})", t["trained on SmolLM2"][0],
            t["trained on Gemma"][0]),
        _vs("effective personas / exemplars per val context",
            f"{mean(v1, 'eff_personas'):.2f} / {mean(v1, 'eff_exemplars'):.1f}",
            f"{mean(v2, 'eff_personas'):.2f} / {mean(v2, 'eff_exemplars'):.1f}"),
        _vs("MoP FID [95% CI] / FID∞", f"{ci(m1, 'fid')} / {_num(m1.get('fid_inf'), 4)}",
            f"{ci(m2, 'fid')} / {_num(m2.get('fid_inf'), 4)}"),
        _vs("MoP MAUVE [95% CI]", ci(m1, "mauve", 3), ci(m2, "mauve", 3)),
        _vs("MoP KL-cos [95% CI]", ci(m1, "kl_cosine"), ci(m2, "kl_cosine")),
        _vs("personas / exemplars in MoP's 200 texts (effective)", used(m1), used(m2)),
        _vs("paired FID difference, Gemma-trained minus: the transferred gate", "–",
            f"{pdiff(tr)} (KL-cos {pdiff(tr, 'kl_cosine')})"),
        _vs(f"... few-shot (FID {base('fewshot')['fid']:.4f}, MAUVE {base('fewshot')['mauve']:.3f}) / the "
            f"uniform gate ({base('uniform')['fid']:.4f}, MAUVE {base('uniform')['mauve']:.3f})", "–",
            f"{pdiff(q['samples/gemma3-270m__fewshot'])} / {pdiff(q['samples/gemma3-270m__uniform'])}"),
        _vs("... persona-only / AttrPrompt / ZeroGen (FID "
            + " / ".join(f"{base(m)['fid']:.4f}" for m in ("persona", "attrprompt", "zerogen")) + ")", "–",
            " / ".join(psign(r) for r in far)
            + (" (each interval below 0)" if all(r["fid"]["ci95"][1] < 0 for r in far) else "")),
        _vs("the other way: the gate sampled with SmolLM2 (n = 408): MoP FID / KL-cos",
            f"{s1['fid']:.4f} / {s1['kl_cosine']:.4f} (its own LM)",
            f"{ci(s2, 'fid')} / {s2['kl_cosine']:.4f}; paired against the SmolLM2 gate "
            f"{pdiff(qs['smollm2_gate/smollm2-135m__mop'])}, against few-shot "
            f"{pdiff(qs['samples/smollm2-135m__fewshot'])}, against the uniform gate "
            f"{pdiff(qs['samples/smollm2-135m__uniform'])}"),
    ]
    return markdown_table(["Guardian, Gemma-3-270M, n = 200 (MiniLM)",
                           "gate trained on SmolLM2 (transferred)", "gate trained on Gemma"], rows)



# ------------------------------------------------------------------------------------------- docs/speed.md
GPU_LMS = (("llama3-8b", "bfloat16", "Llama-3-8B (the paper's LM)"),
           ("smollm2-135m", "float32", "SmolLM2-135M"), ("smollm2-135m", "bfloat16", "SmolLM2-135M"),
           ("gemma3-270m", "float32", "Gemma-3-270M"),
           ("gemma3-270m", "bfloat16", "Gemma-3-270M"))


@table("speed_gpu", "gpu_check/run1/scoring_speed_gpu_8b.json", "gpu_check/run2/scoring_speed_gpu_8b.json",
       "gpu_check/run1/scoring_speed_gpu.json", "gpu_check/run2/scoring_speed_gpu.json")
def speed_gpu(big1: dict, big2: dict, small1: dict, small2: dict) -> str:
    """On one GPU (the gpu_check runs 1 and 2): the scorer's pairs/s, its speed-up over naive HF, its MFU."""
    def find(results, model, dtype):
        (r,) = [r for r in results if r["model"].endswith("/" + model) and r["dtype"] == dtype]
        return r

    def pct(x):
        return f"{x:.0f}%" if x >= 1 else f"{x:.1f}%"

    rows = []
    for model, dtype, label in GPU_LMS:
        runs = (big1, big2) if model == "llama3-8b" else (small1, small2)
        a, b = (find(r["results"], model, dtype) for r in runs)
        rate = f"{a['pairs'] / a['scorer_s']:.0f} / {b['pairs'] / b['scorer_s']:.0f}"
        if model == "llama3-8b":
            rate = f"**{rate}** ({a['scorer_total_tok_s']:,.0f} / {b['scorer_total_tok_s']:,.0f} total tok/s)"
        rows.append([label, {"bfloat16": "bf16", "float32": "fp32"}[dtype], rate,
                     f"{a['speedup']:.2f}x / {b['speedup']:.2f}x",
                     f"{pct(a['scorer_pct_peak'])} / {pct(b['scorer_pct_peak'])}"])
    head = ["LM (shape)", "dtype", "scorer pairs/s, run 1 / run 2", "vs naive HF", "scorer MFU"]
    return markdown_table(head, rows)

# ------------------------------------------------------------------------------ docs/results.md: the survey
@table("survey_anes96", "survey_anes96.json")
def survey_anes96(result: dict) -> str:
    """ANES 1996 survey (benchmarks/survey.py): party id and vote, every method, references, paired diffs"""
    from survey import table as survey_tables

    return survey_tables(result)


# ---------------------------------------------------------------------------------------------- the blocks
def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render(name: str, results: Path = RESULTS) -> str:
    """The block ``name`` as it renders now from its source files."""
    spec = TABLES[name]
    missing = [s for s in spec.sources if not (results / s).exists()]
    if missing:
        raise FileNotFoundError(f"table {name!r}: source file(s) missing: "
                                + ", ".join(f"benchmarks/results/{s}" for s in missing))
    loaded = ((results / s).read_text() for s in spec.sources)  # .md sources: their text (see md_table)
    return spec.render(*(json.loads(t) if s.endswith(".json") else t for s, t in zip(spec.sources, loaded))
                       ).rstrip("\n") + "\n"


def blocks(text: str):
    """(name, body, line of the opening marker) of every block of a document's text; an opening marker
    without its closing one is an error."""
    found = list(BLOCK.finditer(text))
    if len(found) != len(OPEN.findall(text)):
        starts = {m.start() for m in found}
        bad = [text.count("\n", 0, m.start()) + 1 for m in OPEN.finditer(text) if m.start() not in starts]
        raise ValueError(f"table marker(s) at line(s) {bad} without a matching '<!-- /table -->'")
    return [(m["name"], m["body"], text.count("\n", 0, m.start()) + 1) for m in found]


def check(paths: list[Path], results: Path = RESULTS) -> list[str]:
    """One message per block that differs from its render (or cannot be rendered); empty: all agree."""
    problems = []
    for path in paths:
        text = path.read_text()
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        try:
            found = blocks(text)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        for name, body, line in found:
            if name not in TABLES:
                problems.append(f"{name} ({where}:{line}): unknown table name; known: {', '.join(TABLES)}")
                continue
            try:
                want = render(name, results)
            except (FileNotFoundError, KeyError, ValueError) as err:
                problems.append(f"{name} ({where}:{line}): cannot render: {err}")
                continue
            if body != want:
                have, new = body.splitlines(), want.splitlines()
                i = next((i for i, (a, b) in enumerate(zip(have, new)) if a != b), min(len(have), len(new)))
                problems.append(f"{name} ({where}:{line + 1 + i}): first differing line\n"
                                f"    document: {have[i] if i < len(have) else '(end of block)'}\n"
                                f"    rendered: {new[i] if i < len(new) else '(end of block)'}")
    return problems


def write(paths: list[Path], results: Path = RESULTS) -> list[str]:
    """Rewrite every known block in place; returns the names of the blocks changed."""
    changed = []
    for path in paths:
        text = path.read_text()
        blocks(text)  # refuses an unclosed marker

        def fill(m):
            want = render(m["name"], results)
            if m["body"] != want:
                changed.append(f"{m['name']} ({path.name})")
            return f"<!-- table: {m['name']} -->\n{want}<!-- /table -->"

        new = BLOCK.sub(fill, text)
        if new != text:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(new)
            tmp.replace(path)
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if any block differs from its render")
    mode.add_argument("--write", action="store_true", help="rewrite every block in place")
    mode.add_argument("--list", action="store_true", help="every table name, its sources and what it shows")
    p.add_argument("paths", nargs="*", type=Path, help="documents (default: README.md and docs/*.md)")
    args = p.parse_args(argv)
    paths = args.paths or documents()
    if args.list:
        for name, spec in TABLES.items():
            print(f"{name}: {spec.about} ({', '.join(spec.sources)})")
        return 0
    if args.write:
        unknown = [f"{n} ({path})" for path in paths for n, _, _ in blocks(path.read_text())
                   if n not in TABLES]
        if unknown:
            print("unknown table name(s): " + ", ".join(unknown), file=sys.stderr)
            return 1
        changed = write(paths)
        print(f"rewrote {len(changed)} block(s)" + (": " + ", ".join(changed) if changed else ""))
        return 0
    problems = check(paths)
    for msg in problems:
        print(msg)
    n = sum(len(blocks(path.read_text())) for path in paths)
    print(f"{n} block(s) checked, {len(problems)} differ" if problems
          else f"{n} block(s) agree with their sources")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
