"""What does the frozen LM itself reward?  A small (record x exemplar) and (record x persona) grid of
log p_LM(y | prompt), to tell a collapse the objective asks for from one the optimiser makes up.

    python benchmarks/investigations/gate_lm_grid.py -c configs/quickstart.yaml \
        --gate runs/diag/baseline/gate --records 12 --exemplars 40 --out benchmarks/results/gate_lm_grid

Grid A: n val records x E exemplars (a seeded random subset of the pool plus the trained gate's top 2),
persona fixed to the gate's top persona, tau = 1.  Grid B: n records x all K personas, exemplar fixed to the
gate's top exemplar.  Grid C: the gate's top pair at tau in {0.6, 0.8, 1.0, 1.2} (the temperatures' own
effect).

Reported (nats per target token, records' own token counts):
    main-effect share    variance of the exemplar (persona) column means / total variance of the
                         record-centred grid:
                         1 = every record ranks exemplars alike (a context-free favourite is right),
                         0 = the best exemplar depends on the record
    label effect         mean LL of same-label minus opposite-label exemplars (record-centred)
    mixture vs single    per-token NLL of the uniform mixture over the grid's exemplars, of the single
                         globally best exemplar, of the gate's top exemplar, of the per-record best (oracle)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other investigations

from gate_diagnosis import load_datamodule  # noqa: E402

from mop.prompts import render_prompt  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=str(ROOT / "configs/quickstart.yaml"))
    ap.add_argument("--gate", required=True, help="a trained export (its top persona / exemplars)")
    ap.add_argument("--records", type=int, default=12)
    ap.add_argument("--exemplars", type=int, default=40)
    ap.add_argument("--split", default="val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    dm, cfg = load_datamodule(args.config)
    art, mc = dm.artifacts, cfg["model"]
    from mop.assets import load_lm
    from mop.export import GateExport
    from mop.scoring import FrozenLMScorer

    gx = GateExport.from_pretrained(args.gate)
    gate = gx.gate
    model, tok = load_lm(mc.get("lm", "smollm2-135m"), dtype=mc.get("lm_dtype"))
    scorer = FrozenLMScorer(model, tok, target_prefix=" ", max_prompt_tokens=mc.get("max_prompt_tokens", 384),
                            max_target_tokens=mc.get("max_target_tokens", 96), max_batch_tokens=4096)
    recs_all = art.population[args.split]
    rng = np.random.default_rng(args.seed)
    rows = sorted(rng.choice(len(recs_all), size=min(args.records, len(recs_all)), replace=False).tolist())
    recs = [recs_all[i] for i in rows]
    hx = torch.as_tensor(art.context_emb[args.split][rows])
    hg, pool_emb = torch.as_tensor(art.persona_emb), torch.as_tensor(art.pool_emb)
    with torch.no_grad():
        pi = gate.log_pi(hx, hg).exp()
        marg = (pi[..., None] * gate.log_omega(hx, hg, pool_emb).exp()).sum(1).mean(0)
    k_top = int(pi.mean(0).argmax())
    gate_ex = marg.topk(2).indices.tolist()
    subset = sorted(set(rng.choice(len(art.pool), size=args.exemplars, replace=False).tolist())
                    | set(gate_ex))
    targets_all = scorer.encode_targets([r.response for r in recs])
    ntok = np.array([len(t) for t in targets_all], dtype=np.float64)
    tmpl, ctx_t = mc["prompt_template"], art.population.spec.context_template

    def score(pairs, tau=1.0):
        prompts = [render_prompt(tmpl, ctx_t, recs[b], art.persona_texts[k], art.pool[j])
                   for b, k, j in pairs]
        with torch.no_grad():
            ll = scorer.score_ids(scorer.encode_prompts(prompts), [targets_all[b] for b, _, _ in pairs], tau)
        return ll.double().numpy()

    n = len(recs)
    A = score([(b, k_top, j) for b in range(n) for j in subset]).reshape(n, len(subset))
    tA = time.perf_counter() - t0
    B = score([(b, k, gate_ex[0]) for b in range(n) for k in range(len(art.persona_texts))]).reshape(n, -1)
    taus = [0.6, 0.8, 1.0, 1.2]
    C = np.stack([score([(b, k_top, gate_ex[0]) for b in range(n)], tau=t) for t in taus], 1)  # (n, T)

    def decomp(G):
        c = G - G.mean(1, keepdims=True)  # record-centred
        main = c.mean(0)
        return float(main.var() / c.var()) if c.var() > 0 else float("nan"), main

    def nll_tok(ll):  # ll: (n,) total log-lik per record
        return float(-ll.sum() / ntok.sum())

    share_A, main_A = decomp(A)
    share_B, main_B = decomp(B)
    lab_x = np.array([r.label for r in recs])
    lab_e = np.array([art.pool[j].label for j in subset])
    same = lab_x[:, None] == lab_e[None, :]
    cA = (A - A.mean(1, keepdims=True)) / ntok[:, None]
    best_global = int(A.sum(0).argmax())
    gi = [subset.index(j) for j in gate_ex]
    lse = lambda x: np.log(np.mean(np.exp(x - x.max(1, keepdims=True)), 1)) + x.max(1)  # noqa: E731
    res = {
        "records": n, "exemplars": len(subset), "personas": B.shape[1], "top_persona": k_top,
        "gate_top_exemplars": gate_ex, "tau_gate_top_persona": float(gx.tau[k_top]),
        "exemplar_grid": {
            "main_effect_share": share_A,
            "label_effect_nats_per_token": float(cA[same].mean() - cA[~same].mean()),
            "records_whose_best_is_global_best": int((A.argmax(1) == best_global).sum()),
            "distinct_best_exemplars": int(len(set(A.argmax(1).tolist()))),
            "gate_top_rank_by_mean_ll": [int((main_A > main_A[i]).sum()) + 1 for i in gi],
            "nll_tok_uniform_mixture": nll_tok(lse(A)),
            "nll_tok_global_best": nll_tok(A[:, best_global]),
            "nll_tok_gate_top": nll_tok(A[:, gi[0]]),
            "nll_tok_gate_top2_mixture": nll_tok(lse(A[:, gi])),
            "nll_tok_per_record_best_oracle": nll_tok(A.max(1)),
            "nll_tok_mean_single": nll_tok(A.mean(1)),
            "best_global_exemplar": {"pos": subset[best_global], "label": art.pool[subset[best_global]].label,
                                     "response": art.pool[subset[best_global]].response},
            "gate_top_exemplar_texts": [{"pos": j, "label": art.pool[j].label,
                                         "response": art.pool[j].response}
                                        for j in gate_ex],
        },
        "persona_grid": {
            "main_effect_share": share_B,
            "persona_spread_nats_per_token": float((main_B.max() - main_B.min()) / ntok.mean()),
            "gate_top_persona_rank_by_mean_ll": int((main_B > main_B[k_top]).sum()) + 1,
            "nll_tok_uniform_mixture": nll_tok(lse(B)),
            "nll_tok_gate_top": nll_tok(B[:, k_top]),
            "nll_tok_global_best": nll_tok(B[:, int(B.sum(0).argmax())]),
        },
        "tau_grid": {f"{t:g}": nll_tok(C[:, i]) for i, t in enumerate(taus)},
        "seconds": round(time.perf_counter() - t0, 1), "seconds_grid_A": round(tA, 1),
    }
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"meta": vars(args), "result": res, "grid_A": A.tolist(), "grid_B": B.tolist(), "subset": subset,
             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
