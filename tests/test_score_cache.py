"""The LM score cache of MixtureOfPersonas (frozen temperatures): exact reuse, hits in later epochs, off when
tau learns."""

from __future__ import annotations

import pytest
import torch
from helpers import byte_tokenizer, make_tiny_lm, synthetic_datamodule

from mop.module import MixtureOfPersonas
from mop.scoring import FrozenLMScorer

TEMPLATE = "Persona: {persona}\nExample: {exemplar_response}\nWrite about {topic}.\n"


pytestmark = pytest.mark.usefixtures("one_thread")


class CountingScorer(FrozenLMScorer):
    """The real scorer, counting the pairs the LM actually scored."""

    pairs_scored = 0

    def score_ids(self, prompt_ids, target_ids, tau):
        self.pairs_scored += len(prompt_ids)
        return super().score_ids(prompt_ids, target_ids, tau)


def _module(dm, learn_tau: bool, score_cache: bool = True, **kw):
    tok = byte_tokenizer()
    module = MixtureOfPersonas(num_candidates=3, prompt_template=TEMPLATE, learn_tau=learn_tau,
                               score_cache=score_cache, **kw)
    module.attach_scorer(CountingScorer(make_tiny_lm()[0], tok, max_batch_tokens=2048))
    module.bind(dm)
    return module


def test_cached_loss_equals_uncached_loss_exactly_and_skips_the_lm():
    dm = synthetic_datamodule(n_train=12, n_val=4, k=3, n_pool=12)
    cached = _module(dm, learn_tau=False, explore=False)
    plain = _module(dm, learn_tau=False, score_cache=False, explore=False)
    plain.gate.load_state_dict(cached.gate.state_dict())
    assert cached.uses_score_cache and not plain.uses_score_cache
    idx = torch.tensor([0, 5, 7, 11])
    first = cached.mixture_loss("train", idx)["nll"]
    n_first = cached.scorer.pairs_scored
    again = cached.mixture_loss("train", idx)["nll"]
    reference = plain.mixture_loss("train", idx)["nll"]
    assert n_first == 4 * 3 and cached.scorer.pairs_scored == n_first  # the second call ran no LM at all
    assert again.item() == first.item() == reference.item()  # bitwise equal, not merely close
    again.backward()  # the gate still gets its gradient through pi and Omega
    assert cached.gate.W_x.weight.grad.abs().sum() > 0


def test_training_epochs_hit_the_cache_and_log_the_rate(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    dm = synthetic_datamodule(n_train=16, n_val=4, k=3, n_pool=16, batch_size=8)
    module = _module(dm, learn_tau=False, lr=1e-4, explore=False)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    import csv

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    rates = [float(r["perf/score_cache_hit_rate"]) for r in rows if r.get("perf/score_cache_hit_rate")]
    assert len(rates) == 2
    assert rates[0] == 0.0 and rates[1] > 0.5  # epoch 1 fills the cache, epoch 2 reuses it
    assert module.scorer.pairs_scored < 2 * 16 * 3


def test_cache_is_off_while_tau_learns():
    dm = synthetic_datamodule(n_train=8, n_val=4, k=2, n_pool=8)
    module = _module(dm, learn_tau=True, explore=False)
    assert not module.uses_score_cache
    idx = torch.tensor([0, 1])
    module.mixture_loss("train", idx)["nll"].backward()
    assert module.gate.log_tau.grad is not None and module.gate.log_tau.grad.abs().sum() > 0
    module.mixture_loss("train", idx)
    assert module.scorer.pairs_scored == 2 * 2 * 3 and not module._score_cache
