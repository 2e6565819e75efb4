"""Training-step profile: the share of a MixtureOfPersonas step spent in the frozen LM vs everything else.

    python benchmarks/investigations/train_profile.py  # quickstart (SmolLM2 and its artifacts), 3 steps
    python benchmarks/investigations/train_profile.py --steps 10 --threads 2

Runs the real Lightning fit loop (configs/quickstart.yaml: batch 8, M = 4 + 1 exploration pair, learnable tau,
so no score cache) for ``--steps`` steps and times its stages with wrappers around the functions the
module calls: data loading (between steps), gate + retrieval (select_candidates), prompt rendering,
prompt tokenisation (targets are tokenised once, in setup: not per step), the LM decoder body, the output
head + tempered log-likelihood, the mixture loss, backward + optimiser, and the rest (Lightning, logging).
The first step is a warm-up and is left out. Writes benchmarks/results/train_profile.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
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

STAGES = ["data loading", "gate + retrieval", "prompt rendering", "prompt tokenisation", "LM body",
          "LM head + tempered LL", "mixture loss", "backward + optimiser", "other (Lightning, logging)"]


class StageTimes:
    """Accumulates seconds per stage for the current step."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[stage] += time.perf_counter() - start
        return timed


def make_callback(times: StageTimes):
    import lightning.pytorch as pl

    class Profile(pl.Callback):
        def __init__(self):
            self.end = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            now = time.perf_counter()
            times.current = defaultdict(float)
            if self.end is not None:
                times.current["data loading"] = now - self.end  # the loader's next() (and Lightning's fetch)
            self.start = now

        def on_before_backward(self, trainer, module, loss):
            self.backward_start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.end = time.perf_counter()  # backward, then the optimiser step, then this hook
            times.current["backward + optimiser"] += self.end - self.backward_start
            step = dict(times.current)
            step["step"] = self.end - self.start + step.get("data loading", 0.0)
            times.steps.append(step)

    return Profile()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (plus one warm-up step)")
    parser.add_argument("--lm", default=None, help="override model.lm (a bundled name or local folder)")
    parser.add_argument("--synthesizer", default=None,
                        help="override data.personas.synthesizer (e.g. keywords)")
    parser.add_argument("--num-personas", type=int, default=None, help="override data.personas.num_personas")
    parser.add_argument("--max-records", type=int, default=None, help="cap every split (new artifacts)")
    parser.add_argument("--artifacts-dir", default=None, help="override data.artifacts_dir")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_profile.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import lightning.pytorch as pl

    import mop.module as module_lib
    from mop.module import MixtureOfPersonas

    config = load_config(args.config)
    overrides: dict = {"personas": {}, "dataset": {}}
    if args.synthesizer:
        overrides["personas"]["synthesizer"] = args.synthesizer
    if args.num_personas:
        overrides["personas"]["num_personas"] = args.num_personas
    if args.max_records:
        overrides["dataset"]["max_records"] = {s: args.max_records for s in ("train", "val", "test")}
    if args.artifacts_dir:
        overrides["artifacts_dir"] = args.artifacts_dir
    dm = datamodule_from_config(config, **overrides)
    model_args = {k: v for k, v in (config.get("model") or {}).items() if k != "export_dir"}
    if args.lm:
        model_args["lm"] = args.lm
    pl.seed_everything(config.get("seed_everything", 0), verbose=False)
    module = MixtureOfPersonas(**model_args)
    hw = hardware("cpu")

    times = StageTimes()
    saved = {name: getattr(module_lib, name)
             for name in ("select_candidates", "render_prompt", "mixture_nll")}
    module_lib.select_candidates = times.wrap("gate + retrieval", saved["select_candidates"])
    module_lib.render_prompt = times.wrap("prompt rendering", saved["render_prompt"])
    module_lib.mixture_nll = times.wrap("mixture loss", saved["mixture_nll"])
    try:
        dm.prepare_data()
        module.bind(dm, "fit")
        scorer = module.scorer
        scorer.encode_prompts = times.wrap("prompt tokenisation", scorer.encode_prompts)
        scorer._hidden_states = times.wrap("LM body", scorer._hidden_states)  # the plain path
        scorer._run = times.wrap("LM body", scorer._run)  # the prefix-shared path (mop.scoring)
        score_ids = scorer.score_ids
        scorer.score_ids = times.wrap("LM scoring (total)", score_ids)
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=args.steps + 1, limit_val_batches=0,
                             accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             callbacks=[make_callback(times)])
        trainer.fit(module, datamodule=dm)
    finally:
        for name, fn in saved.items():
            setattr(module_lib, name, fn)

    steps = times.steps[1:] or times.steps  # the first step warms up allocators and kernels
    total = {k: sum(s.get(k, 0.0) for s in steps) for k in [*STAGES, "LM scoring (total)", "step"]}
    total["LM head + tempered LL"] = total["LM scoring (total)"] - total["LM body"]
    accounted = sum(total[k] for k in STAGES[:-1])
    total["other (Lightning, logging)"] = max(total["step"] - accounted, 0.0)
    lm_share = total["LM scoring (total)"] / total["step"]
    rows = [[stage, f"{1e3 * total[stage] / len(steps):.1f}", f"{100 * total[stage] / total['step']:.2f}%"]
            for stage in STAGES]
    rows.append(["**frozen LM (body + head)**", f"**{1e3 * total['LM scoring (total)'] / len(steps):.0f}**",
                 f"**{100 * lm_share:.1f}%**"])
    rows.append(["step (wall)", f"{1e3 * total['step'] / len(steps):.0f}", "100%"])
    n_pairs = len(dm.artifacts.population["train"])
    print(f"\nTraining-step profile, {args.config} (lm {model_args.get('lm')}, batch {dm.batch_size}, "
          f"M = {module.hparams.num_candidates} + exploration, {n_pairs} training records), "
          f"mean of {len(steps)} steps after one warm-up")
    print(hardware_line(hw) + f"; {SHARED_NOTE}\n")
    print(markdown_table(["stage", "ms / step", "share"], rows))
    payload = {"hardware": hw, "args": {k: str(v) for k, v in vars(args).items()}, "steps": steps,
               "mean_ms": {k: 1e3 * v / len(steps) for k, v in total.items()}, "lm_share": lm_share,
               "targets_tokenised_once": True}
    write_json(args.out, payload)
    print(f"\nwrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
