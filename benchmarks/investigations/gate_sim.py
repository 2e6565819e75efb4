"""The gate's training dynamics on the real quickstart data with a stand-in LM of known preferences
(seconds, no LM).

    python benchmarks/investigations/gate_sim.py --out benchmarks/results/gate_sim

Same artifacts (MiniLM embeddings of the 160 training / 24 val / test contexts, the 20 synthesised personas,
the 160-exemplar pool), same module, trainer, batch size, M, seed and step seeding as ``mop train -c
configs/quickstart.yaml``; only the scorer differs. It reads the rendered prompt and returns a log-likelihood
whose optimum is known:

    null          every prompt the same log-lik: the full-mixture likelihood does not depend on the gate, so
                  any concentration the gate acquires is made by the estimator / optimiser, not asked for
    label         + BONUS nats when the exemplar's label equals the target's (context-dependent optimum:
                  Omega(x) on exemplars of x's label; pi indifferent)
    label+main    label plus a fixed random per-exemplar and per-persona effect (sd MAIN nats), the
                  "one exemplar / persona is better for everyone" component a real LM also has
    real-like     no label effect; per-exemplar / per-persona main effects and record x exemplar / record x
                  persona interactions with the sizes the LM grid measured on SmolLM2 (REAL_LIKE); with
                  --exact, the exact full-mixture val NLL per token of each trained gate (all K x N pairs)

Each variant is diagnosed with benchmarks/investigations/gate_diagnosis.py's figures (exact, whole pool);
``label-match`` is the figure that should rise under ``label``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other investigations

from gate_diagnosis import diagnose_gate, load_datamodule  # noqa: E402

EX_LABEL = re.compile(r"you wrote this (\w+) review")
TG_LABEL = re.compile(r"Now write a (\w+) review")


def _h(text: str, salt: str) -> float:
    """A fixed number per text, mean 0, sd 1 (sum of 12 uniforms - 6)."""
    d = hashlib.sha1((salt + text).encode()).digest()
    return sum(b / 255.0 for b in d[:12]) - 6.0


class StandInScorer:
    def __init__(self, kind: str, bonus: float = 3.0, main: float = 1.0, per_token: float = -4.0):
        self.kind, self.bonus, self.main, self.per_token = kind, bonus, main, per_token
        self._prompts: list[float] = []

    def encode_targets(self, targets):
        # first id: the record (a hash of its response), length: its word count
        return [[int(_h(t, "r") * 1e6) % 1_000_003] + [0] * (max(1, len(t.split())) - 1) for t in targets]

    def encode_prompts(self, prompts):
        ids = []
        for p in prompts:
            v = 0.0
            if self.kind != "null":
                ex, tg = EX_LABEL.search(p), TG_LABEL.search(p)
                v += self.bonus * float(ex is not None and tg is not None and ex.group(1) == tg.group(1))
            if self.kind == "label+main":
                persona = re.search(r"Persona: (.*)", p)
                example = re.search(r"Example: (.*)", p)
                v += self.main * (_h(persona.group(1) if persona else "", "p") +
                                  _h(example.group(1) if example else "", "e")) / 1.0
            if self.kind == "real-like":  # main effects; record interactions are added in score_ids
                persona = re.search(r"Persona: (.*)", p)
                example = re.search(r"Example: (.*)", p)
                pk, ek = (persona.group(1) if persona else ""), (example.group(1) if example else "")
                v = (pk, ek, REAL_LIKE["main_p"] * _h(pk, "p") + REAL_LIKE["main_e"] * _h(ek, "e"))
            self._prompts.append(v)
            ids.append([len(self._prompts) - 1])
        return ids

    def _value(self, pid: int, target: list[int]) -> float:
        v = self._prompts[pid]
        if not isinstance(v, tuple):
            return v
        pk, ek, main = v
        r = str(target[0])
        return main + REAL_LIKE["int_p"] * _h(pk + r, "rp") + REAL_LIKE["int_e"] * _h(ek + r, "re")

    def score_ids(self, prompt_ids, target_ids, tau):
        v = torch.tensor([self._value(p[0], t) for p, t in zip(prompt_ids, target_ids)], dtype=torch.float32)
        n = torch.tensor([len(t) for t in target_ids], dtype=torch.float32)
        tau = tau if isinstance(tau, torch.Tensor) else torch.tensor(float(tau))
        return (self.per_token * n + v) + 0.0 * tau


# sd (nats per record) of the LM grid on the real LM (benchmarks/results/gate_lm_grid.json, 8 val records):
# per-record sd across exemplars 1.4, 0.18 of it a main effect; across personas 0.86, 0.33 a main effect
REAL_LIKE = {"main_e": 0.6, "int_e": 1.27, "main_p": 0.5, "int_p": 0.70}


@torch.no_grad()
def exact_nll(gate, dm, scorer: StandInScorer, split: str = "val") -> float:
    """The exact full-mixture NLL per token under the stand-in: -sum_i log sum_{k,j} pi Omega p / tokens."""
    from mop.prompts import render_prompt

    art = dm.artifacts
    recs = art.population[split]
    hx, hg, pool = (torch.as_tensor(a) for a in (art.context_emb[split], art.persona_emb, art.pool_emb))
    mask = torch.zeros(len(recs), pool.shape[0], dtype=torch.bool)
    for b, ex in enumerate(dm.exclude[split]):
        if ex:
            mask[b, ex] = True
    logw = gate.log_pi(hx, hg)[:, :, None] + gate.log_omega(hx, hg, pool, mask)  # (B, K, N)
    tmpl = TEMPLATE_FOR_EXACT[0]
    targets = scorer.encode_targets([r.response for r in recs])
    total, tokens = 0.0, 0
    K, N = logw.shape[1], logw.shape[2]
    for b, r in enumerate(recs):
        prompts = [render_prompt(tmpl, art.population.spec.context_template, r, art.persona_texts[k],
                                 art.pool[j])
                   for k in range(K) for j in range(N)]
        ll = scorer.score_ids(scorer.encode_prompts(prompts), [targets[b]] * len(prompts), 1.0).reshape(K, N)
        total += float(torch.logsumexp((logw[b] + ll).flatten(), 0))
        tokens += len(targets[b])
        scorer._prompts.clear()
    return -total / tokens


TEMPLATE_FOR_EXACT = [None]


def run_variant(cfg: dict, dm, scorer_kind: str, model_over: dict, data_over: dict, epochs: int, bonus: float,
                main: float, seed: int = 0):
    import lightning.pytorch as pl

    from mop.datamodule import exclusions
    from mop.module import MixtureOfPersonas

    pl.seed_everything(seed, verbose=False)
    art = dm.artifacts
    dm.mask_same_group = bool(data_over.get("mask_same_group", False))
    dm.exclude = {s: exclusions(art.population[s], art.pool, dm.mask_same_response, dm.mask_same_group)
                  for s in ("train", "val", "test")}
    mc = {k: v for k, v in cfg["model"].items() if k != "export_dir"}
    mc.update(model_over)
    module = MixtureOfPersonas(**mc)
    module.attach_scorer(StandInScorer(scorer_kind, bonus=bonus, main=main))
    TEMPLATE_FOR_EXACT[0] = mc["prompt_template"]
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)  # steps seeded by the module itself
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    secs = time.perf_counter() - t0
    LAST_MODULE[0] = module
    return module.gate.eval(), secs


LAST_MODULE = [None]


@torch.no_grad()
def val_estimate(module, dm) -> float:
    """val/nll_per_token as validation computes it (top-M + one exploration pair, fixed generator per
    batch)."""
    module.eval()
    tot, tok = 0.0, 0.0
    for idx in dm.val_dataloader():
        idx = idx[idx >= 0]
        out = module.mixture_loss("val", idx)
        tot += float(out["nll"]) * idx.numel()
        tok += float(out["tokens"])
    return tot / tok


VARIANTS = {  # name: (model overrides, data overrides); "NAME@E" trains E epochs (default 1)
    "baseline": ({}, {}),
    "explore4": ({"explore_samples": 4}, {}),
    "explore16": ({"explore_samples": 16}, {}),
    "explore64": ({"explore_samples": 64}, {}),
    "lr3e-4": ({"lr": 3e-4}, {}),
    "lr3e-3": ({"lr": 3e-3}, {}),
    "maskgroup": ({}, {"mask_same_group": True}),
    "retr20": ({"omega_init_scale": 20.0}, {}),
    "notau": ({"learn_tau": False}, {}),
    "noexplore": ({"explore": False}, {}),
    "explore16_lr3e-3": ({"explore_samples": 16, "lr": 3e-3}, {}),
    "explore4_lr3e-3": ({"explore_samples": 4, "lr": 3e-3}, {}),
    "retr20_explore16": ({"omega_init_scale": 20.0, "explore_samples": 16}, {}),
    "maskgroup_explore16": ({"explore_samples": 16}, {"mask_same_group": True}),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=str(ROOT / "configs/quickstart.yaml"))
    ap.add_argument("--scorers", default="null,label,label+main")
    ap.add_argument("--variants", default="baseline,baseline@2,baseline@5,explore4@2,explore16@2,explore16@5,"
                    "lr3e-4@2,lr3e-4@5,lr3e-3@2,maskgroup@2,retr20@1,retr20@2,noexplore@2")
    ap.add_argument("--bonus", type=float, default=3.0)
    ap.add_argument("--main", type=float, default=1.0)
    ap.add_argument("--exact", action="store_true",
                    help="also the exact full-mixture val NLL/token (slow-ish)")
    ap.add_argument("--seeds", default="0",
                    help="training seeds (exploration draws; the gate init stays gate_seed)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    cfg = yaml.safe_load(Path(args.config).read_text())
    dm, _ = load_datamodule(args.config)
    for kind in args.scorers.split(","):
        exact_ref = {}
        for name in args.variants.split(","):
          for seed in [int(x) for x in args.seeds.split(",")]:
            base, _, ep = name.partition("@")
            mo, do = VARIANTS[base]
            gate, secs = run_variant(cfg, dm, kind, mo, do, int(ep or 1), args.bonus, args.main, seed=seed)
            d = diagnose_gate(gate, dm.artifacts, dm.exclude, ["train", "val", "test"])
            if args.exact:
                sc = StandInScorer(kind, bonus=args.bonus, main=args.main)
                d["val_exact_nll"] = exact_nll(gate, dm, sc, "val")
                if "untrained" not in exact_ref:
                    from mop.gating import Gate
                    g0 = Gate(dm.artifacts.embed_dim, len(dm.artifacts.persona_texts),
                              cfg["model"].get("hidden_dim", 128),
                              cfg["model"].get("init_tau", 0.6), seed=0).eval()
                    exact_ref["untrained"] = exact_nll(g0, dm, sc, "val")
                d["val_exact_nll_untrained"] = exact_ref["untrained"]
                d["val_estimate_nll"] = val_estimate(LAST_MODULE[0], dm)
            row = {"scorer": kind, "variant": name, "seed": seed, "seconds": round(secs, 1),
                   **{f"{s}_{k}": d[s][k]["mean"] for s in ("val", "test", "train")
                      for k in ("eff_personas", "top_persona", "eff_exemplars", "label_match", "ctx_tv")},
                   "train_own_group": d["train"]["own_group"]["mean"],
                   "val_eff_exemplars_split": d["val"]["eff_exemplars_global"],
                   "val_pi_logit_ctx_share": d["val"]["pi_logit_ctx_share"], "tau_min": d["tau"]["min"],
                   "tau_max": d["tau"]["max"], "val_exact_nll": d.get("val_exact_nll"),
                   "val_exact_nll_untrained": d.get("val_exact_nll_untrained"),
                   "val_estimate_nll": d.get("val_estimate_nll")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps({"meta": vars(args), "rows": rows}, indent=1))
        head = ["stand-in LM", "variant", "seed", "val eff. personas", "val top-persona",
                "val eff. exemplars / x", "val label-match", "val TV(m(x), mean m)",
                "test eff. exemplars / x", "test label-match", "train own-movie", "s"]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for r in rows:
            lines.append("| " + " | ".join([r["scorer"], r["variant"], str(r.get("seed", 0)),
                                            f"{r['val_eff_personas']:.2f}",
                                            f"{r['val_top_persona']:.3f}", f"{r['val_eff_exemplars']:.1f}",
                                            f"{r['val_label_match']:.3f}", f"{r['val_ctx_tv']:.3f}",
                                            f"{r['test_eff_exemplars']:.1f}", f"{r['test_label_match']:.3f}",
                                            f"{r['train_own_group']:.3f}", f"{r['seconds']:.0f}"]) + " |")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
