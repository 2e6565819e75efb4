"""Train a MoP gate: ``python train.py fit -c configs/quickstart.yaml [--trainer.devices 2 ...]``.

A LightningCLI over :class:`mop.module.MixtureOfPersonas` and :class:`mop.datamodule.PopulationDataModule`.
Before fitting it validates the untrained gate (the baseline to beat); after fitting it exports the gate
and prints where.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging
import re
import warnings
from argparse import ArgumentError

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI

from mop.cli import run
from mop.datamodule import PopulationDataModule
from mop.errors import MopError
from mop.module import MixtureOfPersonas

# Config values that must be > 0 or >= 0 (None means unset and passes), and the values some keys may take.
POSITIVE = ("model.hidden_dim", "model.num_candidates", "model.max_prompt_tokens", "model.max_target_tokens",
            "model.max_batch_tokens", "model.omega_topk", "model.init_tau", "model.lr", "data.batch_size",
            "data.num_exemplars", "data.personas.num_personas")
NON_NEGATIVE = ("model.exact_omega_max_pool", "model.weight_decay", "data.num_workers")
CHOICES = {"model.lm_dtype": (None, "float32", "bfloat16", "float16"), "data.index_kind": ("auto", "flat", "ivf"),
           "data.personas.synthesizer": ("llm", "keywords", "file")}


def check_config(cfg) -> None:
    """One-line errors for sizes that can never work, before any class is built or anything is loaded."""
    for keys, ok, what in ((POSITIVE, lambda v: v > 0, "positive"), (NON_NEGATIVE, lambda v: v >= 0, ">= 0")):
        for key in keys:
            try:
                value = cfg.get(key)
            except (KeyError, AttributeError, TypeError):
                continue
            if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)) \
                    and not ok(value):
                raise MopError(f"config key {key} must be {what}, got {value}")
    for key, allowed in CHOICES.items():
        try:
            value = cfg.get(key)
        except (KeyError, AttributeError, TypeError):
            continue
        if value not in allowed:
            raise MopError(f"config key {key} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def config_error_line(message: str, known_keys: list[str] = ()) -> str:
    """A jsonargparse error (often several indented lines) as one line: the key, then the specific reasons,
    with a suggestion for a misspelt key."""
    import difflib

    lines = [re.sub(r"(Expected )an? <class '([\w.]+)'>", r"\1\2", ln.strip())
             for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return "invalid configuration"
    noise = re.compile(r"^(- )?(Does not validate against any of the Union subtypes|Subtypes:|Errors:|"
                       r"Given value type:|Given value:|Expected NoneType|Problem with given class_path)")
    head = lines[0]
    key = re.match(r'^Parser key "([^"]+)":\s*(.*)$', head)
    details = [re.sub(r"^- ", "", ln) for ln in lines[1:] if not noise.match(ln)]
    if key:
        reason = "; ".join(x for x in [key.group(2), *details] if x)
        where = "-c/--config" if key.group(1) == "config" else f"config key {key.group(1)}"
        line = f"{where}: {reason}"
    else:
        line = "; ".join([head, *details])
    unknown = re.findall(r"(?:accept option '|unrecognized arguments: --)([\w.]+)", line)
    hints = [m[0] for u in unknown for m in [difflib.get_close_matches(u, known_keys, n=1, cutoff=0.8)] if m]
    return line + (f" (did you mean {', '.join(repr(h) for h in hints)}?)" if hints else "")


def _subparsers(parser) -> list:
    """The subcommand parsers (fit, validate...) of a LightningCLI parser."""
    subs = getattr(parser, "_subcommands_action", None)
    return list(getattr(subs, "_name_parser_map", {}).values()) if subs is not None else []


class StepSeed(Callback):
    """Reseeds torch's RNG before every training step from (seed_everything, epoch, batch, rank).

    The step's random draws (the exploration pair) then depend on where the step is, not on everything drawn
    before it, so a run resumed from a checkpoint repeats an uninterrupted run exactly (Lightning checkpoints do
    not hold RNG states).
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        import numpy as np
        import torch

        seed = int(os.environ.get("PL_GLOBAL_SEED", "0")) & (2**63 - 1)  # set by seed_everything
        state = np.random.SeedSequence([seed, trainer.current_epoch, batch_idx, trainer.global_rank])
        torch.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))


def make_resumable(trainer) -> None:
    """Checkpoints go to ``<default_root_dir>/checkpoints`` unless a ModelCheckpoint names its dirpath, so that
    ``--ckpt_path last`` finds them (by default Lightning puts them under the logger's run id, a new one per run,
    where a resumed run never looks); every training step is seeded by its position (:class:`StepSeed`)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
    if not any(isinstance(cb, StepSeed) for cb in trainer.callbacks):
        trainer.callbacks.append(StepSeed())


class MopCLI(LightningCLI):
    known_keys: list[str] = []  # every option of every parser built, for "did you mean" hints

    def init_parser(self, **kwargs):
        kwargs.setdefault("exit_on_error", False)  # parse errors raise; main() prints them as one line
        kwargs.setdefault("allow_abbrev", False)  # --model.num_candidate is a typo, not num_candidates
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        MopCLI.known_keys = sorted({a.dest for p in [parser, *_subparsers(parser)] for a in p._actions})
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        check_config(self.config[sub] if sub else self.config)  # before seeding or building anything

    def instantiate_classes(self) -> None:
        """Errors Lightning raises while building the trainer, model or data from the config become one line."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
        except MopError:
            raise
        except (MisconfigurationException, TypeError, ValueError, ImportError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MopError(f"cannot build the run from its config: {first}") from err

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--validate_before_fit", type=bool, default=True,
                            help="validate the untrained gate before fitting (the number to beat)")

    def before_fit(self) -> None:
        from mop.assets import check_model_path

        make_resumable(self.trainer)
        # Data, sizes and paths that would otherwise fail only after minutes of embedding and persona synthesis.
        self.datamodule.check_sizes(self.model.hparams.num_candidates)
        check_model_path(self.model.hparams.lm, "model.lm")
        check_model_path(self.datamodule.embedder, "data.embedder")
        if self.datamodule.personas.synthesizer == "llm":
            check_model_path(self.datamodule.personas.lm, "data.personas.lm")
        self._t0 = time.perf_counter()
        self._untrained = None
        if self.config[self.subcommand].get("validate_before_fit") and not self.config[self.subcommand].get(
                "ckpt_path"):
            results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
            self._untrained = results[0].get("val/nll_per_token") if results else None

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        from mop.export import export_from_module

        out = export_from_module(self.model, self.trainer)
        trained = self.trainer.callback_metrics.get("val/nll_per_token")
        wall = time.perf_counter() - self._t0
        if self._untrained is not None:
            print(f"val/nll_per_token  untrained gate: {self._untrained:.4f}")
        if trained is not None:
            print(f"val/nll_per_token  trained gate:   {float(trained):.4f}")
        print(f"fit wall time: {wall:.0f} s")
        print(f"exported gate: {out}")
        last = getattr(self.trainer.checkpoint_callback, "last_model_path", "")
        if last:
            print(f"last checkpoint: {last} (resume with --ckpt_path last)")


def main() -> int:
    for name in ("lightning.pytorch", "lightning.fabric"):  # seed / accelerator chatter; warnings still show
        logging.getLogger(name).setLevel(logging.WARNING)
    # seed_everything left unset is seeded with 0: not worth a warning line (it would precede a config error)
    warnings.filterwarnings("ignore", message="No seed found, seed set to 0")
    try:
        MopCLI(MixtureOfPersonas, PopulationDataModule, save_config_kwargs={"overwrite": True})
    except ArgumentError as err:  # jsonargparse: an unknown key, a wrong type, a missing config file...
        raise MopError(config_error_line(str(err), MopCLI.known_keys)) from err
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
