"""The LightningModule: trained gate, frozen-LM scorer and exemplar index (docs/method.md sections 1-2).

``training_step`` minimises the mixture NLL estimate of docs/method.md section 2: each record's top-M
(persona, exemplar) pairs plus one importance-weighted exploration pair drawn outside them.
Only the gate's parameters reach the optimiser; checkpoints hold the gate and metadata, never LM weights
(the LM is kept outside the module's registered children).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from mop.datamodule import batches_done_in_epoch
from mop.errors import MopError
from mop.gating import Gate, mixture_nll, select_candidates
from mop.prompts import DEFAULT_TEMPLATE, render_prompt, validate_prompt_template
from mop.types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


def _mark_epoch_started(checkpoint: dict[str, Any]) -> None:
    """Mend the loop state of a mid-epoch checkpoint whose epoch is recorded as not started.

    Lightning 2.6 does not count the epoch it starts after resuming a finished run with a larger
    ``max_epochs`` as started, so that epoch's mid-epoch checkpoints look like "between epochs" with batches
    already done; resumed from one, Lightning restarts the epoch's batch count at 0 and skips the epoch-end
    validation (its batch index never reaches the epoch's length). Marked as started, the checkpoint reads
    as an uninterrupted run's mid-epoch one does (tests/test_crash.py)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return
    cur = epochs["current"]
    mid_epoch = 0 < batches["current"]["ready"] and not batches.get("is_last_batch", False)
    if mid_epoch and cur["ready"] == cur["started"] == cur["processed"] == cur["completed"]:
        for part in ("current", "total"):
            epochs[part]["ready"] = epochs[part]["started"] = epochs[part]["completed"] + 1


class MixtureOfPersonas(pl.LightningModule):
    """Mixture of Personas: learns pi(x), Omega_k(x) and tau_k against a frozen causal LM.

    Score cache: with frozen temperatures (``learn_tau: false``) the LM term
    log p^tau_k(y_i | prompt(g_k, e_j, x_i)) depends only on (record i, persona k, exemplar j), so with
    ``score_cache: true`` (the default) it is computed once and reused in later steps and epochs (exact: the
    same value the LM gave the first time); ``perf/score_cache_hit_rate`` is logged per training epoch. With
    learnable temperatures every step needs the per-token terms for d/dtau, so the cache is off.
    """

    def __init__(
        self,
        lm: str = "smollm2-135m",
        lm_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        use_chat_template: bool = False,
        prompt_template: str = DEFAULT_TEMPLATE,
        target_prefix: str = " ",
        max_prompt_tokens: PositiveInt = 384,
        max_target_tokens: PositiveInt = 96,
        max_batch_tokens: PositiveInt = 4096,
        share_prefixes: bool = True,
        prefix_cache_mb: NonNegativeFloat = 256.0,
        score_cache: bool = True,
        hidden_dim: PositiveInt = 128,
        init_tau: PositiveFloat = 0.6,
        learn_tau: bool = True,
        gate_seed: int = 0,
        omega_init_scale: NonNegativeFloat = 0.0,
        num_candidates: PositiveInt = 4,
        explore: bool = True,
        explore_samples: PositiveInt = 1,
        val_explore_samples: PositiveInt = 1,
        exact_omega_max_pool: NonNegativeInt = 20_000,
        omega_topk: PositiveInt = 256,
        lr: PositiveFloat = 1e-3,
        weight_decay: NonNegativeFloat = 0.0,
        export_dir: str | None = None,
    ):
        """
        Args:
            lm: the frozen causal LM (bundled name, local path or hub id).
            lm_dtype: ``float32`` / ``bfloat16`` / ``float16``; None keeps the checkpoint's dtype.
            use_chat_template: wrap prompts in the tokenizer's chat template (instruction-tuned LMs).
            prompt_template: format string over persona, exemplar and target context (mop.prompts).
            hidden_dim: d, the gate's projection size.
            init_tau: initial per-persona temperature.
            learn_tau: train the temperatures (False freezes them at init_tau, which enables the score
                cache).
            num_candidates: M, the (persona, exemplar) pairs scored per record.
            explore: also score exploration pairs drawn from ((pi + uniform) / 2, (Omega + uniform) / 2) with
                their importance weights (``explore_samples`` S of them, M + S LM calls per record): the loss
                is then an estimate of the full mixture NLL, not only of its top-M part, which otherwise
                collapses the gate (mop.gating).
                Validation uses it too, with a fixed seed, so val/nll compares gates of any sharpness fairly.
            explore_samples: exploration pairs per record (S >= 1, each weighted 1/S; M + S LM calls);
                training only (validation uses ``val_explore_samples``).
            val_explore_samples: exploration pairs per validation record. The default 1 keeps val/nll
                comparable with earlier runs, but a one-sample estimate overstates the NLL of a spread
                gate more than that of a collapsed one (benchmarks/results/gate_diagnosis.md); use
                several (e.g. 8) to rank gates of different sharpness.
            exact_omega_max_pool: normalise Omega exactly (dense) up to this pool size; top-k beyond it.
            omega_topk: exemplars per persona Omega is normalised over when the pool is larger.
            lr: AdamW learning rate of the gate.
            weight_decay: AdamW weight decay.
            target_prefix: text put before every response when it is tokenised (a space: the LM writes
                " Great" after "Review:", not "Great").
            max_prompt_tokens: prompts are truncated from the left beyond this.
            max_target_tokens: responses are truncated beyond this.
            max_batch_tokens: token budget of one LM micro-batch (padding included).
            share_prefixes: run token prefixes shared by several scored pairs (instruction + persona,
                + exemplar) through the LM once and reuse their keys/values (exact; mop.scoring).
            prefix_cache_mb: memory budget of the prefix keys/values kept across steps (the LM is frozen);
                0 keeps none across steps.
            score_cache: with frozen temperatures (learn_tau false), cache each (record, persona, exemplar)
                LM log-likelihood and reuse it in later epochs; no effect while tau is learned.
            gate_seed: seed of the gate's initialisation.
            omega_init_scale: > 0 starts Omega as a retrieval prior (Gate.init_retrieval_prior,
                W_e^T W_x = scale times the projection on the pool's top-d principal directions); 0 (default):
                random start.
            export_dir: where the trained gate is exported at the end of fit (default: the log dir).
        """
        super().__init__()
        if num_candidates <= 0:
            raise MopError(f"num_candidates (M) must be positive, got {num_candidates}")
        if init_tau <= 0:
            raise MopError(f"init_tau must be positive, got {init_tau}")
        self.save_hyperparameters()
        self.gate: Gate | None = None
        self._scorer = None  # set by setup() or attach_scorer(); deliberately not an nn.Module child
        self._dm = None  # the bound PopulationDataModule
        self._targets: dict[str, list[list[int]]] = {}
        self._lm_time = 0.0
        # (record id, k, exemplar id, tau) -> LL
        self._score_cache: dict[tuple[str, int, str, float], float] = {}
        self._cache_counts = [0, 0]  # training lookups, hits in the current epoch

    # ---------------------------------------------------------------------------------------------- wiring
    def attach_scorer(self, scorer) -> None:
        """Use this scorer (e.g. a test double) instead of loading ``lm`` in setup()."""
        object.__setattr__(self, "_scorer", scorer)
        self._score_cache.clear()  # cached values belong to the previous LM

    @property
    def uses_score_cache(self) -> bool:
        """True when LM scores are cached: temperatures frozen and ``score_cache`` on."""
        return bool(self.hparams.score_cache) and not (self.gate is not None
                                                       and self.gate.log_tau.requires_grad)

    @property
    def scorer(self):
        return self._scorer

    @property
    def artifacts(self):
        return self._dm.artifacts

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if trainer.world_size > 1 and trainer.strategy.root_device.type == "cpu":
            # several CPU ranks on one machine: share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, trainer.num_devices)))
        self.bind(trainer.datamodule, stage)

    def check_prompt_template(self, spec) -> None:
        """Refuse a prompt template the dataset (a resolved :class:`mop.data.DatasetSpec`) cannot fill."""
        validate_prompt_template(self.hparams.prompt_template, spec.context_columns, bool(spec.label_column))

    def bind(self, dm, stage: str | None = None) -> None:
        """Attach a set-up datamodule: build the gate, register the frozen embeddings, tokenise targets."""
        dm.setup(stage)
        object.__setattr__(self, "_dm", dm)
        art = dm.artifacts
        self.check_prompt_template(art.population.spec)
        if self.gate is None:
            self.gate = Gate(art.embed_dim, len(art.persona_texts), self.hparams.hidden_dim,
                             self.hparams.init_tau, seed=self.hparams.gate_seed)
            self.gate.log_tau.requires_grad_(self.hparams.learn_tau)
            if self.hparams.get("omega_init_scale", 0.0) > 0:
                self.gate.init_retrieval_prior(torch.as_tensor(art.pool_emb), self.hparams.omega_init_scale)
        self.register_buffer("persona_emb", torch.as_tensor(art.persona_emb), persistent=False)
        # the index's array is read-only by design; the buffer is never written
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.register_buffer("pool_emb", torch.as_tensor(art.pool_emb), persistent=False)
        for split, emb in art.context_emb.items():
            self.register_buffer(f"context_emb_{split}", torch.as_tensor(emb), persistent=False)
        if self._scorer is None:
            from mop.assets import load_lm
            from mop.scoring import FrozenLMScorer

            model, tokenizer = load_lm(self.hparams.lm, dtype=self.hparams.lm_dtype)
            self.attach_scorer(FrozenLMScorer(
                model, tokenizer, use_chat_template=self.hparams.use_chat_template,
                target_prefix="" if self.hparams.use_chat_template else self.hparams.target_prefix,
                max_prompt_tokens=self.hparams.max_prompt_tokens,
                max_target_tokens=self.hparams.max_target_tokens,
                max_batch_tokens=self.hparams.max_batch_tokens, share_prefixes=self.hparams.share_prefixes,
                prefix_cache_mb=self.hparams.prefix_cache_mb))
        for split in ("train", "val", "test"):  # tokenise every target once, not every step
            if split not in self._targets:
                self._targets[split] = self._scorer.encode_targets(
                    [r.response for r in art.population[split]])

    def _lm_to_device(self) -> None:
        """The LM is not a registered child, so Lightning does not move it: follow the gate's device."""
        model = getattr(self._scorer, "model", None)
        if model is not None and next(model.parameters()).device != self.device:
            model.to(self.device)
        if (model is not None and self.device.type == "cpu"
                and next(model.parameters()).dtype == torch.bfloat16):
            try:
                native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            except (AttributeError, RuntimeError):
                native = True
            if not native:  # measured in benchmarks/scoring_speed.py: ~50x slower than float32 on AVX2
                warnings.warn("lm_dtype bfloat16 on a CPU without bf16 instructions (AVX512-BF16/AMX): "
                              "matmuls are emulated and far slower than float32; use lm_dtype float32 on "
                              "this machine",
                              stacklevel=2)

    def on_fit_start(self) -> None:
        self._lm_to_device()

    def on_validation_start(self) -> None:
        self._lm_to_device()

    def configure_optimizers(self):
        params = [p for p in self.gate.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # ------------------------------------------------------------------------------------------ the loss
    def mixture_loss(self, split: str, idx: torch.Tensor, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """Mixture NLL of records ``idx`` of ``split``: top-M candidate pairs plus the importance-weighted
        exploration pair (an estimate of the full mixture, see mop.gating.select_candidates)."""
        art, dm = self.artifacts, self._dm
        rows = idx.tolist()
        hx = getattr(self, f"context_emb_{split}")[idx]  # (B, D)
        cand = select_candidates(self.gate, hx, self.persona_emb, self.pool_emb, art.index,
                                 [dm.exclude[split][r] for r in rows], self.hparams.num_candidates,
                                 self.hparams.exact_omega_max_pool, self.hparams.omega_topk,
                                 explore=self.hparams.explore,
                                 generator=self._explore_generator(split, idx, batch_idx),
                                 explore_samples=self.hparams.get("explore_samples", 1) if split == "train"
                                 else self.hparams.get("val_explore_samples", 1))
        B, M = cand.persona.shape
        valid = cand.exemplar >= 0  # False where target masking left a record fewer than M pairs
        if not bool(valid.any(-1).all()):
            raise MopError("a record has no usable exemplar after target masking: the exemplar pool is too "
                           "small; add exemplars or relax mask_same_response / mask_same_group")
        pairs = valid.nonzero().tolist()  # [(b, m)] in row-major order
        tau = self.gate.tau[cand.persona[valid]]  # (P,) per-pair temperature of its persona
        scored = self._score_pairs(split, rows, pairs, cand, tau)  # (P,)
        log_lik = torch.full((B, M), float("-inf"), device=cand.log_weight.device)
        log_lik = log_lik.masked_scatter(valid, scored.to(log_lik.device).float())  # (B, M)
        nll = mixture_nll(cand.log_weight, log_lik.to(cand.log_weight.device))  # (B,)
        n_tok = torch.tensor([len(self._targets[split][r]) for r in rows], dtype=torch.float32,
                             device=nll.device)
        return {"nll": nll.mean(), "nll_per_token": nll.sum() / n_tok.sum(),
                "entropy": self.gate.entropy(cand.log_pi),
                "omega_entropy": cand.omega_entropy.mean(),
                "selected_mass": (cand.log_weight[:, :self.hparams.num_candidates].detach().exp().sum(-1)
                                  .mean()),
                "approximate": cand.approximate,
                "tokens": n_tok.sum()}

    def _explore_generator(self, split: str, idx: torch.Tensor, batch_idx: int = 0) -> torch.Generator:
        """The generator of a step's random draws (the exploration pairs).

        Training: seeded by (seed_everything, epoch, batch, rank), so a step draws the same numbers however
        the run got there, and a run resumed from a checkpoint repeats an uninterrupted run exactly (Lightning
        checkpoints hold no RNG state). The batch is its position in the epoch, the global step less the
        steps of earlier epochs (mop.datamodule.batches_done_in_epoch; ``batch_idx`` in an uninterrupted
        run), not Lightning's ``batch_idx``, which restarts at 0 on some resumes.
        Validation: seeded by the batch's first record, so val/nll is the same estimate in every run and
        epoch of a fixed gate."""
        gen = torch.Generator(device=idx.device)
        if split == "train" and self.training:
            import numpy as np

            seed = int(os.environ.get("PL_GLOBAL_SEED", "0")) & (2**63 - 1)  # set by seed_everything
            try:
                trainer = self.trainer
                epoch, rank = trainer.current_epoch, trainer.global_rank
                if trainer.accumulate_grad_batches == 1 and trainer.num_training_batches != float("inf"):
                    batch_idx = batches_done_in_epoch(trainer, int(trainer.num_training_batches))
            except RuntimeError:  # not attached to a Trainer (a direct call)
                epoch, rank = 0, 0
            state = np.random.SeedSequence([seed, epoch, batch_idx, rank])
            return gen.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        return gen.manual_seed(int(idx[0]))

    def _score_pairs(self, split: str, rows: list[int], pairs: list[list[int]], cand, tau: torch.Tensor):
        """LM log-likelihood of each selected pair (P,), from the score cache where possible."""
        art = self.artifacts
        keys = None
        todo = list(range(len(pairs)))
        if self.uses_score_cache:
            tau_list = tau.detach().tolist()
            keys = [(art.population[split][rows[b]].id, int(cand.persona[b, m]),
                     art.pool[int(cand.exemplar[b, m])].id, tau_list[p]) for p, (b, m) in enumerate(pairs)]
            todo = [p for p, key in enumerate(keys) if key not in self._score_cache]
            if split == "train" and self.training:
                self._cache_counts[0] += len(keys)
                self._cache_counts[1] += len(keys) - len(todo)
        t0 = time.perf_counter()
        scored = None
        if todo:
            prompts = [render_prompt(self.hparams.prompt_template, art.population.spec.context_template,
                                     art.population[split][rows[pairs[p][0]]],
                                     art.persona_texts[int(cand.persona[pairs[p][0], pairs[p][1]])],
                                     art.pool[int(cand.exemplar[pairs[p][0], pairs[p][1]])]) for p in todo]
            targets = [self._targets[split][rows[pairs[p][0]]] for p in todo]
            scored = self._scorer.score_ids(self._scorer.encode_prompts(prompts), targets,
                                            tau if keys is None else tau.detach()[todo])
        self._lm_time += time.perf_counter() - t0
        if keys is None:
            return scored
        for p, value in zip(todo, scored.detach().cpu().tolist() if scored is not None else []):
            self._score_cache[keys[p]] = value
        return torch.tensor([self._score_cache[k] for k in keys], dtype=torch.float32, device=tau.device)

    def on_train_epoch_start(self) -> None:
        self._cache_counts = [0, 0]

    def on_train_epoch_end(self) -> None:
        lookups, hits = self._cache_counts
        if self.uses_score_cache and lookups:
            self.log("perf/score_cache_hit_rate", hits / lookups, sync_dist=self.trainer.world_size > 1)

    def _empty_step(self) -> torch.Tensor:
        """A zero loss still connected to every gate parameter (a rank whose batch is all padding)."""
        return sum(p.sum() for p in self.gate.parameters() if p.requires_grad) * 0.0

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:
        idx = idx[idx >= 0]  # -1: padding from ExactDistributedSampler
        if idx.numel() == 0:
            return self._empty_step()
        out = self.mixture_loss("train", idx, batch_idx)
        B = idx.shape[0]
        tau = self.gate.tau.detach()
        self.log_dict({"train/nll": out["nll"], "train/nll_per_token": out["nll_per_token"],
                       "gate/entropy": out["entropy"], "gate/omega_entropy": out["omega_entropy"],
                       "gate/selected_mass": out["selected_mass"],
                       "gate/tau_mean": tau.mean(), "gate/tau_min": tau.min(), "gate/tau_max": tau.max(),
                       "perf/lm_seconds": self._lm_time},
                      batch_size=B, prog_bar=False, on_step=True, on_epoch=True)  # rank 0's view
        self._lm_time = 0.0  # frozen-LM seconds of this step (the hot path), logged above
        self.log("nll_tok", out["nll_per_token"], prog_bar=True, batch_size=B, on_step=True, on_epoch=False,
                 logger=False)
        if out["approximate"] and batch_idx == 0:
            self.print("note: Omega normalised over the top-k retrieved exemplars "
                       "(pool > exact_omega_max_pool)")
        return out["nll"]

    def validation_step(self, idx: torch.Tensor, batch_idx: int) -> None:
        idx = idx[idx >= 0]  # -1: padding from ExactDistributedSampler
        if idx.numel() == 0:
            return
        out = self.mixture_loss("val", idx)
        B = idx.shape[0]
        # ratios of sums over the whole split (all ranks): accumulated here, reduced at epoch end
        self._val_sums += torch.tensor([float(out["nll"]) * B, float(out["tokens"]), B,
                                        float(out["entropy"]) * B, float(out["omega_entropy"]) * B],
                                       dtype=torch.float64)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(5, dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        self._lm_time = 0.0  # perf/lm_seconds counts training steps only
        sums = self._val_sums.to(self.device)
        if self.trainer.world_size > 1:
            sums = self.all_gather(sums).reshape(-1, sums.numel()).sum(0)
        nll, tokens, records, entropy, omega_entropy = sums.tolist()
        if records > 0:
            self.log_dict({"val/nll": nll / records, "val/nll_per_token": nll / tokens,
                           "val/gate_entropy": entropy / records}, prog_bar=True,
                          sync_dist=True)  # already equal on every rank; the mean keeps Lightning quiet
            self.log("val/omega_entropy", omega_entropy / records, sync_dist=True)
            if not self.trainer.sanity_checking:
                self.validated_at_step = self.trainer.global_step  # which gate the val/* metrics describe

    # -------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        art = self.artifacts
        checkpoint["mop"] = {"artifacts_dir": str(art.directory), "embedder": art.embedder,
                             "dataset": dataclasses.asdict(self._dm.dataset),
                             "embed_dim": art.embed_dim, "num_personas": len(art.persona_texts),
                             "persona_texts": art.persona_texts, "lm": self.hparams.lm,
                             "mask_other_label": bool(getattr(self._dm, "mask_other_label", False))}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _mark_epoch_started(checkpoint)
        meta = checkpoint.get("mop")
        if meta and self.gate is None:
            self.gate = Gate(meta["embed_dim"], meta["num_personas"], self.hparams.hidden_dim,
                             self.hparams.init_tau)
