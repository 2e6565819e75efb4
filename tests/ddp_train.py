"""Run by tests/test_ddp.py: a 2-process CPU DDP (gloo) fit on a tiny random LM; each rank dumps its gate."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import lightning.pytorch as pl
import torch
from helpers import byte_tokenizer, make_tiny_lm, synthetic_datamodule

from mop.cli import close_process_group
from mop.module import MixtureOfPersonas
from mop.scoring import FrozenLMScorer


class RecordingModule(MixtureOfPersonas):
    """Notes which records this rank scored, the raw batches its sampler gave it (-1: padding) and how many
    validation passes ran."""

    scored: list[int] = []
    scored_val: list[int] = []
    raw_train: list[int] = []
    val_passes: int = 0

    def mixture_loss(self, split, idx, batch_idx=0):
        if split == "train" and self.training:
            self.scored.extend(idx.tolist())
        elif split == "val":
            self.scored_val.extend(idx.tolist())
        return super().mixture_loss(split, idx, batch_idx)

    def training_step(self, idx, batch_idx):
        self.raw_train.extend(idx.tolist())
        return super().training_step(idx, batch_idx)

    def on_validation_epoch_start(self):
        type(self).val_passes += 1
        super().on_validation_epoch_start()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    dm = synthetic_datamodule(n_train=25, n_val=9, k=3, n_pool=25, batch_size=4)  # odd: ranks get 13 and 12
    tok = byte_tokenizer()
    module = RecordingModule(num_candidates=2, prompt_template="P: {persona}\nE: {exemplar_response}\n",
                               lr=0.05)
    module.attach_scorer(FrozenLMScorer(make_tiny_lm(hidden=16, layers=1)[0], tok, max_batch_tokens=2048))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/nll"]
    trainer.fit(module, datamodule=dm)
    per_epoch = list(module.scored)
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/nll"]
    rank = trainer.global_rank
    torch.save({k: v.detach().clone() for k, v in module.gate.state_dict().items()}, out / f"gate{rank}.pt")
    (out / f"loss{rank}.json").write_text(json.dumps({"before": before, "after": after, "scored": per_epoch,
                                                      "world_size": trainer.world_size,
                                                      "raw": module.raw_train,
                                                      "scored_val": module.scored_val,
                                                      "val_passes": RecordingModule.val_passes}))
    close_process_group()  # what mop.cli.run does at the end of every command: else gloo may abort the exit


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]))
