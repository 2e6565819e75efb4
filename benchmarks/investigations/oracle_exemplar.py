"""How far can exemplar choice go? MoP with an oracle exemplar (issue 13, a diagnostic, not a method).

MoP's trained gate picks one exemplar per context from the pool. This script gives every test context the
pool exemplar whose *response* is closest (cosine, on the evaluation embedder) to the context's own held-out
real response -- an exemplar no gate can know, since it reads the answer -- and keeps everything else as
``generate.py --method mop`` does: the persona drawn from the trained pi(x), the persona's temperature, the
prompt, the seeds, the same shuffled test contexts as ``benchmarks/fidelity.py``. If even these texts stay
far from the population, the gap is the LM's writing, not the gate's choice:

    python benchmarks/investigations/oracle_exemplar.py --config configs/fidelity.yaml \\
        --gate benchmarks/results/fidelity_scale_gate --num-samples 1000 --workdir runs/rt_oracle
    python benchmarks/fidelity_gap.py decompose --config configs/fidelity.yaml \\
        --gate benchmarks/results/fidelity_scale_gate --samples runs/rt_oracle/samples --num-samples 1000

The set is written as ``WORKDIR/samples/<model>__mop-oracle-exemplar.jsonl`` (rows as generate.py writes
them, ``method`` set to ``mop-oracle-exemplar``, plus ``oracle_cosine``). Resumable: generation resumes its
raw file in ``WORKDIR/raw``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # common.py

from common import lm_file_name  # noqa: E402


def nearest_exemplars(real_emb, pool_emb, real_ids, pool_ids):
    """For each real text, the pool position of the most cosine-similar exemplar that is not the same record,
    and that similarity (rows of both arrays L2-normalised)."""
    import numpy as np

    sims = real_emb @ pool_emb.T  # (R, N)
    same = np.asarray(real_ids)[:, None] == np.asarray(pool_ids)[None, :]
    sims = np.where(same, -np.inf, sims)
    best = sims.argmax(1)
    return best.tolist(), sims[np.arange(len(best)), best].tolist()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--gate", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--embedder", default="minilm-l6", help="the evaluation embedder the oracle matches on")
    p.add_argument("--workdir", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)

    import mop.generate as G
    from mop.cli import main as mop_main
    from mop.evaluate import _encode, _make_embedder, l2_normalise
    from mop.export import load_export, read_export_config

    export = load_export(args.gate)
    records = G.dataset_contexts(args.config, "test", read_export_config(Path(args.gate)))
    embedder = _make_embedder(args.embedder)
    real = l2_normalise(_encode(embedder, [r.response for r in records], "test responses", False))
    pool = l2_normalise(_encode(embedder, [e.response for e in export.exemplars], "pool responses", False))
    best, cos = nearest_exemplars(real, pool, [r.id for r in records], [e.id for e in export.exemplars])
    oracle = {r.id: (j, c) for r, j, c in zip(records, best, cos)}

    original = G.ComponentSampler.sample

    def sample(self, hx, record_ids, keys, seed, labels=None):  # MoP's draw, then the oracle's exemplar
        comps = original(self, hx, record_ids, keys, seed, labels)
        for comp, rid in zip(comps, record_ids):
            comp.exemplar = oracle[rid][0]
        return comps

    G.ComponentSampler.sample = sample
    workdir = Path(args.workdir)
    raw = workdir / "raw" / f"{lm_file_name(args.model)}__mop.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    code = mop_main(["generate", "--gating", args.gate, "--model", args.model, "--data", args.config,
                     "--split", "test", "--shuffle", "--num-samples", str(args.num_samples),
                     "--seed", str(args.seed), "--method", "mop", "--batch-size", str(args.batch_size),
                     "--output", str(raw)], prog="oracle_exemplar.py")
    if code:
        return code
    out = workdir / "samples" / f"{lm_file_name(args.model)}__mop-oracle-exemplar.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    used = []
    with open(raw) as f, open(out, "w") as g:
        for line in f:
            row = json.loads(line)
            j, c = oracle[row["record_id"]]
            assert row["exemplar_id"] == export.exemplars[j].id  # the patched draw took effect
            used.append(c)
            g.write(json.dumps({**row, "method": "mop-oracle-exemplar", "oracle_cosine": round(c, 4)}) + "\n")
    print(f"[oracle] {out}: {len(used)} rows, mean cosine of the oracle exemplar's response to the real one "
          f"{sum(used) / len(used):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
