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
    return spec.render(*(json.loads((results / s).read_text()) for s in spec.sources)).rstrip("\n") + "\n"


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
