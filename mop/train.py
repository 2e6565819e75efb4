"""Training: ``mop train -c configs/quickstart.yaml [--model.lr 0.003 --trainer.devices 2 ...]``.

A LightningCLI over :class:`mop.module.MixtureOfPersonas` and :class:`mop.datamodule.PopulationDataModule`:
the options are the parameters of those classes (and of Lightning's ``Trainer``), declared once in their
signatures, checked while the config is parsed (``PositiveInt``, ``Literal[...]``, see :mod:`mop.types`).
Before fitting it validates the untrained gate (the baseline to beat); after fitting it exports the gate and
prints where. ``python train.py fit ...`` is the same command.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from argparse import ArgumentError

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from mop.cli import error_line, run
from mop.datamodule import PopulationDataModule
from mop.errors import MopError
from mop.module import MixtureOfPersonas
from mop.types import register

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class MopCLI(LightningCLI):
    """LightningCLI with one-line errors, resumable checkpoints, an untrained baseline and the export."""

    parsers: list = []  # the parser of each subcommand, for "did you mean" hints
    prog = "mop train"

    def init_parser(self, **kwargs):
        kwargs.setdefault("prog", self.prog)
        kwargs.setdefault("exit_on_error", False)  # parse errors raise; train_command prints them as one line
        kwargs.setdefault("allow_abbrev", False)  # --model.num_candidate is a typo, not num_candidates
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        MopCLI.parsers.append(parser)
        parser.add_argument("--validate_before_fit", type=bool, default=True,
                            help="validate the untrained gate before fitting (the number to beat)")

    def _parse_ckpt_path(self) -> None:
        """Lightning 2.6 replaces the model's settings by the checkpoint's when ``--ckpt_path FILE`` resumes a
        run, which silently drops the ``--model.*`` given now (e.g. a new ``export_dir``). Here the settings
        of this command win; those that differ from the checkpoint's are listed on stderr."""
        import sys
        from pathlib import Path

        import torch

        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        old = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        now = self.config[sub].get("model")
        for key, value in sorted(old.items()):
            if now is not None and key in now and now[key] != value:
                print(f"note: resuming {ckpt_path}: model.{key} = {now[key]!r} (the checkpoint's run had "
                      f"{value!r})", file=sys.stderr)

    @classmethod
    def known_keys(cls) -> list[str]:
        keys = set()
        for parser in cls.parsers:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    keys.update(parser.get_defaults().keys())
                except (ArgumentError, TypeError, ValueError):
                    continue
        return sorted(keys)

    def instantiate_classes(self) -> None:
        """Errors Lightning raises while building the trainer, model or data from the config become one
        line."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
        except MopError:
            raise
        except (MisconfigurationException, TypeError, ValueError, ImportError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MopError(f"cannot build the run from its config: {first}") from err

    def before_fit(self) -> None:
        from mop.assets import check_model_path

        # checkpoints where ``--ckpt_path last`` finds them (see train_command)
        for cb in self.trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.join(self.trainer.default_root_dir, "checkpoints")
        # Data, sizes and paths that would otherwise fail only after minutes of embedding and persona
        # synthesis.
        self.datamodule.check_sizes(self.model.hparams.num_candidates)
        self.model.check_prompt_template(self.datamodule.population().spec)
        check_model_path(self.model.hparams.lm, "model.lm")
        check_model_path(self.datamodule.embedder, "data.embedder", role="embedder")
        if self.datamodule.personas.synthesizer == "llm":
            check_model_path(self.datamodule.personas.lm, "data.personas.lm")
        self._t0 = time.perf_counter()
        self._untrained = None
        config = self.config[self.subcommand]
        if config.get("validate_before_fit") and not config.get("ckpt_path"):
            results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
            self._untrained = results[0].get("val/nll_per_token") if results else None

    def after_fit(self) -> None:
        trainer = self.trainer
        validated = getattr(self.model, "validated_at_step", None) == trainer.global_step
        if trainer.limit_val_batches and not validated:
            # training stopped where no validation ran (--trainer.max_steps mid-epoch, check_val_every_n_epoch
            # > 1...): validate the gate being exported, so its score is printed and exported (every rank)
            trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        if not trainer.is_global_zero:
            return
        from mop.export import export_from_module

        out = export_from_module(self.model, self.trainer)
        trained = self.trainer.callback_metrics.get("val/nll_per_token")
        if self._untrained is not None:
            print(f"val/nll_per_token  untrained gate: {self._untrained:.4f}")
        if trained is not None:
            print(f"val/nll_per_token  trained gate:   {float(trained):.4f}")
        print(f"fit wall time: {time.perf_counter() - self._t0:.0f} s")
        print(f"exported gate: {out}")
        ckpt_cb = self.trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "")
        if best and getattr(ckpt_cb, "monitor", None):
            score = ckpt_cb.best_model_score
            shown = f" ({ckpt_cb.monitor} {float(score):.4f})" if score is not None else ""
            print(f"best checkpoint{shown}: {best} (export it with: mop export {best} OUT_DIR)")
        last = getattr(ckpt_cb, "last_model_path", "")
        if last:
            print(f"last checkpoint: {last} (resume with --ckpt_path last)")


def _config_key(key: str) -> str:
    return "-c/--config" if key == "config" else f"config key {key}"


def train_command(argv: list[str], prog: str = "mop train") -> int:
    """Train a gate on a population with a frozen LM (LightningCLI), then export it.

    ``mop train [fit] -c CONFIG [--model.KEY V --data.KEY V --trainer.KEY V ...]``; ``mop train --help`` lists
    every option. Checkpoints go to ``<trainer.default_root_dir>/checkpoints`` (unless a ModelCheckpoint names
    its dirpath), so ``--ckpt_path last`` resumes an interrupted run; every training step draws its random
    numbers from a generator seeded by (seed, epoch, step, rank), so a resumed run repeats an uninterrupted
    one.
    """
    for name in ("lightning.pytorch", "lightning.fabric"):  # seed / accelerator chatter; warnings still show
        logging.getLogger(name).setLevel(logging.WARNING)
    # seed_everything left unset is seeded with 0: not worth a warning line (it would precede a config error)
    warnings.filterwarnings("ignore", message="No seed found, seed set to 0")
    # train.py / mop train pass the command line on as args=, which LightningCLI would warn about
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    register()
    argv = list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        argv = ["fit", *argv]  # `mop train -c CONFIG` fits
    if not any(t in ("-c", "--config", "-h", "--help") or t.startswith(("--config=", "-c=", "--print_config"))
               for t in argv):
        # without a config the defaults would start a full run on the whole bundled corpus
        raise MopError(f"{prog} needs a config: -c CONFIG (e.g. -c configs/quickstart.yaml); options after "
                       "it override its keys (--model.lr 0.003, --trainer.max_epochs 2)")
    MopCLI.parsers, MopCLI.prog = [], prog
    try:
        MopCLI(MixtureOfPersonas, PopulationDataModule, args=argv, save_config_kwargs={"overwrite": True})
    except ArgumentError as err:  # jsonargparse: an unknown key, a wrong type, a missing config file...
        message = error_line(str(err), [], [], _config_key)
        # a key of the config file that no section has: "Subcommand 'fit' does not accept option 'x'"
        message = re.sub(r"^Subcommand '\w+' does not accept option", "unknown config key", message)
        raise MopError(_with_hint(message, argv)) from None
    return 0


def _with_hint(message: str, argv: list[str]) -> str:
    """A "did you mean" for a misspelt key, typed on the command line or written in the config file."""
    import difflib

    if "did you mean" in message:
        return message
    known = MopCLI.known_keys()
    typed = [t[2:].partition("=")[0] for t in argv if t.startswith("--")]
    typed += message.split("'")[1::2]  # the quoted names, e.g. "does not accept option 'seed_everythin'"
    hints = []
    for key in typed:
        if key in known:
            continue
        match = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if match and match[0] not in hints and (key in message or f"--{key}" in message):
            hints.append(match[0])
    return message + (f" (did you mean {', '.join(repr(h) for h in hints)}?)" if hints else "")


def main(argv: list[str] | None = None) -> int:
    """``python train.py fit ARGS`` == ``mop train ARGS``."""
    import sys

    return run(lambda: train_command(sys.argv[1:] if argv is None else argv, prog="train.py"))
