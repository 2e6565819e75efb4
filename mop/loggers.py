"""Weights & Biases (offline by default) plus a plain CSV of every logged metric, as one Lightning logger."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from mop.files import atomic_path


class WandbCSVLogger(WandbLogger):
    """A WandbLogger that is offline unless asked (``offline: false`` or ``MOP_WANDB_ONLINE=1``) and that also
    appends every metric row to ``<save_dir>/metrics-<version>.csv``, so a run is readable without wandb."""

    def __init__(self, *args, offline: bool = True, save_dir: str = "runs", project: str = "mop", **kwargs):
        if os.environ.get("MOP_WANDB_ONLINE") == "1":
            offline = False
        os.environ.setdefault("WANDB_SILENT", "true")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(*args, offline=offline, save_dir=save_dir, project=project, **kwargs)
        self._csv_rows: list[dict] = []

    @property
    def csv_path(self) -> Path:
        return Path(self.save_dir) / f"metrics-{self.version}.csv"

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        self._csv_rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
        self._write_csv()

    def _write_csv(self) -> None:
        keys = sorted({k for row in self._csv_rows for k in row} - {"step"})
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", *keys])
            writer.writeheader()
            writer.writerows(self._csv_rows)
