"""Reference values of the exact val NLL/token under the real-like stand-in
(benchmarks/investigations/gate_sim.py): the uniform gate, the best single pair, the best persona with uniform
exemplars, and the best context-free mixture over all K x N pairs fitted by EM on the val records themselves
(an optimistic bound for a gate that ignores x)."""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other investigations
import yaml  # noqa: E402
from gate_diagnosis import load_datamodule  # noqa: E402
from gate_sim import StandInScorer  # noqa: E402

from mop.prompts import render_prompt  # noqa: E402

cfg = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
dm, _ = load_datamodule(str(ROOT / "configs/quickstart.yaml"))
art = dm.artifacts
recs = art.population["val"]
sc = StandInScorer("real-like")
targets = sc.encode_targets([r.response for r in recs])
K, N = len(art.persona_texts), len(art.pool)
LL = torch.zeros(len(recs), K, N, dtype=torch.float64)
for b, r in enumerate(recs):
    prompts = [render_prompt(cfg["model"]["prompt_template"], art.population.spec.context_template, r,
                             art.persona_texts[k], art.pool[j]) for k in range(K) for j in range(N)]
    LL[b] = sc.score_ids(sc.encode_prompts(prompts), [targets[b]] * len(prompts), 1.0).double().reshape(K, N)
    sc._prompts.clear()
ntok = sum(len(t) for t in targets)
nll = lambda logw: float(-torch.logsumexp((logw + LL).flatten(1), 1).sum() / ntok)  # noqa: E731
uniform = torch.full((K, N), -torch.log(torch.tensor(K * N, dtype=torch.float64)))
best_pair = LL.sum(0).flatten().argmax()
point = torch.full((K * N,), -1e9, dtype=torch.float64)
point[best_pair] = 0
kb = int(LL.logsumexp(2).sum(0).argmax())
persona_only = torch.full((K, N), -1e9, dtype=torch.float64)
persona_only[kb] = -torch.log(torch.tensor(N, dtype=torch.float64))
w = uniform.clone().flatten()
for _ in range(500):  # EM for context-free mixture weights over all pairs
    post = torch.softmax(w + LL.flatten(1), 1)
    w = post.mean(0).clamp_min(1e-300).log()
em_eff = float(torch.exp(-(w.exp() * w).sum()))
out = {"uniform": nll(uniform), "best_single_pair": nll(point.reshape(K, N)),
       "best_persona_uniform_exemplars": nll(persona_only), "em_context_free_mixture": nll(w.reshape(K, N)),
       "em_effective_pairs": em_eff}
print(json.dumps(out, indent=1))
(ROOT / "benchmarks/results/gate_sim_reference.json").write_text(json.dumps(out, indent=1))
