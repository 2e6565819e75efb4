"""Prefix-shared scoring (FrozenLMScorer(share_prefixes=True)): the same numbers as the plain path, fewer
tokens."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers import SCORING_VOCAB as VOCAB

from mop.scoring import FrozenLMScorer, naive_log_likelihood

pytestmark = pytest.mark.usefixtures("one_thread")


def _toks(rng, lo, hi):
    return [rng.randrange(VOCAB) for _ in range(rng.randint(lo, hi))]


def _template_pairs(n: int, seed: int = 0, heads: int = 3, mids: int = 4):
    """Prompts like the training template: a shared head (instruction + persona), often a shared middle
    (exemplar), then a row's own tail (context); ragged targets. Includes a duplicate pair and a prompt that
    is exactly a shared head (a prefix equal to a whole prompt)."""
    rng = random.Random(seed)
    head = [_toks(rng, 18, 30) for _ in range(heads)]
    mid = [_toks(rng, 0, 20) for _ in range(mids)]
    prompts, targets = [], []
    for _ in range(n):
        prompts.append(rng.choice(head) + rng.choice(mid) + _toks(rng, 1, 6))
        targets.append(_toks(rng, 1, 9))
    prompts.append(list(prompts[0]))
    targets.append(list(targets[0]))  # a duplicate pair
    prompts.append(list(head[0]))
    targets.append(_toks(rng, 2, 5))  # a whole prompt that is a shared prefix of others
    prompts.append(head[1] + mid[0])
    targets.append(_toks(rng, 2, 5))
    return prompts, targets


def _tau(n: int, requires_grad: bool = False) -> torch.Tensor:
    return torch.linspace(0.4, 2.0, n).requires_grad_(requires_grad)


def _plain(model, **kw):
    return FrozenLMScorer(model, share_prefixes=False, **kw)


def test_shared_matches_plain_and_naive_on_ragged_template_batches(tiny_lm):
    prompts, targets = _template_pairs(30)
    n = len(prompts)
    tau = _tau(n)
    shared = FrozenLMScorer(tiny_lm, max_batch_tokens=64, min_shared_tokens=4)
    plain = _plain(tiny_lm, max_batch_tokens=64)
    assert shared.share_prefixes and not plain.share_prefixes
    got = shared.score_ids(prompts, targets, tau)
    want = plain.score_ids(prompts, targets, tau)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(got, naive_log_likelihood(tiny_lm, prompts, targets, tau), atol=1e-4, rtol=0)
    assert got.std() > 1.0  # rows really differ
    # sharing really happened: far fewer real tokens through the decoder body (and several batches)
    assert shared.tokens_real < 0.6 * plain.tokens_real, (shared.tokens_real, plain.tokens_real)
    assert shared.num_lm_calls >= 3


def test_pairs_without_common_prefixes_run_as_before(tiny_lm):
    rng = random.Random(3)
    prompts = [[i] + _toks(rng, 1, 12) for i in range(8)]  # distinct first tokens: no shared prefix
    targets = [_toks(rng, 1, 9) for _ in range(8)]
    tau = _tau(8)
    shared = FrozenLMScorer(tiny_lm, max_batch_tokens=10_000, min_shared_tokens=1)
    plain = _plain(tiny_lm, max_batch_tokens=10_000)
    torch.testing.assert_close(shared.score_ids(prompts, targets, tau),
                               plain.score_ids(prompts, targets, tau), atol=1e-4, rtol=0)
    assert shared.tokens_real == plain.tokens_real  # nothing shared, nothing lost
    assert shared.tokens_run == plain.tokens_run and shared.num_lm_calls == plain.num_lm_calls  # same batches
    assert shared.prefix_cache_info["entries"] == 0


def test_duplicate_pairs_run_once_and_keep_their_own_tau(llama):
    prompt, target = list(range(3, 23)), [5, 6, 7, 8]
    prompts, targets = [prompt] * 3 + [prompt[:12]], [target] * 3 + [[9, 9]]
    tau = torch.tensor([0.5, 1.0, 1.7, 1.0])
    shared = FrozenLMScorer(llama, min_shared_tokens=1)
    got = shared.score_ids(prompts, targets, tau)
    torch.testing.assert_close(got, naive_log_likelihood(llama, prompts, targets, tau), atol=1e-4, rtol=0)
    assert len(set(got.tolist())) == 4  # same text, different tau, different values
    # the three copies run once: one sequence of 20 + 3 tokens and the short one's 12 + 1, nothing shared
    # twice
    assert shared.tokens_real <= 20 + 3 + 12 + 1


def test_prefix_equal_to_a_whole_prompt_and_nested_prompts(tiny_lm):
    rng = random.Random(5)
    base = _toks(rng, 24, 24)
    prompts = [base[:k] for k in (8, 12, 16, 20, 24)] + [base[:16] + [1, 2, 3]]
    targets = [_toks(rng, 1, 6) for _ in prompts]
    tau = _tau(len(prompts))
    shared = FrozenLMScorer(tiny_lm, min_shared_tokens=1)
    got = shared.score_ids(prompts, targets, tau)
    torch.testing.assert_close(got, _plain(tiny_lm).score_ids(prompts, targets, tau), atol=1e-4, rtol=0)
    torch.testing.assert_close(got, naive_log_likelihood(tiny_lm, prompts, targets, tau), atol=1e-4, rtol=0)
    assert shared.tokens_real < sum(len(p) + len(t) - 1 for p, t in zip(prompts, targets)) - 30


def test_prefixes_are_kept_and_reused_across_calls(tiny_lm):
    prompts, targets = _template_pairs(20, seed=7)
    tau = _tau(len(prompts))
    scorer = FrozenLMScorer(tiny_lm, min_shared_tokens=4)
    first = scorer.score_ids(prompts, targets, tau)
    run_first = scorer.tokens_real
    assert scorer.prefix_cache_info["entries"] > 0 and scorer.prefix_cache_hits == 0
    second = scorer.score_ids(prompts, targets, tau)
    run_second = scorer.tokens_real - run_first
    torch.testing.assert_close(second, first, atol=1e-5, rtol=0)
    assert scorer.prefix_cache_hits > 0 and run_second < run_first  # the kept prefixes were not run again
    # a new call where every head is used by ONE row only: nothing to share within the call, the kept prefix
    # (any kept key through the head) still saves its tokens
    rng = random.Random(11)
    heads = {tuple(p[:18]) for p in prompts}
    lone = [list(h) + _toks(rng, 3, 6) for h in heads]
    lone_t = [_toks(rng, 1, 5) for _ in lone]
    before, hits = scorer.tokens_real, scorer.prefix_cache_hits
    got = scorer.score_ids(lone, lone_t, 0.8)
    torch.testing.assert_close(got, naive_log_likelihood(tiny_lm, lone, lone_t, 0.8), atol=1e-4, rtol=0)
    assert scorer.prefix_cache_hits - hits == len(lone)
    assert scorer.tokens_real - before <= sum(len(p) + len(t) - 1 - 18 for p, t in zip(lone, lone_t))
    fresh = FrozenLMScorer(tiny_lm, min_shared_tokens=4, prefix_cache_mb=0)
    fresh.score_ids(lone, lone_t, 0.8)
    # nothing kept: all run
    assert fresh.tokens_real == sum(len(p) + len(t) - 1 for p, t in zip(lone, lone_t))


def test_tau_gradient_matches_plain_path_and_finite_differences(llama):
    model = copy.deepcopy(llama).double()  # float64 end to end, so the difference quotient is precise
    prompts, targets = _template_pairs(10, seed=13)
    n = len(prompts)
    scorer = FrozenLMScorer(model, chunk_tokens=5, min_shared_tokens=4, max_batch_tokens=48)
    tau = torch.linspace(0.5, 2.0, n, dtype=torch.float64).requires_grad_(True)
    weights = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    value = scorer.score_ids(prompts, targets, tau)
    (grad,) = torch.autograd.grad((weights * value).sum(), tau)
    tau_ref = tau.detach().clone().requires_grad_(True)
    ref = _plain(model, chunk_tokens=5).score_ids(prompts, targets, tau_ref)
    (grad_ref,) = torch.autograd.grad((weights * ref).sum(), tau_ref)
    torch.testing.assert_close(value, ref, atol=1e-9, rtol=0)  # float64: the paths agree to rounding
    torch.testing.assert_close(grad, grad_ref, atol=1e-9, rtol=0)
    assert grad.abs().min() > 1e-3
    eps = 1e-5
    with torch.no_grad():
        fd = (scorer.score_ids(prompts, targets, tau + eps)
              - scorer.score_ids(prompts, targets, tau - eps)) / (2 * eps)
    torch.testing.assert_close(grad, weights * fd, atol=1e-6, rtol=1e-6)


def test_cache_budget_evicts_least_recently_used(llama):
    rng = random.Random(17)
    heads = [_toks(rng, 30, 30) for _ in range(4)]

    def call(scorer, head_ids):
        prompts = [heads[h] + _toks(rng, 1, 4) for h in head_ids for _ in range(2)]
        targets = [_toks(rng, 1, 4) for _ in prompts]
        got = scorer.score_ids(prompts, targets, 1.0)
        torch.testing.assert_close(got, naive_log_likelihood(llama, prompts, targets, 1.0), atol=1e-4, rtol=0)

    probe = FrozenLMScorer(llama, min_shared_tokens=4)
    call(probe, [0])
    one = probe.prefix_cache_info["bytes"]  # key/values of one 30-token head
    assert probe.prefix_cache_info["lengths"] == [30] and one > 0
    scorer = FrozenLMScorer(llama, min_shared_tokens=4, prefix_cache_mb=2.5 * one / 2**20)  # room for two
    call(scorer, [0])
    call(scorer, [1])
    call(scorer, [0])  # head 0 is now the most recently used
    call(scorer, [2])  # over budget: head 1 goes
    info = scorer.prefix_cache_info
    assert info["bytes"] <= info["budget_bytes"] and info["entries"] == 2
    kept = {tuple(k) for k in scorer._store}
    assert kept == {tuple(heads[0]), tuple(heads[2])}
    hits = scorer.prefix_cache_hits
    call(scorer, [1])  # evicted: recomputed, not hit
    assert scorer.prefix_cache_hits == hits
    nothing = FrozenLMScorer(llama, min_shared_tokens=4, prefix_cache_mb=0)
    call(nothing, [0, 1])
    assert nothing.prefix_cache_info["entries"] == 0 and nothing.prefix_cache_info["bytes"] == 0


def test_changed_weights_invalidate_kept_prefixes(llama):
    model = copy.deepcopy(llama)
    prompts, targets = _template_pairs(12, seed=19)
    scorer = FrozenLMScorer(model, min_shared_tokens=4)
    scorer.score_ids(prompts, targets, 1.0)
    assert scorer.prefix_cache_info["entries"] > 0
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(1.5)  # an in-place edit: the kept K are stale
    got = scorer.score_ids(prompts, targets, 1.0)
    assert scorer.prefix_cache_hits == 0  # nothing stale was used
    torch.testing.assert_close(got, naive_log_likelihood(model, prompts, targets, 1.0), atol=1e-4, rtol=0)
    scorer.clear_prefix_cache()
    assert scorer.prefix_cache_info["entries"] == 0 and scorer.prefix_cache_info["bytes"] == 0


def test_micro_batches_respect_the_token_budget(tiny_lm):
    prompts, targets = _template_pairs(40, seed=23)
    scorer = FrozenLMScorer(tiny_lm, max_batch_tokens=40, min_shared_tokens=4)
    shapes = []
    run = scorer._run

    def recording_run(items, prefixes, want_kv):
        hidden, kv = run(items, prefixes, want_kv)
        shapes.append(tuple(hidden.shape[:2]))
        return hidden, kv

    scorer._run = recording_run
    tau = _tau(len(prompts))
    got = scorer.score_ids(prompts, targets, tau)
    torch.testing.assert_close(got, naive_log_likelihood(tiny_lm, prompts, targets, tau), atol=1e-4, rtol=0)
    assert len(shapes) >= 4 and all(b * w <= 40 for b, w in shapes), shapes
    assert scorer.tokens_run == sum(b * w for b, w in shapes)


def test_planner_shares_where_the_trie_forks(llama):
    scorer = FrozenLMScorer(llama, min_shared_tokens=8, prefix_cache_mb=0)
    a, b, c = list(range(1, 21)), list(range(30, 40)), list(range(50, 56))
    shareable = [a + b + [1, 2], a + b + [3], a + c, a + [7] * 3, [90, 91, 92]]
    prefixes, use = scorer._plan_prefixes(shareable)
    lengths = sorted(p.length for p in prefixes)
    assert lengths == [20, 30]  # a (4 rows) and a + b (2 rows, 10 more tokens); a + c is one row only
    by_len = {p.length: i for i, p in enumerate(prefixes)}
    assert prefixes[by_len[30]].parent == by_len[20] and prefixes[by_len[20]].parent == -1
    assert use == [by_len[30], by_len[30], by_len[20], by_len[20], -1]
    # a fork that saves fewer than min_shared_tokens is not worth its own prefix
    prefixes, use = FrozenLMScorer(llama, min_shared_tokens=11, prefix_cache_mb=0)._plan_prefixes(shareable)
    assert sorted(p.length for p in prefixes) == [20]


def test_architecture_that_ignores_the_cache_falls_back(llama):
    from transformers import LlamaForCausalLM

    class NoCache(torch.nn.Module):  # a decoder that silently drops the key/values it is given
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None):
            if attention_mask is not None:
                attention_mask = attention_mask[:, -input_ids.shape[1]:]
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    class Model(LlamaForCausalLM):
        def get_decoder(self):
            return NoCache(self.model)

    model = Model(llama.config)
    model.load_state_dict(llama.state_dict())
    model.eval().requires_grad_(False)
    with pytest.warns(UserWarning, match="prefixes are not shared"):
        scorer = FrozenLMScorer(model)
    assert not scorer.share_prefixes and scorer.mode == "head"
    prompts, targets = _template_pairs(8, seed=29)
    torch.testing.assert_close(scorer.score_ids(prompts, targets, 1.0),
                               naive_log_likelihood(model, prompts, targets, 1.0), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- the real bundled models and tokenizers
TEMPLATE = ("You embody the persona in the description to complete the task.\nPersona: {persona}\n"
            "Example: you wrote this {elabel} review of the movie {emovie}: {eresp}\n"
            "Now write a {label} review of the movie {movie}.\nReview:")
PERSONAS = ["You are a film critic who writes short, punchy verdicts.",
            "You are a reviewer who cares about acting and dialogue above all.",
            "You are a critic who loves genre films and hates pretension."]
MOVIES = ["Alien", "Heat", "Up", "Amélie", "Se7en", "Tár"]
RESPONSES = ["A tense, gorgeous ride.", "Overlong and smug; I checked my watch twice.",
             "Funny, warm and surprisingly sad.", "Nothing here you have not seen before."]


def _real_prompts(n: int, seed: int = 0):
    rng = random.Random(seed)
    prompts, targets = [], []
    for _ in range(n):
        prompts.append(TEMPLATE.format(persona=rng.choice(PERSONAS),
                                       elabel=rng.choice(["positive", "negative"]),
                                       emovie=rng.choice(MOVIES), eresp=rng.choice(RESPONSES),
                                       label=rng.choice(["positive", "negative"]), movie=rng.choice(MOVIES)))
        targets.append(rng.choice(RESPONSES))
    return prompts, targets


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
@pytest.mark.parametrize("chat", [False, True])
def test_real_models_and_tokenizers_match_the_plain_path(name, chat, bundled_lm):
    model, tok = bundled_lm(name)
    if chat and not getattr(tok, "chat_template", None):
        pytest.skip(f"{name} has no chat template")
    kw = dict(use_chat_template=chat, target_prefix="" if chat else " ", max_batch_tokens=1024)
    shared, plain = FrozenLMScorer(model, tok, **kw), FrozenLMScorer(model, tok, share_prefixes=False, **kw)
    assert shared.share_prefixes
    prompts, targets = _real_prompts(16)
    enc = shared.encode(prompts, targets)  # the trie works on the whole prompts' ids: merges are respected
    tau = torch.linspace(0.5, 1.5, 16)
    got, want = shared.score_ids(enc.prompt_ids, enc.target_ids, tau), plain.score_ids(enc.prompt_ids,
                                                                                       enc.target_ids, tau)
    # float32 sums of ~30 log-probs of magnitude ~100: rounding of differently shaped matmuls is ~1e-4;
    # the plain path with another batch budget differs from itself by as much
    other = FrozenLMScorer(model, tok, share_prefixes=False, **{**kw, "max_batch_tokens": 64})
    self_noise = (other.score_ids(enc.prompt_ids, enc.target_ids, tau) - want).abs().max()
    assert (got - want).abs().max() <= max(1e-4, 2 * self_noise), ((got - want).abs().max(), self_noise)
    assert shared.tokens_real < 0.75 * plain.tokens_real


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_models_in_float64_are_exact(name, bundled_lm):
    """float64 removes float32 matmul rounding: the shared and plain paths then agree to ~1e-8 relative (not
    1e-15: Hugging Face's RMSNorm and rotary embeddings compute in float32 even in a float64 model)."""
    model, tok = bundled_lm(name)
    model64 = copy.deepcopy(model).double()
    shared = FrozenLMScorer(model64, tok, target_prefix=" ", max_batch_tokens=1024)
    plain = FrozenLMScorer(model64, tok, target_prefix=" ", share_prefixes=False, max_batch_tokens=1024)
    prompts, targets = _real_prompts(10, seed=1)
    enc = shared.encode(prompts, targets)
    tau = torch.linspace(0.5, 1.5, 10, dtype=torch.float64, requires_grad=True)
    got = shared.score_ids(enc.prompt_ids, enc.target_ids, tau)
    tau_ref = tau.detach().clone().requires_grad_(True)
    want = plain.score_ids(enc.prompt_ids, enc.target_ids, tau_ref)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=2e-7)  # float32 here would be ~1e-4 (see above)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(tau.grad, tau_ref.grad, atol=1e-8, rtol=2e-7)
    assert shared.tokens_real < 0.75 * plain.tokens_real


@pytest.mark.slow
def test_real_gemma_beyond_its_sliding_window(bundled_lm):
    """Gemma-3-270M's local layers see 512 tokens: a 540-token shared prefix puts the run tokens past it."""
    model, tok = bundled_lm("gemma3-270m")
    assert model.config.sliding_window < 540
    rng = random.Random(2)
    head = [tok.bos_token_id] + [rng.randrange(1000, 20000) for _ in range(540)]
    prompts = [head + [rng.randrange(1000, 20000) for _ in range(rng.randint(2, 8))] for _ in range(3)]
    targets = [[rng.randrange(1000, 20000) for _ in range(rng.randint(3, 6))] for _ in range(3)]
    shared = FrozenLMScorer(model, tok, max_prompt_tokens=1024)
    plain = FrozenLMScorer(model, tok, max_prompt_tokens=1024, share_prefixes=False)
    got = shared.score_ids(prompts, targets, 1.0)
    want = plain.score_ids(prompts, targets, 1.0)
    assert (got - want).abs().max() <= 1e-4 * (1 + want.abs().max()), (got, want)
    assert shared.tokens_real < 0.5 * plain.tokens_real
