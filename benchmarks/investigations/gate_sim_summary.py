"""One table over every gate_sim sweep in benchmarks/results (gate_sim*.json): per stand-in LM and variant,
the per-seed values (seeds in brackets) of the val figures. Prints markdown."""
import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
rows = []
for f in sorted((ROOT / "benchmarks/results").glob("gate_sim*.json")):
    if f.name == "gate_sim_reference.json":
        continue
    for r in json.loads(f.read_text())["rows"]:
        r.setdefault("seed", 0)
        rows.append(r)
g = defaultdict(dict)
for r in rows:
    g[(r["scorer"], r["variant"])][r["seed"]] = r  # a later sweep's same (scorer, variant, seed) is identical
order = {"null": 0, "label": 1, "label+main": 2, "real-like": 3}
fmt = lambda rs, k, p: " ".join(f"{r[k]:.{p}f}" for r in rs)  # noqa: E731
print("| stand-in LM | variant@epochs | seeds | val eff. personas | val eff. exemplars / x | "
      "val label-match | val TV(m(x), mean m) | exact val NLL/tok |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for (sc, v), by_seed in sorted(g.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
    rs = [by_seed[s] for s in sorted(by_seed)]
    ex = fmt(rs, "val_exact_nll", 4) if rs[0].get("val_exact_nll") is not None else "–"
    print(f"| {sc} | {v if '@' in v else v + '@1'} | {','.join(str(r['seed']) for r in rs)} | "
          f"{fmt(rs, 'val_eff_personas', 1)} | {fmt(rs, 'val_eff_exemplars', 1)} | "
          f"{fmt(rs, 'val_label_match', 2)} | {fmt(rs, 'val_ctx_tv', 2)} | {ex} |")
