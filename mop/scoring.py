"""The frozen-LM scorer: log p_LM^tau(y | prompt) for batches of (prompt, target) pairs, exact in tau.

log p^tau(y | prompt) = sum_t log softmax(z_t / tau)[y_t], z_t the frozen LM's logits (docs/method.md
sections 1-2). This is the hot path of training, so every token counts:

- prompt and target are tokenised separately and concatenated; only the target tokens are scored;
- pairs are sorted by length and packed into right-padded micro-batches under a token budget (padding
  counted);
- the LM runs without autograd and only its decoder body runs over the sequence: the output head is applied
  to the hidden states at the target positions alone, so no (B, L, V) logits are ever materialised;
- the value and its exact derivative in tau are computed together in float32, chunked over target tokens
  (memory ~ 2 x chunk_tokens x V floats), and a custom autograd function hands d/dtau to the gate.
  No gradient ever flows into the LM.
- token prefixes shared by several pairs (instruction + persona, + exemplar, ...) run through the LM once
  (``share_prefixes``, the default): a trie over the pairs' token ids picks the shared prefixes, each is run
  once with ``use_cache`` to get its key/values, and every pair then runs only its own suffix (+ target)
  against its deepest shared prefix's key/values. Prefix key/values are kept across calls under a memory
  budget (``prefix_cache_mb``, least recently used first out): the LM is frozen, so they never change.
  Exact: the same positions, the same attention, only no position is computed twice (see
  :meth:`FrozenLMScorer._score_shared`).

For a token with logits z (V,) and target y:  value = z_y / tau - logsumexp(z / tau),
d value / d tau = (E_{softmax(z / tau)}[z] - z_y) / tau^2.
"""

from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from mop.errors import MopError

__all__ = ["Encoded", "FrozenLMScorer", "naive_log_likelihood", "tempered_token_terms"]


@dataclass
class Encoded:
    """Token ids of (prompt, target) pairs, ready for :meth:`FrozenLMScorer.score_ids`."""

    prompt_ids: list[list[int]]
    target_ids: list[list[int]]


def tempered_token_terms(
    z: torch.Tensor, y: torch.Tensor, tau: torch.Tensor, *, inplace: bool = False, with_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log softmax(z / tau)[y] and its derivative in tau, for logits z (C, V), y (C,), tau (C,).

    Works on logits centred at the target's, w = z - z_y, so that value = -logsumexp(w / tau) and
    d value / d tau = E_softmax[w] / tau^2 are sums of small terms: float32 then stays accurate at
    vocabularies of 10^5 (uncentred E[z] - z_y loses up to ~1e-2 per token to cancellation).
    z must be float32 or float64; it is overwritten when ``inplace``. Extra memory: one (C, V) buffer
    (two when not inplace). Without ``with_grad`` the derivative is skipped (None).
    """
    zy = z.gather(1, y[:, None])  # (C, 1)
    w = z.sub_(zy) if inplace else z - zy  # (C, V) centred logits, w_y = 0
    p = w / tau[:, None]  # (C, V)
    m = p.amax(dim=1, keepdim=True)  # (C, 1) >= 0
    p.sub_(m).exp_()  # (C, V) unnormalised softmax(w / tau), in place
    norm = p.sum(dim=1)  # (C,) >= 1: the largest term is exp(0)
    value = -(m.squeeze(1) + norm.log())  # (C,) z_y / tau - logsumexp(z / tau)
    if not with_grad:
        return value, None
    expected_w = w.mul_(p).sum(dim=1) / norm  # (C,) E_softmax[z] - z_y (w is consumed)
    return value, expected_w / (tau * tau)


class _TemperedLogLik(torch.autograd.Function):
    """Per-row sum of tempered target log-probs; backward is the exact d/dtau saved during forward.

    Inputs: tau_rows (B,), a function giving (float logits (C, V) for target tokens [start, end), whether they
    may be overwritten), the target ids (T,), their row index (T,), the chunk size, and whether d/dtau is
    needed at all (not under torch.no_grad or for a constant tau). The LM is never part of the autograd graph.
    """

    @staticmethod
    def forward(ctx, tau_rows, logits_fn, targets, rows, chunk_tokens, with_grad):
        tau_tok = tau_rows.detach()[rows]  # (T,)
        out = torch.zeros(tau_rows.shape[0], dtype=tau_rows.dtype, device=tau_rows.device)
        dout = torch.zeros_like(out)
        for start in range(0, targets.shape[0], chunk_tokens):
            end = min(start + chunk_tokens, targets.shape[0])
            z, owned = logits_fn(start, end)  # (C, V) in tau_rows.dtype; owned: ours to overwrite
            value, dvalue = tempered_token_terms(
                z, targets[start:end], tau_tok[start:end], inplace=owned, with_grad=with_grad
            )
            del z
            out.index_add_(0, rows[start:end], value)
            if with_grad:
                dout.index_add_(0, rows[start:end], dvalue)
        ctx.save_for_backward(dout)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (dout,) = ctx.saved_tensors
        return grad_out * dout, None, None, None, None, None


@dataclass
class _PrefixEntry:
    """Key/values of one token prefix kept across calls: per decoder layer (keys, values), each (H, L, D)."""

    key: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    nbytes: int
    uses: int = 0


@dataclass
class _Prefix:
    """A shared prefix of one call: its first ``length`` tokens, the prefix it extends (-1: none), and its
    key/values (per layer (H, >= length, D); from a kept entry, whose key may be longer, or computed now)."""

    length: int
    key: tuple[int, ...]
    parent: int
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    entry: _PrefixEntry | None = field(default=None, repr=False)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision models, float64 kept for float64 models (useful for finite differences)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_tau(tau: torch.Tensor | float, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (n,) temperature tensor on `device` (differentiable when `tau` is), validated positive."""
    if not isinstance(tau, torch.Tensor):
        tau = torch.tensor(float(tau))
    if tau.dim() == 0:
        tau = tau.expand(n)
    if tau.shape != (n,):
        raise MopError(f"tau must be a scalar or have shape ({n},) (one per pair), got {tuple(tau.shape)}")
    tau = tau.to(device=device, dtype=dtype)
    if n and not bool((tau.detach() > 0).all()):
        raise MopError(f"temperatures must be positive, got min {float(tau.detach().min()):.4g}")
    return tau


def cache_kwarg(model) -> str:
    """The name under which ``model``'s forward takes a key/value cache: ``cache`` in recent transformers 5
    releases, ``past_key_values`` before (an unknown keyword would be swallowed by ``**kwargs`` and the cache
    silently left empty). A PEFT wrapper is looked through."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class FrozenLMScorer:
    """Scores log p_LM^tau(target | prompt) under a frozen causal LM, differentiably in tau only.

    Args:
        model: a Hugging Face causal LM (or a ``peft.PeftModel`` around one), frozen and in eval mode.
        tokenizer: its tokenizer; may be None when only :meth:`score_ids` is used.
        use_chat_template: render each prompt as a user turn of the tokenizer's chat template (with the
            generation prompt); the end-of-turn token then terminates the target.
        append_eos: append the end token to each target, so the score accounts for where the text ends.
        eos_token_id: the end token to append (default: the end-of-turn token with a chat template, else the
            tokenizer's eos).
        target_prefix: text put before each target before tokenising (e.g. " " when a plain-text prompt ends
            in "Review:" so the first word gets its natural leading-space token).
        max_prompt_tokens: prompts longer than this lose tokens from the left (a leading BOS is kept).
        max_target_tokens: targets longer than this are cut at the end (the end token is then not scored).
        max_batch_tokens: token budget of one LM micro-batch, padding included.
        chunk_tokens: target tokens whose full-vocabulary logits are held at once (memory ~ 2 x chunk x V).
        check_head: verify once, on a short input, that the decoder-body + output-head shortcut reproduces
            the model's own logits; when it does not (an unknown architecture), fall back to full logits.
        share_prefixes: run token prefixes shared by several pairs (or kept from earlier calls) through the LM
            once and reuse their key/values (same values within float rounding). Verified once on a short
            probe; an architecture where the cached path does not reproduce the plain one falls back to it.
        prefix_cache_mb: memory budget (on the model's device) of the prefix key/values kept across calls,
            least recently used dropped first; 0 keeps nothing across calls (prefixes are still shared within
            a call). Kept key/values are dropped when the model's parameters change (see
            :meth:`clear_prefix_cache`).
        min_shared_tokens: a prefix is run on its own only when it saves at least this many tokens
            ((rows sharing it - 1) x its tokens beyond the shared prefix it extends), or is already kept.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        use_chat_template: bool = False,
        append_eos: bool = True,
        eos_token_id: int | None = None,
        target_prefix: str = "",
        max_prompt_tokens: int = 512,
        max_target_tokens: int = 128,
        max_batch_tokens: int = 8192,
        chunk_tokens: int = 1024,
        check_head: bool = True,
        share_prefixes: bool = True,
        prefix_cache_mb: float = 256.0,
        min_shared_tokens: int = 16,
    ):
        if max_prompt_tokens < 1 or max_target_tokens < 1 or max_batch_tokens < 1 or chunk_tokens < 1:
            raise MopError(
                "max_prompt_tokens, max_target_tokens, max_batch_tokens and chunk_tokens must be >= 1, got "
                f"{max_prompt_tokens}, {max_target_tokens}, {max_batch_tokens}, {chunk_tokens}"
            )
        if min_shared_tokens < 1 or prefix_cache_mb < 0:
            raise MopError(f"min_shared_tokens must be >= 1 and prefix_cache_mb >= 0, got "
                           f"{min_shared_tokens}, {prefix_cache_mb}")
        if use_chat_template and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
            raise MopError("use_chat_template=True but the tokenizer has no chat template (a base model?)")
        self.model = model
        self.tokenizer = tokenizer
        self.use_chat_template = use_chat_template
        self.append_eos = append_eos
        self.target_prefix = target_prefix
        self.max_prompt_tokens = max_prompt_tokens
        self.max_target_tokens = max_target_tokens
        self.max_batch_tokens = max_batch_tokens
        self.chunk_tokens = chunk_tokens
        self.n_truncated = {"prompt": 0, "target": 0}
        self.num_lm_calls = 0  # micro-batches run so far (for logging and tests)
        # decoder positions run (padding included) and real tokens among them, so far (benchmarks and tests)
        self.tokens_run = 0
        self.tokens_real = 0
        self.min_shared_tokens = min_shared_tokens
        self.min_batch_fill = 0.8  # shared path: a batch's shortest run is >= this x its longest (see _pack)
        self.prefix_cache_bytes = int(prefix_cache_mb * 2**20)
        self._store: OrderedDict[tuple[int, ...], _PrefixEntry] = OrderedDict()
        self._store_bytes = 0
        self._store_fingerprint = None
        self.prefix_cache_hits = 0  # kept prefixes used (tests, logging)

        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft.PeftModel
        self._base = base
        config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
        self.vocab_size = int(config.vocab_size)
        self.eos_token_id = self._resolve_eos(eos_token_id)
        self._prompt_prefix = self._special_prefix()
        # Post-head transforms the CausalLM forward applies (Gemma 2/3 softcapping, Cohere, Granite).
        self._softcap = getattr(config, "final_logit_softcapping", None)
        model_type = str(getattr(config, "model_type", ""))
        self._logit_mult = getattr(config, "logit_scale", None) if model_type.startswith("cohere") else None
        self._logit_div = getattr(config, "logits_scaling", None) if "granite" in model_type else None
        self._decoder, self._head = self._find_decoder_and_head(base)
        self.mode = "head" if self._decoder is not None else "full"
        if self.mode == "head" and check_head and not self._head_matches_model():
            warnings.warn(
                f"{type(base).__name__}: decoder body + output head does not reproduce the model's logits; "
                "scoring falls back to full logits (correct, but more memory per micro-batch)",
                stacklevel=2,
            )
            self.mode = "full"
        self.share_prefixes = bool(share_prefixes) and self.mode == "head"
        if self.share_prefixes:
            self._cache_kwarg = cache_kwarg(self._decoder)
            if not self._prefix_path_matches():
                warnings.warn(
                    f"{type(base).__name__}: scoring with shared-prefix key/values does not reproduce "
                    "the plain path; prefixes are not shared (correct, but slower)", stacklevel=2,
                )
                self.share_prefixes = False

    # ------------------------------------------------------------------ model facts
    @property
    def device(self) -> torch.device:
        """Where input ids go: the device of the input embeddings."""
        return self._base.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._base.get_input_embeddings().weight.dtype

    @staticmethod
    def _find_decoder_and_head(base):
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        decoder = None
        if hasattr(base, "get_decoder"):
            try:
                decoder = base.get_decoder()
            except (AttributeError, NotImplementedError, ValueError):
                decoder = None
        if decoder is None or decoder is base or head is None:
            return None, None
        return decoder, head

    def _resolve_eos(self, eos_token_id: int | None) -> int | None:
        if eos_token_id is not None:
            return int(eos_token_id)
        tok = self.tokenizer
        if tok is None:
            eos = getattr(self._base.config, "eos_token_id", None)
            eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        elif self.use_chat_template:
            from mop.prompts import end_of_turn_id

            eos = end_of_turn_id(tok)
            eos = tok.eos_token_id if eos is None else eos
        else:
            eos = tok.eos_token_id
        if eos is None and self.append_eos:
            raise MopError("append_eos=True but the tokenizer has no eos token; pass eos_token_id=...")
        return eos

    def _special_prefix(self) -> list[int]:
        """Special tokens the tokenizer puts before a text (BOS for most models, nothing for SmolLM2)."""
        tok = self.tokenizer
        if tok is None or self.use_chat_template:
            return []
        full = tok("a b")["input_ids"]
        plain = tok("a b", add_special_tokens=False)["input_ids"]
        for i in range(len(full) - len(plain) + 1):
            if full[i:i + len(plain)] == plain:
                return list(full[:i])
        return []

    # ------------------------------------------------------------------ tokenisation
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise MopError("this scorer was built without a tokenizer: pass token ids to score_ids()")
        return self.tokenizer

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompt ids (with BOS / chat-template framing), left-truncated to max_prompt_tokens."""
        tok = self._need_tokenizer()
        prompts = list(prompts)
        if not prompts:
            return []
        if self.use_chat_template:
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=False) for p in prompts]
            out = [list(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        else:
            encoded = tok(prompts, add_special_tokens=False)["input_ids"]
            out = [self._prompt_prefix + list(ids) for ids in encoded]
        return [self._truncate_prompt(ids) for ids in out]

    def _truncate_prompt(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_prompt_tokens:
            return ids
        self._note_truncation("prompt")
        bos = getattr(self.tokenizer, "bos_token_id", None)
        keep = 1 if ids and bos is not None and ids[0] == bos and self.max_prompt_tokens > 1 else 0
        return ids[:keep] + ids[len(ids) - (self.max_prompt_tokens - keep):]

    def encode_targets(self, targets: Sequence[str]) -> list[list[int]]:
        """Target ids: target_prefix + text without special tokens, then the end token; cut at the end."""
        tok = self._need_tokenizer()
        targets = list(targets)
        if not targets:
            return []
        ids_list = tok([self.target_prefix + t for t in targets], add_special_tokens=False)["input_ids"]
        out = []
        for ids in ids_list:
            ids = list(ids) + ([self.eos_token_id] if self.append_eos else [])
            if len(ids) > self.max_target_tokens:
                self._note_truncation("target")
                ids = ids[: self.max_target_tokens]
            out.append(ids)
        return out

    def encode(self, prompts: Sequence[str], targets: Sequence[str]) -> Encoded:
        if len(prompts) != len(targets):
            raise MopError(f"got {len(prompts)} prompts but {len(targets)} targets")
        return Encoded(self.encode_prompts(prompts), self.encode_targets(targets))

    def _note_truncation(self, what: str) -> None:
        self.n_truncated[what] += 1
        if self.n_truncated[what] == 1:
            limit = self.max_prompt_tokens if what == "prompt" else self.max_target_tokens
            warnings.warn(f"a {what} was truncated to max_{what}_tokens={limit} (further ones are only "
                          "counted in scorer.n_truncated)", stacklevel=3)

    # ------------------------------------------------------------------ scoring
    def score(
        self, prompts: Sequence[str], targets: Sequence[str], tau: torch.Tensor | float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise and score: (log-likelihood (N,), number of scored target tokens (N,))."""
        enc = self.encode(prompts, targets)
        loglik = self.score_ids(enc.prompt_ids, enc.target_ids, tau)
        n_tokens = torch.tensor([len(t) for t in enc.target_ids], dtype=torch.long, device=loglik.device)
        return loglik, n_tokens

    def score_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        tau: torch.Tensor | float,
    ) -> torch.Tensor:
        """log p^tau(target | prompt) per pair, (N,) float32, differentiable with respect to tau only.

        tau is a scalar or (N,) tensor (per-pair temperature); the result lives on tau's device (the model's
        when tau is a number). Pairs are scored in length-sorted micro-batches and returned in input order.
        """
        n = len(prompt_ids)
        if len(target_ids) != n:
            raise MopError(f"got {n} prompts but {len(target_ids)} targets")
        out_device = tau.device if isinstance(tau, torch.Tensor) else self.device
        cdtype = _compute_dtype(self.dtype)
        tau_rows = _as_tau(tau, n, self.device, cdtype)
        if n == 0:
            return torch.zeros(0, dtype=cdtype, device=out_device)
        self._validate_ids(prompt_ids, target_ids)
        if self._base.training:  # e.g. a LightningModule's .train() reached the frozen LM: keep it in eval
            self._base.eval()

        lengths = [len(p) + len(t) - 1 for p, t in zip(prompt_ids, target_ids)]  # the last token: never input
        scored = [i for i in range(n) if len(target_ids[i]) > 0]
        parts, order = [], []
        shared = self._score_shared(scored, prompt_ids, target_ids, tau_rows) if self.share_prefixes else None
        if shared is not None:
            parts, order = shared
        else:
            for rows in self._micro_batches(scored, lengths):
                parts.append(self._score_micro_batch(rows, prompt_ids, target_ids, tau_rows))
                order.extend(rows)
        empty = [i for i in range(n) if len(target_ids[i]) == 0]
        if empty:  # an empty target has probability 1 under any tau
            parts.append(torch.zeros(len(empty), dtype=cdtype, device=tau_rows.device))
            order.extend(empty)
        flat = torch.cat([p.to(tau_rows.device) for p in parts])
        inverse = torch.empty(n, dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(n)
        return flat[inverse.to(flat.device)].to(out_device)

    def _validate_ids(self, prompt_ids, target_ids) -> None:
        for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
            if len(p) == 0:
                raise MopError(f"pair {i} has an empty prompt: the first target token needs a context token "
                               "(a BOS or some prompt text)")
            for ids in (p, t):
                if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
                    raise MopError(f"pair {i} has a token id outside [0, {self.vocab_size}): "
                                   "wrong tokenizer for this model?")

    def _micro_batches(self, rows: list[int], lengths: list[int]) -> list[list[int]]:
        """Longest first, greedily packed so that rows x longest length <= max_batch_tokens."""
        batches: list[list[int]] = []
        current: list[int] = []
        for i in sorted(rows, key=lambda r: -lengths[r]):
            if current and (len(current) + 1) * lengths[current[0]] > self.max_batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _score_micro_batch(self, rows, prompt_ids, target_ids, tau_rows) -> torch.Tensor:
        device, cdtype = self.device, _compute_dtype(self.dtype)
        seqs = [list(prompt_ids[i]) + list(target_ids[i])[:-1] for i in rows]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(rows), width), dtype=torch.long)  # right padding: never seen by real tokens
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        tgt, row_of, pos_of = [], [], []
        for b, (i, s) in enumerate(zip(rows, seqs)):
            ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[b, : len(s)] = 1
            start = len(prompt_ids[i]) - 1  # hidden state at p predicts token p + 1
            tgt.extend(target_ids[i])
            row_of.extend([b] * len(target_ids[i]))
            pos_of.extend(range(start, start + len(target_ids[i])))
        ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        row_t = torch.tensor(row_of, dtype=torch.long)
        pos_t = torch.tensor(pos_of, dtype=torch.long)

        self.num_lm_calls += 1
        self.tokens_run += ids.numel()
        self.tokens_real += sum(len(s) for s in seqs)
        with torch.no_grad():
            if self.mode == "head":
                hidden = self._hidden_states(ids, mask)  # (B, L, H)
                selected = hidden[row_t.to(hidden.device), pos_t.to(hidden.device)]  # (T, H)
                del hidden
                logits_fn = self._head_logits_fn(selected)
            else:
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, L, V)
                selected = logits[row_t.to(logits.device), pos_t.to(logits.device)]  # (T, V)
                del logits

                def logits_fn(start: int, end: int) -> tuple[torch.Tensor, bool]:
                    z = selected[start:end]
                    return (z, False) if z.dtype == cdtype else (z.to(cdtype), True)
        out_dev = selected.device
        tau_b = tau_rows.to(out_dev)[torch.tensor(rows, device=out_dev)]  # (B,) differentiable gather
        return _TemperedLogLik.apply(
            tau_b, logits_fn, torch.tensor(tgt, dtype=torch.long, device=out_dev), row_t.to(out_dev),
            self.chunk_tokens, torch.is_grad_enabled() and tau_b.requires_grad,
        )

    # ------------------------------------------------------------------ prefix sharing
    def _score_shared(self, rows, prompt_ids, target_ids, tau_rows):
        """Score ``rows`` with shared prefixes: (per-batch results, the rows they belong to, in order), or
        None when no prefix is worth sharing (the caller then runs the plain path).

        1. Identical (prompt, target) pairs are one sequence (their hidden states are the same; each row keeps
           its own tau). A sequence's shareable part is its prompt minus the last token (positions never
           scored).
        2. :meth:`_plan_prefixes` picks the prefixes worth sharing from a trie of the shareable parts and the
           prefixes kept from earlier calls; :meth:`_materialise` runs the new ones (each extending the
           longest shared prefix below it), level by level, in batches.
        3. Each sequence then runs only its tokens after its deepest shared prefix, in length-sorted batches
           under the token budget, against the prefixes' key/values left-padded to a common length (the
           attention mask hides the padding; position ids are the true positions; index distances between a
           query and the real keys are the true ones, so sliding windows see what they would see without
           sharing).
        """
        with torch.no_grad():
            self._check_store()
            index: dict[tuple, int] = {}
            seqs: list[list[int]] = []
            caps: list[int] = []
            members: list[list[int]] = []
            for i in rows:
                key = (tuple(prompt_ids[i]), tuple(target_ids[i]))
                u = index.get(key)
                if u is None:
                    u = index[key] = len(seqs)
                    seqs.append(list(prompt_ids[i]) + list(target_ids[i])[:-1])
                    caps.append(len(prompt_ids[i]) - 1)
                    members.append([])
                members[u].append(i)
            prefixes, use = self._plan_prefixes([s[:c] for s, c in zip(seqs, caps)])
            if all(p < 0 for p in use):  # nothing worth sharing: the plain path, batch for batch
                return None
            self._materialise(prefixes)
            plen = [prefixes[p].length if p >= 0 else 0 for p in use]
            slen = [len(s) - q for s, q in zip(seqs, plen)]
            batches = self._pack(list(range(len(seqs))), slen, plen)
        parts, order = [], []
        for batch in batches:
            with torch.no_grad():
                hidden, _ = self._run([(use[u], seqs[u][plen[u]:]) for u in batch], prefixes, want_kv=False)
            tgt, row_of, b_of, pos_of, batch_rows = [], [], [], [], []
            for b, u in enumerate(batch):
                start = caps[u] - plen[u]  # hidden state at prompt length - 1 predicts the first target token
                for i in members[u]:
                    t = target_ids[i]
                    tgt.extend(t)
                    row_of.extend([len(batch_rows)] * len(t))
                    b_of.extend([b] * len(t))
                    pos_of.extend(range(start, start + len(t)))
                    batch_rows.append(i)
            dev = hidden.device
            selected = hidden[torch.tensor(b_of, device=dev), torch.tensor(pos_of, device=dev)]  # (T, H)
            del hidden
            tau_b = tau_rows.to(dev)[torch.tensor(batch_rows, device=dev)]
            parts.append(_TemperedLogLik.apply(
                tau_b, self._head_logits_fn(selected), torch.tensor(tgt, dtype=torch.long, device=dev),
                torch.tensor(row_of, dtype=torch.long, device=dev), self.chunk_tokens,
                torch.is_grad_enabled() and tau_b.requires_grad,
            ))
            order.extend(batch_rows)
        return parts, order

    def _plan_prefixes(self, shareable: list[list[int]]) -> tuple[list[_Prefix], list[int]]:
        """Shared prefixes for sequences whose first tokens are ``shareable[u]``: (prefixes, index per
        sequence).

        A token trie of the shareable parts, walked from the root: a node where sequences part or end is a
        prefix worth running once when >= 2 sequences go through it, it saves >= min_shared_tokens tokens and
        adds >= min_shared_tokens / 2 tokens to the shared prefix it extends (forks a few tokens apart, as in
        "You are a critic who | loves ...", would each cost a level of small LM calls); a node covered by a
        kept prefix (any kept key going through it) is free. Each sequence uses the deepest prefix on its path
        (-1: none). Parents come before children.
        """
        # children, sequences through, sequences ending, kept entry, a sequence
        root: list = [{}, 0, [], None, -1]
        for u, s in enumerate(shareable):
            node = root
            node[1] += 1
            for t in s:
                child = node[0].get(t)
                if child is None:
                    child = node[0][t] = [{}, 0, [], None, u]
                child[1] += 1
                node = child
            node[2].append(u)
        for entry in self._store.values():  # oldest first: the most recently used entry covering a node wins
            node = root
            for t in entry.key:
                node = node[0].get(t)
                if node is None:
                    break
                node[3] = entry
        prefixes: list[_Prefix] = []
        use = [-1] * len(shareable)
        used_entries: dict[int, _PrefixEntry] = {}
        stack = [(child, 1, -1, 0) for child in root[0].values()]
        while stack:
            node, depth, parent, parent_depth = stack.pop()
            children, count, ends, entry, u = node
            fork = len(children) != 1 or bool(ends)
            if entry is not None:
                if fork or any(c[3] is None for c in children.values()):  # deepest kept node on this branch
                    prefixes.append(_Prefix(depth, tuple(shareable[u][:depth]), parent, entry.kv, entry))
                    used_entries[id(entry)] = entry
                    parent, parent_depth = len(prefixes) - 1, depth
            elif (fork and count >= 2 and (count - 1) * (depth - parent_depth) >= self.min_shared_tokens
                  and 2 * (depth - parent_depth) >= self.min_shared_tokens):
                prefixes.append(_Prefix(depth, tuple(shareable[u][:depth]), parent))
                parent, parent_depth = len(prefixes) - 1, depth
            for s in ends:
                use[s] = parent
            stack.extend((c, depth + 1, parent, parent_depth) for c in children.values())
        for entry in used_entries.values():
            entry.uses += 1
            self._store.move_to_end(entry.key)
        self.prefix_cache_hits += len(used_entries)
        return prefixes, use

    def _materialise(self, prefixes: list[_Prefix]) -> None:
        """Compute the key/values of the prefixes that have none, parents first, in batches; keep them."""
        pending = [i for i, p in enumerate(prefixes) if p.kv is None]
        while pending:
            ready = [i for i in pending
                     if prefixes[i].parent < 0 or prefixes[prefixes[i].parent].kv is not None]
            base = [prefixes[prefixes[i].parent].length if prefixes[i].parent >= 0 else 0 for i in ready]
            seg = [prefixes[i].length - b for i, b in zip(ready, base)]
            for batch in self._pack(list(range(len(ready))), seg, base):
                items = [(prefixes[ready[j]].parent, list(prefixes[ready[j]].key[base[j]:])) for j in batch]
                _, kvs = self._run(items, prefixes, want_kv=True)
                for j, kv in zip(batch, kvs):
                    prefix = prefixes[ready[j]]
                    prefix.kv = kv
                    self._keep(prefix, prefixes[prefix.parent] if prefix.parent >= 0 else None)
            pending = [i for i in pending if prefixes[i].kv is None]

    def _pack(self, units: list[int], slen: list[int], plen: list[int]) -> list[list[int]]:
        """Longest run first, greedily packed: rows x longest run <= max_batch_tokens (the tokens run), rows x
        (longest shared prefix + longest run) <= 4 x max_batch_tokens (the key/values attended to), and no run
        shorter than min_batch_fill x the longest (suffix lengths vary much more than whole sequences: without
        this, padding would take back a good part of what sharing saves)."""
        batches: list[list[int]] = []
        current: list[int] = []
        width = context = 0
        for i in sorted(units, key=lambda r: -slen[r]):
            ctx = max(context, plen[i])
            if current and ((len(current) + 1) * width > self.max_batch_tokens
                            or (len(current) + 1) * (ctx + width) > 4 * self.max_batch_tokens
                            or slen[i] < self.min_batch_fill * width):
                batches.append(current)
                current, context = [], 0
                ctx = plen[i]
            if not current:
                width = slen[i]
            current.append(i)
            context = ctx
        if current:
            batches.append(current)
        return batches

    def _run(self, items, prefixes: list[_Prefix], want_kv: bool):
        """Run each item's tokens after its prefix (index into ``prefixes``, -1: none) through the decoder
        body.

        Returns hidden states (B, longest run, H) of the run tokens (right-padded) and, with ``want_kv``, per
        item the key/values of its whole sequence (prefix + run tokens), per layer (H, L, D).
        """
        from transformers import DynamicCache

        device = self.device
        plen = [prefixes[p].length if p >= 0 else 0 for p, _ in items]
        slen = [len(t) for _, t in items]
        pm, sm, n = max(plen), max(slen), len(items)
        ids = torch.zeros((n, sm), dtype=torch.long)
        mask = torch.zeros((n, pm + sm), dtype=torch.long)
        pos = torch.zeros((n, sm), dtype=torch.long)
        for b, (_, toks) in enumerate(items):
            ids[b, : slen[b]] = torch.tensor(toks, dtype=torch.long)
            mask[b, pm - plen[b]: pm + slen[b]] = 1  # left-padded prefix, right-padded run
            pos[b] = torch.arange(plen[b], plen[b] + sm)
        cache = None
        if pm > 0:
            first = next(prefixes[p].kv for p, _ in items if p >= 0)
            layers = []
            for layer in range(len(first)):
                padded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
                for p, _ in items:
                    if p not in padded:
                        if p < 0:
                            k0, v0 = first[layer]
                            shape = (k0.shape[0], pm, k0.shape[2]), (v0.shape[0], pm, v0.shape[2])
                            padded[p] = (k0.new_zeros(shape[0]), v0.new_zeros(shape[1]))
                        else:
                            k, v = prefixes[p].kv[layer]
                            cut, pad = prefixes[p].length, pm - prefixes[p].length
                            padded[p] = (torch.nn.functional.pad(k[:, :cut], (0, 0, pad, 0)),
                                         torch.nn.functional.pad(v[:, :cut], (0, 0, pad, 0)))
                layers.append((torch.stack([padded[p][0] for p, _ in items]),
                               torch.stack([padded[p][1] for p, _ in items])))
            cache = DynamicCache(ddp_cache_data=layers)
        elif want_kv:
            cache = DynamicCache()
        kwargs = {self._cache_kwarg: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
        self.num_lm_calls += 1
        self.tokens_run += n * sm
        self.tokens_real += sum(slen)
        out = self._decoder(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if not want_kv:
            return hidden, None
        kvs = [[(lay.keys[b, :, pm - plen[b]: pm + slen[b]].clone(),
                 lay.values[b, :, pm - plen[b]: pm + slen[b]].clone()) for lay in cache.layers]
               for b in range(n)]
        return hidden, kvs

    def _keep(self, prefix: _Prefix, parent: _Prefix | None) -> None:
        """Keep a computed prefix across calls (within the budget, least recently used dropped first). A kept
        prefix this one extends is dropped: this one's key/values start with its."""
        if self.prefix_cache_bytes <= 0 or prefix.key in self._store:
            return
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in prefix.kv)
        if nbytes > self.prefix_cache_bytes:
            return
        if parent is not None and parent.entry is not None and parent.entry.key == parent.key:
            self._drop(parent.key)
        entry = _PrefixEntry(prefix.key, prefix.kv, nbytes, uses=1)
        prefix.entry = entry
        self._store[prefix.key] = entry
        self._store_bytes += nbytes
        while self._store_bytes > self.prefix_cache_bytes:
            self._drop(next(iter(self._store)))

    def _drop(self, key) -> None:
        entry = self._store.pop(key, None)
        if entry is not None:
            self._store_bytes -= entry.nbytes

    def clear_prefix_cache(self) -> None:
        """Forget all prefix key/values kept across calls (e.g. after changing the model's weights in
        place)."""
        self._store.clear()
        self._store_bytes = 0

    @property
    def prefix_cache_info(self) -> dict:
        """Kept prefixes: how many, their bytes and the budget, and their token lengths."""
        return {"entries": len(self._store), "bytes": self._store_bytes,
                "budget_bytes": self.prefix_cache_bytes,
                "lengths": [len(k) for k in self._store], "hits": self.prefix_cache_hits}

    def _fingerprint(self):
        """Changes when the model object, its device or dtype, or any parameter (replaced or edited in place)
        changes: kept key/values are then stale."""
        params = tuple((p.data_ptr(), p._version) for p in self._base.parameters())
        return id(self.model), id(self._base), str(self.device), self.dtype, hash(params)

    def _check_store(self) -> None:
        fingerprint = self._fingerprint()
        if fingerprint != self._store_fingerprint:
            self.clear_prefix_cache()
            self._store_fingerprint = fingerprint

    def _prefix_path_matches(self) -> bool:
        """Score a small probe (rows sharing prefixes, one not, ragged) with and without sharing; compare."""
        v = self.vocab_size
        shared = [(7 * i + 2) % v for i in range(10)]
        prompts = [shared + [(3 * i + 1) % v for i in range(k)] for k in (3, 5, 1)] + [[5 % v, 6 % v, 7 % v]]
        targets = [[(11 * i + 4 + m) % v for i in range(m)] for m in (3, 2, 4, 2)]
        saved = (self.min_shared_tokens, self.prefix_cache_bytes, self.num_lm_calls, self.tokens_run,
                 self.tokens_real)
        self.min_shared_tokens, self.prefix_cache_bytes = 1, 0
        try:
            tau = torch.ones(4, dtype=_compute_dtype(self.dtype), device=self.device)
            with torch.no_grad():
                shared = self._score_shared(list(range(4)), prompts, targets, tau)
                if shared is None or self.num_lm_calls - saved[2] < 2:  # the probe must really share a prefix
                    return False
                parts, order = shared
                got = torch.cat([p.to(tau.device) for p in parts])[torch.argsort(torch.tensor(order))]
                want = torch.cat([self._score_micro_batch([i], prompts, targets, tau).to(tau.device)
                                  for i in range(4)])
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError, KeyError):
            return False
        finally:
            (self.min_shared_tokens, self.prefix_cache_bytes, self.num_lm_calls, self.tokens_run,
             self.tokens_real) = saved
            self.clear_prefix_cache()
        n_tok = torch.tensor([len(t) for t in targets], dtype=got.dtype, device=got.device)
        tol = 1e-3 if self.dtype in (torch.float32, torch.float64) else 5e-2
        return bool(((got - want).abs() <= tol * n_tok).all())

    def _hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self._decoder(input_ids=ids, attention_mask=mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _head_logits_fn(self, hidden: torch.Tensor) -> Callable[[int, int], tuple[torch.Tensor, bool]]:
        """Logits of hidden[start:end] in the compute dtype, with the model's post-head transforms."""
        cdtype = _compute_dtype(self.dtype)

        def logits_fn(start: int, end: int) -> tuple[torch.Tensor, bool]:
            z = self._head(hidden[start:end]).to(cdtype)  # (C, V), a fresh tensor: safe to edit in place
            if self._logit_mult is not None:
                z.mul_(self._logit_mult)
            if self._logit_div is not None:
                z.div_(self._logit_div)
            if self._softcap is not None:
                z.div_(self._softcap).tanh_().mul_(self._softcap)
            return z, True

        return logits_fn

    def _head_matches_model(self) -> bool:
        """Run a 2-row padded probe both ways and compare the logits at the real positions."""
        v = self.vocab_size
        ids = torch.tensor([[(17 * i + 3) % v for i in range(7)],
                            [(29 * i + 5) % v for i in range(4)] + [0] * 3])
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            ref = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            ref = ref[mask.bool().to(ref.device)].float()
            try:  # an exotic decoder may want other arguments: then the shortcut is simply not used
                hidden = self._hidden_states(ids, mask)
                hidden = hidden[mask.bool().to(hidden.device)]  # (T, H) real positions
                ours = self._head_logits_fn(hidden)(0, hidden.shape[0])[0].float()
            except (TypeError, ValueError, RuntimeError, AttributeError, IndexError):
                return False
        if ours.shape != ref.shape:
            return False
        rel = 1e-3 if self.dtype in (torch.float32, torch.float64) else 3e-2
        return bool((ours - ref.to(ours.device)).abs().max() <= rel * (1.0 + ref.abs().max()))


def naive_log_likelihood(
    model,
    prompt_ids: Sequence[Sequence[int]],
    target_ids: Sequence[Sequence[int]],
    tau: torch.Tensor | float = 1.0,
    *,
    padding: str = "none",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Reference log p^tau(target | prompt): full forward, full (L, V) logits, log_softmax(z / tau).

    ``padding="none"`` runs one example at a time; ``"left"`` runs one left-padded batch (with position ids).
    ``dtype`` is that of the log_softmax (default float32, float64 for a float64 model); float64 gives a
    reference free of the float32 rounding of full-vocabulary sums. Differentiable in tau through plain
    autograd; memory-hungry by design (tests and benchmarks only).
    Tokenise with :meth:`FrozenLMScorer.encode` to compare on the same ids.
    """
    if padding not in ("none", "left"):
        raise MopError(f"padding must be 'none' or 'left', got {padding!r}")
    n = len(prompt_ids)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = base.get_input_embeddings().weight.device
    cdtype = dtype or _compute_dtype(base.get_input_embeddings().weight.dtype)
    tau = _as_tau(tau, n, device, cdtype)
    seqs = [list(p) + list(t) for p, t in zip(prompt_ids, target_ids)]
    out = []
    with torch.no_grad():
        if padding == "none":
            all_logits = [model(input_ids=torch.tensor([s], device=device), use_cache=False).logits[0]
                          for s in seqs]
        else:
            width = max(len(s) for s in seqs)
            ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs], device=device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            all_logits = [logits[i, width - len(s):] for i, s in enumerate(seqs)]
    for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
        z = all_logits[i][len(p) - 1: len(p) + len(t) - 1].to(cdtype)  # (T_i, V)
        logp = torch.log_softmax(z / tau[i], dim=-1)
        out.append(logp.gather(1, torch.tensor(list(t), device=z.device)[:, None]).sum())
    return torch.stack(out)
