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

from lightning.pytorch.cli import LightningCLI

from mop.cli import run
from mop.datamodule import PopulationDataModule
from mop.module import MixtureOfPersonas


class MopCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--validate_before_fit", type=bool, default=True,
                            help="validate the untrained gate before fitting (the number to beat)")

    def before_fit(self) -> None:
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


def main() -> int:
    for name in ("lightning.pytorch", "lightning.fabric"):  # seed / accelerator chatter; warnings still show
        logging.getLogger(name).setLevel(logging.WARNING)
    MopCLI(MixtureOfPersonas, PopulationDataModule, save_config_kwargs={"overwrite": True})
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
