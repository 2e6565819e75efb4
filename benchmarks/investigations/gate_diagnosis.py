"""Gate-collapse diagnosis: how concentrated and how context-dependent are pi(x) and Omega(x)?  (no LM needed)

    python benchmarks/investigations/gate_diagnosis.py -c configs/quickstart.yaml \
        --gate baseline=runs/diag/baseline/gate --gate lr3e-3=runs/diag/lr3e-3/gate \
        --out benchmarks/results/gate_diagnosis

For every gate (an export directory, or ``untrained`` = the seed-0 initial gate the module builds) and every
split, per context x (exact, over the whole pool, with the split's target masking):

    eff_personas      exp(H(pi(x)))                       1 = one persona, K = uniform
    top_persona       max_k pi_k(x)
    eff_exemplars     exp(H(m(x))),  m(x) = sum_k pi_k(x) Omega_k(x)   (the exemplar marginal)
    label_match       sum_j m_j(x) [label(e_j) == label(x)]  (the uniform gate gives the pool's label share)
    own_group         sum_j m_j(x) [group(e_j) == group(x)]  (train only: val/test movies are not in the pool)
    ctx_tv            total variation between m(x) and the split's mean marginal: 0 = the same Omega for
                      every x

and per split: eff_exemplars_global = exp(H(mean_x m(x))) (how many exemplars the whole split uses), the
number of distinct top personas / top exemplars over contexts, and the exemplars holding the most mass.
``retrieval@T`` rows are a context-sensitive reference: m(x) = softmax_j(h(x) . h(e_j) / T), no gate.

Exclusions: ``--mask-same-group`` applies data.mask_same_group to the training split (val/test are unchanged:
their movies are never in the pool).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mop.datamodule import PopulationDataModule, exclusions  # noqa: E402
from mop.gating import Gate  # noqa: E402


def load_datamodule(config: str, max_records: dict | None = None) -> PopulationDataModule:
    cfg = yaml.safe_load(Path(config).read_text())
    data = dict(cfg["data"])
    data["dataset"] = dict(data["dataset"])
    if max_records is not None:
        data["dataset"]["max_records"] = max_records
    dm = PopulationDataModule(**data)
    dm.artifacts_root = ROOT / data.get("artifacts_dir", "artifacts")
    dm.setup("fit")
    return dm, cfg


def load_gate(spec: str, art, model_cfg: dict) -> Gate:
    """``untrained`` (the module's seed-0 start), ``untrained:SCALE`` (that start with model.omega_init_scale
    SCALE), or an export directory, for the config's artifacts ``art`` (dimension, personas, pool). An
    export's personas and pool must be those of ``art``: a gate scores whatever persona embeddings it is
    handed, so another config's would give figures about personas it never saw."""
    if spec.split(":")[0] == "untrained":
        gate = Gate(art.embed_dim, len(art.persona_texts), model_cfg.get("hidden_dim", 128),
                    model_cfg.get("init_tau", 0.6), seed=model_cfg.get("gate_seed", 0)).eval()
        if ":" in spec:
            gate.init_retrieval_prior(torch.as_tensor(art.pool_emb), float(spec.split(":")[1]))
        return gate
    from mop.export import GateExport

    export = GateExport.from_pretrained(spec)
    if export.persona_texts != list(art.persona_texts):
        raise SystemExit(f"--gate {spec}: its {export.num_personas} personas are not the config's "
                         f"{len(art.persona_texts)}: diagnose it with the config it was trained with")
    if [r.response for r in export.exemplars] != [r.response for r in art.pool]:
        raise SystemExit(f"--gate {spec}: its exemplar pool is not the config's: diagnose it with the "
                         "config it was trained with")
    return export.gate


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


@torch.no_grad()
def split_stats(marg: torch.Tensor, pi: torch.Tensor | None, recs, pool, split: str,
                null: int | None = None) -> dict:
    """marg (B, N) exemplar marginal; pi (B, K) or None; ``null``: the persona-free component's position."""
    per = {"eff_exemplars": _entropy(marg).exp()}
    labelled = any(r.label is not None for r in recs)  # a population without labels has no label match
    if labelled:
        lab_x = np.array([r.label for r in recs], dtype=object)
        lab_e = np.array([e.label for e in pool], dtype=object)
        same_label = torch.as_tensor(lab_x[:, None] == lab_e[None, :], dtype=torch.float32)
        per["label_match"] = (marg * same_label).sum(-1)
    if split == "train" and any(r.group is not None for r in recs):
        grp_x = np.array([r.group for r in recs], dtype=object)
        grp_e = np.array([e.group for e in pool], dtype=object)
        same_group = torch.as_tensor(grp_x[:, None] == grp_e[None, :], dtype=torch.float32)
        per["own_group"] = (marg * same_group).sum(-1)
        per["own_group_uniform"] = same_group.sum(-1) / len(pool)
    mean_m = marg.mean(0)
    per["ctx_tv"] = 0.5 * (marg - mean_m).abs().sum(-1)
    if pi is not None:
        per["eff_personas"] = _entropy(pi).exp()
        per["top_persona"] = pi.max(-1).values
        if null is not None:
            per["null_persona"] = pi[:, null]
    out = {k: {"mean": float(v.mean()), "median": float(v.median())} for k, v in per.items()}
    out["n"] = len(recs)
    out["label_match_uniform"] = float(same_label.mean()) if labelled else None
    out["eff_exemplars_global"] = float(_entropy(mean_m).exp())
    out["distinct_top_exemplars"] = int(marg.argmax(-1).unique().numel())
    if pi is not None:
        out["distinct_top_personas"] = int(pi.argmax(-1).unique().numel())
        out["persona_mass_global_top"] = float(pi.mean(0).max())
    top = mean_m.topk(min(3, len(pool)))
    out["top_exemplars"] = [{"pos": int(j), "mass": round(float(w), 4), "label": pool[int(j)].label,
                             "movie": pool[int(j)].group, "words": len(pool[int(j)].response.split()),
                             "response": pool[int(j)].response[:120]}
                            for w, j in zip(top.values, top.indices)]
    return out


@torch.no_grad()
def diagnose_gate(gate: Gate, art, exclude: dict, splits) -> dict:
    hg = torch.as_tensor(art.persona_emb)
    pool_emb = torch.as_tensor(art.pool_emb)
    res = {"tau": {"mean": float(gate.tau.mean()), "min": float(gate.tau.min()),
                   "max": float(gate.tau.max())}}
    for split in splits:
        hx = torch.as_tensor(art.context_emb[split])
        N = pool_emb.shape[0]
        mask = torch.zeros(hx.shape[0], N, dtype=torch.bool)
        for b, ex in enumerate(exclude[split]):
            if ex:
                mask[b, ex] = True
        pi = gate.log_pi(hx, hg).exp()  # (B, K)
        om = gate.log_omega(hx, hg, pool_emb, mask).exp()  # (B, K, N)
        marg = (pi[..., None] * om).sum(1)
        res[split] = split_stats(marg, pi, art.population[split], art.pool, split, art.null_persona_index)
        res[split].update(logit_context_share(gate, art, split))
    return res


@torch.no_grad()
def geometry(art, splits) -> dict:
    """How alike the frozen context embeddings are: mean pairwise cosine, and the share of sum ||h(x)||^2 on
    the split's mean direction (a gate linear in h(x) sees mostly this common part)."""
    out = {}
    for name, h in [*((s, art.context_emb[s]) for s in splits), ("pool", art.pool_emb)]:
        h = torch.as_tensor(h, dtype=torch.float64)
        n = h.shape[0]
        cos = h @ h.T
        mean = h.mean(0)
        u = mean / mean.norm()
        out[name] = {"mean_pairwise_cos": float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))),
                     "mean_direction_share": float(((h @ u) ** 2).sum() / (h ** 2).sum()),
                     "distinct": int(torch.unique(h.round(decimals=5), dim=0).shape[0])}
    return out


@torch.no_grad()
def logit_context_share(gate: Gate, art, split: str) -> dict:
    """Share of the variance of the pi logits (and of the Omega-marginal log) that varies with x: 0 = the same
    ranking for every context."""
    hx = torch.as_tensor(art.context_emb[split])
    hg = torch.as_tensor(art.persona_emb)
    lg = gate.W_x(hx) @ gate.W_g(hg).T  # (B, K)
    lg = lg - lg.mean(1, keepdim=True)
    dev = lg - lg.mean(0, keepdim=True)
    return {"pi_logit_ctx_share": float(dev.var() / lg.var()) if lg.var() > 0 else float("nan"),
            "pi_logit_std": float(lg.std())}


@torch.no_grad()
def diagnose_retrieval(T: float, art, exclude: dict, splits) -> dict:
    pool_emb = torch.as_tensor(art.pool_emb)
    res = {}
    for split in splits:
        hx = torch.as_tensor(art.context_emb[split])
        s = (hx @ pool_emb.T) / T
        for b, ex in enumerate(exclude[split]):
            if ex:
                s[b, ex] = float("-inf")
        res[split] = split_stats(torch.softmax(s, -1), None, art.population[split], art.pool, split)
    return res


COLS = [("eff_personas", "eff. personas"), ("top_persona", "top-persona share"),
        ("null_persona", "persona-free mass"),
        ("eff_exemplars", "eff. exemplars / x"), ("label_match", "label-match mass"),
        ("ctx_tv", "TV(m(x), mean m)")]


def markdown(results: dict, splits) -> str:
    lines = []
    for split in splits:
        lines.append(f"\n### {split}\n")
        head = ["gate", *[c[1] for c in COLS], "eff. exemplars (split)", "distinct top exemplars",
                "distinct top personas"]
        if split == "train":
            head.insert(len(COLS) + 1, "own-movie mass (uniform)")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + " --- |" * len(head))
        for name, r in results.items():
            s = r[split]
            cells = [name]
            for key, _ in COLS:
                cells.append(f"{s[key]['mean']:.3f} / {s[key]['median']:.3f}" if key in s else "–")
            if split == "train":
                cells.append(f"{s['own_group']['mean']:.3f} ({s['own_group_uniform']['mean']:.3f})"
                             if "own_group" in s else "–")
            cells += [f"{s['eff_exemplars_global']:.1f}", str(s["distinct_top_exemplars"]),
                      str(s.get("distinct_top_personas", "–"))]
            lines.append("| " + " | ".join(cells) + " |")
        lab = next(iter(results.values()))[split]["label_match_uniform"]
        lines.append("\ncells: mean / median over the split's contexts; label-match of a uniform Omega: "
                     + (f"{lab:.3f}" if lab is not None else "– (no labels)"))
    return "\n".join(lines)


def parse_log(path: Path) -> dict:
    """val NLL per token (untrained / trained) and fit wall time printed by train.py at the end of fit."""
    import re

    if not path.exists():
        return {}
    text = path.read_text(errors="replace")
    out = {}
    for key, pat in (("val_nll_untrained", r"untrained gate:\s+([\d.]+)"),
                     ("val_nll_trained", r"(?<!un)trained gate:\s+([\d.]+)"),
                     ("fit_wall_s", r"fit wall time: (\d+) s")):
        m = re.search(pat, text)
        if m:
            out[key] = float(m.group(1))
    return out


def variant_table(results: dict, logs: dict) -> str:
    head = ["variant", "val NLL/tok untrained → trained", "fit wall s", "tau min–max",
            "val eff. personas", "val top-persona", "val eff. exemplars / x", "val label-match",
            "val eff. exemplars (split)", "test eff. personas", "test eff. exemplars / x", "test label-match",
            "train own-movie mass", "train label-match", "val pi-logit x-share", "val TV(m(x), mean m)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in results.items():
        lg = logs.get(name, {})
        nll = (f"{lg['val_nll_untrained']:.4f} → {lg['val_nll_trained']:.4f}"
               if "val_nll_trained" in lg and "val_nll_untrained" in lg else "–")
        v, t, tr = r.get("val", {}), r.get("test", {}), r.get("train", {})
        f = lambda s, k: f"{s[k]['mean']:.3f}" if k in s else "–"  # noqa: E731
        tau = f"{r['tau']['min']:.2f}–{r['tau']['max']:.2f}" if "tau" in r else "–"
        cells = [name, nll, f"{lg['fit_wall_s']:.0f}" if "fit_wall_s" in lg else "–", tau,
                 f(v, "eff_personas"), f(v, "top_persona"), f(v, "eff_exemplars"), f(v, "label_match"),
                 f"{v['eff_exemplars_global']:.1f}" if v else "–", f(t, "eff_personas"),
                 f(t, "eff_exemplars"), f(t, "label_match"), f(tr, "own_group"), f(tr, "label_match"),
                 f"{v['pi_logit_ctx_share']:.3f}" if "pi_logit_ctx_share" in v else "–", f(v, "ctx_tv")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=str(ROOT / "configs/quickstart.yaml"))
    ap.add_argument("--gate", action="append", default=[],
                    help="NAME=EXPORT_DIR, NAME=untrained or NAME=untrained:SCALE")
    ap.add_argument("--mask-same-group", action="store_true", help="train exclusions as with mask_same_group")
    ap.add_argument("--max-records", default=None, help='JSON, e.g. {"train": 480, "val": 24}')
    ap.add_argument("--retrieval-T", type=float, action="append", default=[])
    ap.add_argument("--splits", default="train,val,test")
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    ap.add_argument("--logs-dir", default=None,
                    help="read NAME.log (train.py output) of every gate NAME there")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    dm, cfg = load_datamodule(args.config, json.loads(args.max_records) if args.max_records else None)
    art = dm.artifacts
    splits = args.splits.split(",")
    exclude = dict(dm.exclude)
    if args.mask_same_group:
        exclude["train"] = exclusions(art.population["train"], art.pool, dm.mask_same_response, True)
    gates = args.gate or ["untrained=untrained"]
    results = {}
    for spec in gates:
        name, _, path = spec.partition("=")
        gate = load_gate(path or name, art, cfg.get("model", {}))
        results[name] = diagnose_gate(gate, art, exclude, splits)
    for T in args.retrieval_T:
        results[f"retrieval@{T:g}"] = diagnose_retrieval(T, art, exclude, splits)
    md = markdown(results, splits)
    geo = geometry(art, splits)
    md += ("\n\n### Frozen embeddings\n\n"
           "| set | distinct | mean pairwise cos | share of ||h||^2 on the mean direction |\n"
           "| --- | --- | --- | --- |\n"
           + "\n".join(f"| {k} | {v['distinct']} | {v['mean_pairwise_cos']:.3f} | "
                       f"{v['mean_direction_share']:.3f} |" for k, v in geo.items()))
    logs = {}
    if args.logs_dir:
        logs = {name: parse_log(Path(args.logs_dir) / f"{name}.log") for name in results}
        md = ("## Variants (means over contexts)\n\n" + variant_table(results, logs)
              + "\n\n## Per split (mean / median)\n" + md)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"geometry": geo, "config": args.config, "gates": gates,
                "mask_same_group_train": args.mask_same_group, "pool": len(art.pool),
                "K": len(art.persona_texts), "seconds": round(time.perf_counter() - t0, 1)}
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "logs": logs, "results": results},
                                                       indent=1))
        out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
