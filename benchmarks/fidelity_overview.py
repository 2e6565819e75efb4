"""Every MoP gate tried at scale against the targets, in one figure and one table, from the committed results.

    python benchmarks/fidelity_overview.py --output benchmarks/results/fidelity_overview

Reads the result JSONs that ``benchmarks/fidelity.py`` wrote (``--results``, default benchmarks/results/)
and computes nothing new from texts: per panel (a population, an LM, a sample size, MiniLM), the baselines'
FID with their 95% bootstrap intervals, every MoP variant's, the real-training-texts reference and the FID
target (30% below the best baseline). A panel's baselines are the strongest measured version of each: where
a baseline was sampled at more than one temperature (tau 1.0, and the one chosen on val), the lower test FID.
Each variant is compared with the best of those *and* of its own result file's baselines (variants whose
baselines differ, K = 100's persona and uniform sets, face whichever is closer): a strict comparison, which
favours the baselines.
The table says whether its interval clears every baseline's (the "non-overlapping"
target) and by how much its FID is below the best one. A variant whose result file is missing is listed as
missing, not dropped. Writes OUTPUT.md, OUTPUT.json and OUTPUT.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

BASELINES = ("zerogen", "attrprompt", "persona", "fewshot", "uniform")
TARGET_RATIO = 0.30  # the fidelity issue's target: MoP's FID at least 30% below the best baseline's


@dataclass(frozen=True)
class Panel:
    title: str
    model: str
    n: int
    baselines: tuple[str, ...]  # result files with baseline rows: per method, the lowest FID among them
    variants: tuple[tuple[str, str], ...]  # (label, result file) -- each file's MoP row
    embedder: str = "minilm-l6"


PANELS = (
    Panel("Rotten Tomatoes, SmolLM2-135M, n = 1,000", "smollm2-135m", 1000,
          ("fidelity_scale.json", "fidelity_scale_gt.json"), (
        ("K 20, S 8, 1 epoch (main)", "fidelity_scale.json"),
        ("2 epochs", "fidelity_e2.json"),
        ("S 16 exploration pairs", "fidelity_s16.json"),
        ("K 100 personas", "fidelity_k100.json"),
        ("label-matched exemplars", "fidelity_scale_label.json"),
        ("label-matched in training", "fidelity_scale_labeltrain.json"),
        ("gate trained at tau 0.6", "fidelity_scale_tau06.json"),
        ("pool of 2,000 exemplars", "fidelity_pool2k.json"),
        ("4,000 training records", "fidelity_rec4k.json"),
        ("gate trained on Gemma", "fidelity_gemma_trained_smol.json"),
    )),
    Panel("Guardian headlines, SmolLM2-135M, n = 408", "smollm2-135m", 408,
          ("fidelity_guardian.json", "fidelity_guardian_gt.json"), (
              ("tau 1.0, T 1 (main)", "fidelity_guardian.json"),
              ("tau 0.6, T 2 (chosen on val)", "fidelity_guardian_gt.json"),
              ("gate trained at tau 0.6", "fidelity_guardian_tau06.json"),
              ("persona-free component", "fidelity_guardian_null06.json"),
              ("gate trained on Gemma", "fidelity_guardian_gemma_trained_smol.json"),
          )),
    Panel("Rotten Tomatoes, Gemma-3-270M, n = 200", "gemma3-270m", 200,
          ("fidelity_scale.json", "fidelity_scale_gemma_tg.json"), (
        ("SmolLM2 gate transferred", "fidelity_scale.json"),
        ("transferred, temperatures chosen on val", "fidelity_scale_gemma_tg.json"),
        ("gate trained on Gemma, 1 epoch", "fidelity_gemma_trained.json"),
        ("trained on Gemma, T chosen on val", "fidelity_gemma_trained_tg.json"),
        ("gate trained on Gemma, 2 epochs", "fidelity_gemma_trained_e2.json"),
    )),
    Panel("Guardian headlines, Gemma-3-270M, n = 200", "gemma3-270m", 200, ("fidelity_guardian.json",), (
        ("SmolLM2 gate transferred", "fidelity_guardian.json"),
        ("gate trained on Gemma", "fidelity_guardian_gemma_trained.json"),
    )),
)


def _group(result: dict, model: str, n: int, embedder: str, path: Path) -> dict:
    for group in result.get("groups", []):
        if group.get("n") == n and group.get("embedder") == embedder and any(
                r["name"].split(":")[0] == model for r in group.get("rows", [])):
            return group
    raise ValueError(f"{path}: no {model} group of n = {n} on {embedder}")


def _row(group: dict, model: str, method: str) -> dict | None:
    return next((r for r in group["rows"] if r["name"] == f"{model}:{method}" and "fid" in r), None)


def _fid(row: dict) -> dict:
    lo, hi = row["ci95"]["fid"]
    return {"fid": row["fid"], "lo": lo, "hi": hi}


def _baselines(group: dict, model: str) -> dict[str, dict]:
    return {m: _fid(r) for m in BASELINES if (r := _row(group, model, m)) is not None}


def panel_summary(panel: Panel, results: Path) -> dict:
    """The panel's baselines, reference and variants, each variant against the best baseline (see the module
    docstring). Raises if the panel's baseline file is missing; a missing variant file gives a row with
    ``missing`` set."""
    baselines: dict[str, dict] = {}
    ref = None
    for file in panel.baselines:
        path = results / file
        group = _group(json.loads(path.read_text()), panel.model, panel.n, panel.embedder, path)
        if file == panel.baselines[0]:
            ref = group.get("reference")
        for m, b in _baselines(group, panel.model).items():
            if m not in baselines or b["fid"] < baselines[m]["fid"]:
                baselines[m] = {**b, "file": file}
    if not baselines:
        raise ValueError(f"{', '.join(panel.baselines)}: no baseline rows for {panel.model} (n = {panel.n})")
    out = {"title": panel.title, "model": panel.model, "n": panel.n, "embedder": panel.embedder,
           "baselines": baselines, "reference": _fid(ref) if ref and "fid" in ref else None,
           "best_baseline": min(baselines, key=lambda m: baselines[m]["fid"]), "variants": []}
    out["target_fid"] = (1 - TARGET_RATIO) * baselines[out["best_baseline"]]["fid"]
    for label, file in panel.variants:
        vpath = results / file
        if not vpath.exists():
            out["variants"].append({"label": label, "file": file, "missing": True})
            continue
        group = _group(json.loads(vpath.read_text()), panel.model, panel.n, panel.embedder, vpath)
        mop = _row(group, panel.model, "mop")
        if mop is None:
            raise ValueError(f"{vpath}: no {panel.model}:mop row with an FID (n = {panel.n})")
        against = {**baselines}
        for m, b in _baselines(group, panel.model).items():  # the variant's own baselines where they differ
            if m not in against or b["fid"] < against[m]["fid"]:
                against[f"{m} ({file})"] = b
        best = min(against, key=lambda m: against[m]["fid"])
        v = {"label": label, "file": file, **_fid(mop), "best_baseline": best,
             "best_baseline_fid": against[best]["fid"]}
        v["below_best"] = 1 - v["fid"] / v["best_baseline_fid"]
        v["clear_of_every_baseline"] = all(v["hi"] < b["lo"] for b in against.values())
        v["meets_ratio"] = v["below_best"] >= TARGET_RATIO
        out["variants"].append(v)
    return out


def markdown(summaries: list[dict]) -> str:
    lines = ["# Every MoP gate tried at scale, against the FID targets (MiniLM, 95% bootstrap intervals)", "",
             "Generated by `python benchmarks/fidelity_overview.py` from the committed result JSONs. Target: "
             "an interval clear of every baseline's, and an FID at least 30% below the best baseline's. Each "
             "baseline at the temperature (tau 1.0 or its val choice) that gave it the lower test FID.", ""]
    for s in summaries:
        best = s["best_baseline"]
        lines += [f"## {s['title']}", "",
                  "baselines: " + ", ".join(f"{m} {b['fid']:.4f} [{b['lo']:.4f}, {b['hi']:.4f}] ({b['file']})"
                                            for m, b in sorted(s["baselines"].items(),
                                                               key=lambda kv: kv[1]["fid"])),
                  f"target FID (30% below {best}): {s['target_fid']:.4f}"
                  + (f"; real training texts {s['reference']['fid']:.4f}" if s["reference"] else ""), "",
                  "| MoP variant | FID [95% CI] | best baseline | below it "
                  "| interval clear of every baseline | 30% target |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for v in s["variants"]:
            if v.get("missing"):
                lines.append(f"| {v['label']} | missing ({v['file']}) | | | | |")
                continue
            lines.append(f"| {v['label']} | {v['fid']:.4f} [{v['lo']:.4f}, {v['hi']:.4f}] "
                         f"| {v['best_baseline']} {v['best_baseline_fid']:.4f} "
                         f"| {100 * v['below_best']:.1f}% | "
                         f"{'yes' if v['clear_of_every_baseline'] else 'no'} | "
                         f"{'met' if v['meets_ratio'] else 'not met'} |")
        lines.append("")
    return "\n".join(lines)


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [len(s["baselines"]) + len(s["variants"]) + 1 for s in summaries]
    fig, axes = plt.subplots(len(summaries), 1, figsize=(8, 0.32 * sum(heights) + 1.2 * len(summaries)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, s in zip(axes[:, 0], summaries):
        rows = [(f"{m}", b, "0.45") for m, b in sorted(s["baselines"].items(), key=lambda kv: -kv[1]["fid"])]
        rows += [(v["label"], v, "tab:blue") for v in reversed(s["variants"]) if not v.get("missing")]
        named = set()
        for y, (label, r, colour) in enumerate(rows):
            kind = "baselines" if colour == "0.45" else "MoP"
            ax.errorbar(r["fid"], y, xerr=[[r["fid"] - r["lo"]], [r["hi"] - r["fid"]]], fmt="o", color=colour,
                        capsize=3, ms=4, label=None if kind in named else kind)
            named.add(kind)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        ax.axvline(s["target_fid"], color="tab:red", ls=":", label="target (30% below the best baseline)")
        if s["reference"]:
            ax.axvline(s["reference"]["fid"], color="tab:green", ls="--", label="real training texts")
        ax.set_title(s["title"], fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    axes[-1, 0].set_xlabel("FID on MiniLM, 95% bootstrap interval (lower is closer)")
    legend = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=8)
    fig.tight_layout(rect=(0, 0.025, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results",
                   help="the folder of fidelity.py's result JSONs (default: benchmarks/results)")
    p.add_argument("--output", type=Path, required=True, help="writes OUTPUT.md, OUTPUT.json and OUTPUT.png")
    args = p.parse_args(argv)
    try:
        summaries = [panel_summary(panel, args.results) for panel in PANELS]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(summaries)
    args.output.with_suffix(".md").write_text(text + "\n")
    args.output.with_suffix(".json").write_text(json.dumps(summaries, indent=1) + "\n")
    plot(summaries, args.output.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
