"""The frozen-LM scorer: exact tempered log-likelihoods and tau gradients, batching, order, tokenisation."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers import SCORING_VOCAB as VOCAB

from mop.errors import MopError
from mop.scoring import FrozenLMScorer, naive_log_likelihood, tempered_token_terms

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(n: int, seed: int = 0, max_prompt: int = 12, max_target: int = 9):
    """Ragged random pairs; prompt and target lengths start at 1 (the edge cases)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, max_prompt))] for _ in range(n)]
    targets = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, max_target))] for _ in range(n)]
    return prompts, targets


TAUS = [0.6, 1.0, 1.7, "per-row"]


def _tau(spec, n: int, requires_grad: bool = False) -> torch.Tensor:
    if spec == "per-row":
        t = torch.linspace(0.4, 2.0, n)
    else:
        t = torch.full((n,), float(spec))
    return t.requires_grad_(requires_grad)


@pytest.mark.parametrize("tau_spec", TAUS)
def test_matches_naive_forward_with_micro_batches(tiny_lm, tau_spec):
    prompts, targets = _pairs(11)
    scorer = FrozenLMScorer(tiny_lm, max_batch_tokens=24)
    tau = _tau(tau_spec, 11)
    got = scorer.score_ids(prompts, targets, tau)
    assert scorer.mode == "head" and scorer.num_lm_calls >= 4  # the budget really split the batch
    want = naive_log_likelihood(tiny_lm, prompts, targets, tau)
    assert got.dtype == torch.float32 and got.shape == (11,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (got < 0).all() and got.std() > 1.0  # not degenerate: rows really differ


def test_both_padding_layouts_agree(tiny_lm):
    prompts, targets = _pairs(8, seed=3)
    tau = _tau("per-row", 8)
    scorer = FrozenLMScorer(tiny_lm, max_batch_tokens=10_000)
    right = scorer.score_ids(prompts, targets, tau)
    assert scorer.num_lm_calls == 1  # one right-padded batch
    left = naive_log_likelihood(tiny_lm, prompts, targets, tau, padding="left")
    single = naive_log_likelihood(tiny_lm, prompts, targets, tau)
    torch.testing.assert_close(right, left, atol=1e-4, rtol=0)
    torch.testing.assert_close(right, single, atol=1e-4, rtol=0)


def test_tau_gradient_matches_autograd_through_full_logits(tiny_lm):
    prompts, targets = _pairs(9, seed=5)
    weights = torch.randn(9, generator=torch.Generator().manual_seed(0))
    tau = _tau("per-row", 9, requires_grad=True)
    (weights * FrozenLMScorer(tiny_lm, max_batch_tokens=30).score_ids(prompts, targets, tau)).sum().backward()
    tau_ref = _tau("per-row", 9, requires_grad=True)
    (weights * naive_log_likelihood(tiny_lm, prompts, targets, tau_ref)).sum().backward()
    assert tau.grad.abs().min() > 1e-2  # a real signal, not zeros
    torch.testing.assert_close(tau.grad, tau_ref.grad, atol=1e-4, rtol=1e-4)
    # a scalar tau shared by all rows gets the summed gradient
    shared = torch.tensor(0.8, requires_grad=True)
    FrozenLMScorer(tiny_lm).score_ids(prompts, targets, shared).sum().backward()
    shared_ref = torch.tensor(0.8, requires_grad=True)
    naive_log_likelihood(tiny_lm, prompts, targets, shared_ref).sum().backward()
    torch.testing.assert_close(shared.grad, shared_ref.grad, atol=1e-4, rtol=1e-5)


def test_tau_gradient_matches_central_finite_difference(llama):
    model = copy.deepcopy(llama).double()  # float64 end to end, so the difference quotient is precise
    prompts, targets = _pairs(5, seed=7)
    scorer = FrozenLMScorer(model, chunk_tokens=4)
    tau = torch.tensor([0.5, 0.8, 1.0, 1.3, 2.1], dtype=torch.float64, requires_grad=True)
    value = scorer.score_ids(prompts, targets, tau)
    assert value.dtype == torch.float64
    (grad,) = torch.autograd.grad(value.sum(), tau)
    eps = 1e-5
    with torch.no_grad():
        up = scorer.score_ids(prompts, targets, tau + eps)
        down = scorer.score_ids(prompts, targets, tau - eps)
    fd = (up - down) / (2 * eps)
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-6)


def test_token_terms_formula_against_autograd():
    z = torch.randn(6, 50, dtype=torch.float64) * 4
    y = torch.randint(0, 50, (6,))
    tau = torch.rand(6, dtype=torch.float64).add(0.3).requires_grad_(True)
    ref = torch.log_softmax(z / tau[:, None], dim=-1).gather(1, y[:, None]).squeeze(1)
    (dref,) = torch.autograd.grad(ref.sum(), tau)
    value, dvalue = tempered_token_terms(z, y, tau.detach())
    torch.testing.assert_close(value, ref.detach())
    torch.testing.assert_close(dvalue, dref)


def test_token_terms_stay_accurate_in_float32_at_large_vocab():
    """Real LMs: V ~ 1e5 and logits ~ 20-30, where plain float32 E[z] - z_y loses ~1e-2 to cancellation."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 150_000, generator=gen) * 3 + 20
    z[:, :50] += 12  # a few plausible tokens
    y = torch.randint(0, 50, (16,), generator=gen)
    tau = torch.full((16,), 0.7)
    tau64 = tau.double().requires_grad_(True)
    ref = torch.log_softmax(z.double() / tau64[:, None], dim=-1).gather(1, y[:, None]).squeeze(1)
    (dref,) = torch.autograd.grad(ref.sum(), tau64)
    value, dvalue = tempered_token_terms(z.clone(), y, tau, inplace=True)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref.detach(), atol=2e-5, rtol=0)
    torch.testing.assert_close(dvalue.double(), dref, atol=2e-4, rtol=0)


def test_results_come_back_in_input_order(llama):
    prompts, targets = _pairs(10, seed=11)
    tau = _tau("per-row", 10)
    scorer = FrozenLMScorer(llama, max_batch_tokens=20)
    base = scorer.score_ids(prompts, targets, tau)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist()
    shuffled = scorer.score_ids([prompts[i] for i in perm], [targets[i] for i in perm], tau[perm])
    torch.testing.assert_close(shuffled, base[perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(base, naive_log_likelihood(llama, prompts, targets, tau), atol=1e-4, rtol=0)


def test_chunk_size_does_not_change_values_or_gradients(tiny_lm):
    prompts, targets = _pairs(7, seed=13)
    results = []
    for chunk in (3, 10_000):
        tau = _tau("per-row", 7, requires_grad=True)
        value = FrozenLMScorer(tiny_lm, chunk_tokens=chunk).score_ids(prompts, targets, tau)
        value.sum().backward()
        results.append((value.detach(), tau.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-6)


def test_no_gradient_reaches_the_lm_and_float_tau_gives_no_graph(llama):
    prompts, targets = _pairs(4, seed=17)
    scorer = FrozenLMScorer(llama)
    plain = scorer.score_ids(prompts, targets, 0.7)
    assert plain.grad_fn is None and not plain.requires_grad
    tau = torch.full((4,), 0.7, requires_grad=True)
    with torch.no_grad():  # validation: no d/dtau is computed, same values
        torch.testing.assert_close(scorer.score_ids(prompts, targets, tau), plain)
    scorer.score_ids(prompts, targets, tau).sum().backward()
    assert tau.grad is not None and tau.grad.abs().min() > 0
    assert all(p.grad is None and not p.requires_grad for p in llama.parameters())


def test_micro_batches_respect_the_padded_token_budget(llama):
    rng = random.Random(5)
    lengths = [rng.randint(1, 40) for _ in range(200)]
    scorer = FrozenLMScorer(llama, max_batch_tokens=100, check_head=False)
    batches = scorer._micro_batches(list(range(200)), lengths)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= 100
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded <= 1.25 * sum(lengths)  # sorting keeps padding waste small


def test_empty_target_scores_zero_and_lm_is_kept_in_eval(llama):
    scorer = FrozenLMScorer(llama)
    llama.train()  # what a LightningModule's .train() would do to a registered submodule
    try:
        got = scorer.score_ids([[1, 2], [3]], [[], [4, 5]], torch.tensor([0.5, 1.0]))
        assert not llama.training
    finally:
        llama.eval()
    assert got[0].item() == 0.0
    torch.testing.assert_close(got[1:], naive_log_likelihood(llama, [[3]], [[4, 5]], 1.0), atol=1e-5, rtol=0)


def test_unknown_post_head_transform_falls_back_to_full_logits(llama):
    from transformers import LlamaForCausalLM

    class Scaled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):  # a post-head transform the shortcut cannot know about
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 0.5 + 1.0
            return out

    model = Scaled(llama.config)
    model.load_state_dict(llama.state_dict())
    model.eval().requires_grad_(False)
    with pytest.warns(UserWarning, match="falls back to full logits"):
        scorer = FrozenLMScorer(model, max_batch_tokens=20)
    assert scorer.mode == "full"
    prompts, targets = _pairs(6, seed=19)
    tau = _tau("per-row", 6, requires_grad=True)
    got = scorer.score_ids(prompts, targets, tau)
    torch.testing.assert_close(got, naive_log_likelihood(model, prompts, targets, tau), atol=1e-4, rtol=0)
    assert not torch.allclose(got, FrozenLMScorer(llama).score_ids(prompts, targets, tau), atol=1e-2)


def test_peft_wrapped_model_scores_through_its_adapter(llama):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(2)
    peft_model = get_peft_model(copy.deepcopy(llama), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False))
    peft_model.eval().requires_grad_(False)
    prompts, targets = _pairs(6, seed=23)
    scorer = FrozenLMScorer(peft_model, max_batch_tokens=20)
    assert scorer.mode == "head"
    got = scorer.score_ids(prompts, targets, 0.9)
    want = naive_log_likelihood(peft_model, prompts, targets, 0.9)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert not torch.allclose(got, FrozenLMScorer(llama).score_ids(prompts, targets, 0.9), atol=1e-2)


def test_bfloat16_model_scores_in_float32(llama):
    model = copy.deepcopy(llama).to(torch.bfloat16)
    prompts, targets = _pairs(6, seed=29)
    tau = _tau("per-row", 6, requires_grad=True)
    scorer = FrozenLMScorer(model, max_batch_tokens=20)
    got = scorer.score_ids(prompts, targets, tau)
    assert got.dtype == torch.float32 and scorer.dtype == torch.bfloat16
    want = naive_log_likelihood(model, prompts, targets, tau)  # bf16 logits, float32 log_softmax
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.01)
    exact = naive_log_likelihood(llama, prompts, targets, tau)
    torch.testing.assert_close(got, exact, atol=0.1 * max(len(t) for t in targets), rtol=0.05)


def test_user_errors_are_mop_errors(llama):
    scorer = FrozenLMScorer(llama)
    with pytest.raises(MopError, match="2 prompts but 1 targets"):
        scorer.score_ids([[1], [2]], [[3]], 1.0)
    with pytest.raises(MopError, match="empty prompt"):
        scorer.score_ids([[]], [[3]], 1.0)
    with pytest.raises(MopError, match="outside"):
        scorer.score_ids([[1]], [[VOCAB]], 1.0)
    with pytest.raises(MopError, match="shape"):
        scorer.score_ids([[1], [2]], [[3], [4]], torch.ones(3))
    with pytest.raises(MopError, match="positive"):
        scorer.score_ids([[1]], [[3]], torch.tensor([0.0]))
    with pytest.raises(MopError, match="without a tokenizer"):
        scorer.score(["a"], ["b"])
    with pytest.raises(MopError, match=">= 1"):
        FrozenLMScorer(llama, chunk_tokens=0)


# ---------------------------------------------------------------- tokenisation, with a tiny offline tokenizer
WORDS = ["the", "movie", "was", "great", "bad", "review", ":", "user", "assistant", "a", "b"]
SPECIAL = ["<pad>", "<bos>", "<eos>", "<eot>"]


@pytest.fixture(scope="module")
def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS + ["<unk>"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>", additional_special_tokens=["<eot>"])
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}<eot>"
                         "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
    return tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_encoding_bos_eos_and_truncation(llama, word_tokenizer):
    tok = word_tokenizer
    scorer = FrozenLMScorer(llama, tok, max_prompt_tokens=4, max_target_tokens=3)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert scorer.encode_prompts(["the movie"]) == [[bos] + _ids(tok, "the movie")]
    # left truncation keeps BOS and the prompt's end
    with pytest.warns(UserWarning, match="prompt was truncated"):
        truncated = scorer.encode_prompts(["the movie was great review :"])
    assert truncated == [[bos] + _ids(tok, "great review :")]
    assert scorer.encode_targets(["great movie"]) == [_ids(tok, "great movie") + [eos]]
    # a target cut at its end loses its eos: the text did not end there
    with pytest.warns(UserWarning, match="target was truncated"):
        assert scorer.encode_targets(["the movie was great"]) == [_ids(tok, "the movie was")]
    assert scorer.n_truncated == {"prompt": 1, "target": 1}
    no_eos = FrozenLMScorer(llama, tok, append_eos=False, target_prefix="a ")
    assert no_eos.encode_targets(["great"]) == [_ids(tok, "a great")]


def test_chat_template_prompt_and_end_of_turn(llama, word_tokenizer):
    tok = word_tokenizer
    scorer = FrozenLMScorer(llama, tok, use_chat_template=True)
    eot = tok.convert_tokens_to_ids("<eot>")
    assert scorer.eos_token_id == eot != tok.eos_token_id
    (prompt,) = scorer.encode_prompts(["the movie"])
    assert prompt == [tok.bos_token_id] + _ids(tok, "user : the movie") + [eot] + _ids(tok, "assistant :")
    assert scorer.encode_targets(["great"]) == [_ids(tok, "great") + [eot]]
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    with pytest.raises(MopError, match="no chat template"):
        FrozenLMScorer(llama, plain, use_chat_template=True)


def test_score_text_pairs_returns_token_counts(llama, word_tokenizer):
    scorer = FrozenLMScorer(llama, word_tokenizer)
    tau = torch.tensor([0.7, 1.2], requires_grad=True)
    loglik, n_tokens = scorer.score(["the movie was", "review :"], ["great", "bad movie"], tau)
    assert n_tokens.tolist() == [2, 3]  # words + eos
    enc = scorer.encode(["the movie was", "review :"], ["great", "bad movie"])
    torch.testing.assert_close(loglik, naive_log_likelihood(llama, enc.prompt_ids, enc.target_ids, tau),
                               atol=1e-4, rtol=0)


# ---------------------------------------------------------------- the real bundled models
SENTENCES = [
    ("Write a short movie review.\nReview:", " The acting was wonderful and the story kept me hooked."),
    ("Write a news headline.\nHeadline:", " Government announces new plan to cut energy bills this winter"),
    ("Describe your weekend.\nAnswer:", " I went hiking with my friends and we had a picnic by the lake."),
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_bundled_lm_matches_naive_and_prefers_fluent_text(name, bundled_lm):
    model, tok = bundled_lm(name)
    scorer = FrozenLMScorer(model, tok, max_batch_tokens=64)
    assert scorer.mode == "head"
    prompts, targets = zip(*SENTENCES)
    tau = torch.tensor([0.6, 1.0, 1.4], requires_grad=True)
    loglik, n_tokens = scorer.score(prompts, targets, tau)
    enc = scorer.encode(prompts, targets)
    assert n_tokens.tolist() == [len(t) for t in enc.target_ids] and enc.target_ids[0][-1] == tok.eos_token_id
    # float64 log_softmax: a float32 full-vocabulary reference is itself off by up to ~1e-2 in d/dtau here
    tau_ref = tau.detach().clone().requires_grad_(True)
    want = naive_log_likelihood(model, enc.prompt_ids, enc.target_ids, tau_ref, dtype=torch.float64)
    torch.testing.assert_close(loglik.double(), want, atol=1e-3, rtol=0)
    loglik.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(tau.grad, tau_ref.grad, atol=1e-3, rtol=0)

    rng = random.Random(0)
    shuffled = []
    for t in targets:
        words = t.split()
        rng.shuffle(words)
        shuffled.append(" " + " ".join(words))
    fluent = loglik.detach() / n_tokens
    scrambled_ll, scrambled_n = scorer.score(prompts, shuffled, tau.detach())
    assert (fluent > scrambled_ll / scrambled_n).all(), (fluent, scrambled_ll / scrambled_n)


@pytest.mark.slow
def test_real_smollm2_chat_template_ends_with_im_end(bundled_lm):
    model, tok = bundled_lm("smollm2-135m")
    scorer = FrozenLMScorer(model, tok, use_chat_template=True)
    assert tok.convert_ids_to_tokens(scorer.eos_token_id) == "<|im_end|>"
    (prompt,) = scorer.encode_prompts(["Say hello."])
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    loglik, n = scorer.score(["Say hello."], ["Hello! How can I help you today?"], 1.0)
    enc = scorer.encode(["Say hello."], ["Hello! How can I help you today?"])
    torch.testing.assert_close(loglik, naive_log_likelihood(model, enc.prompt_ids, enc.target_ids, 1.0),
                               atol=1e-3, rtol=1e-5)
    assert loglik.item() / n.item() > -3.0  # an in-distribution chat reply is likely
