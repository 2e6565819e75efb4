"""Score cache: hit rate and epoch time over 3 epochs of a small real run with frozen temperatures.

    python benchmarks/investigations/score_cache.py  # quickstart, 24 training records, K = 8 keyword personas
    python benchmarks/investigations/score_cache.py --records 160 --epochs 5

configs/quickstart.yaml (SmolLM2, batch 8, M = 4 + one exploration pair) with ``--model.learn_tau false`` (so
``score_cache`` takes effect), ``--records`` training records per split and keyword personas (no persona LLM,
so the artifacts build in seconds). Epoch 1 scores every pair; later epochs score only the pairs not seen
before (a new exploration pair, or a top-M pair the updated gate now prefers). Validation is off (it would be
cached too). The uncached cost of an epoch is the epoch-1 time (every lookup a miss). Writes
benchmarks/results/score_cache.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py

from common import (  # noqa: E402
    RESULTS,
    SHARED_NOTE,
    datamodule_from_config,
    hardware,
    hardware_line,
    load_config,
    markdown_table,
    write_json,
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--records", type=int, default=24, help="records per split (train, val, test)")
    parser.add_argument("--num-personas", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lm", default=None, help="override model.lm (a bundled name or local folder)")
    parser.add_argument("--artifacts-dir", default=None, help="override data.artifacts_dir")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=RESULTS / "score_cache.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import lightning.pytorch as pl

    from mop.module import MixtureOfPersonas

    config = load_config(args.config)
    overrides = {"personas": {"synthesizer": "keywords", "num_personas": args.num_personas},
                 "dataset": {"max_records": {s: args.records for s in ("train", "val", "test")}}}
    if args.artifacts_dir:
        overrides["artifacts_dir"] = args.artifacts_dir
    dm = datamodule_from_config(config, **overrides)
    model_args = {k: v for k, v in (config.get("model") or {}).items() if k != "export_dir"}
    model_args.update(learn_tau=False, score_cache=True)
    if args.lm:
        model_args["lm"] = args.lm
    pl.seed_everything(config.get("seed_everything", 0), verbose=False)
    module = MixtureOfPersonas(**model_args)
    hw = hardware("cpu")
    dm.prepare_data()
    module.bind(dm, "fit")
    scorer = module.scorer
    scored = {"pairs": 0, "lm_s": 0.0}
    score_ids = scorer.score_ids

    def counted(prompt_ids, target_ids, tau):
        start = time.perf_counter()
        try:
            return score_ids(prompt_ids, target_ids, tau)
        finally:
            scored["pairs"] += len(prompt_ids)
            scored["lm_s"] += time.perf_counter() - start

    scorer.score_ids = counted
    rows: list[dict] = []

    class EpochLog(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.start, scored["pairs"], scored["lm_s"] = time.perf_counter(), 0, 0.0

        def on_train_epoch_end(self, trainer, module):
            lookups, hits = module._cache_counts
            rows.append({"epoch": trainer.current_epoch + 1, "seconds": time.perf_counter() - self.start,
                         "lookups": lookups, "hits": hits, "hit_rate": hits / max(lookups, 1),
                         "pairs_scored": scored["pairs"], "lm_seconds": scored["lm_s"],
                         "cache_size": len(module._score_cache)})
            print(f"done: epoch {rows[-1]['epoch']}: {rows[-1]['seconds']:.0f} s, hit rate "
                  f"{rows[-1]['hit_rate']:.2f}", flush=True)

    trainer = pl.Trainer(max_epochs=args.epochs, limit_val_batches=0, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[EpochLog()])
    trainer.fit(module, datamodule=dm)
    first = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_uncached"] = first / r["seconds"]
    n = len(dm.artifacts.population["train"])
    print(f"\nScore cache, {args.config} with learn_tau false: {n} training records, K = {args.num_personas} "
          f"keyword personas, batch {dm.batch_size}, M = {module.hparams.num_candidates} + 1 exploration "
          f"pair, lm {model_args['lm']}")
    print(hardware_line(hw) + f"; {SHARED_NOTE}\n")
    print(markdown_table(["epoch", "cache hit rate", "pairs scored by the LM", "LM s", "epoch s",
                          "speed-up vs epoch 1 (uncached)"],
                         [[r["epoch"], f"{100 * r['hit_rate']:.0f}%", f"{r['pairs_scored']} / {r['lookups']}",
                           f"{r['lm_seconds']:.0f}", f"{r['seconds']:.0f}",
                           f"{r['speedup_vs_uncached']:.2f}x"]
                          for r in rows]))
    write_json(args.out, {"hardware": hw, "args": {k: str(v) for k, v in vars(args).items()},
                          "results": rows})
    print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
