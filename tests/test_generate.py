"""Generation: mixture sampling, per-row temperature, adapters, determinism, resumable output, CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import REPO, assert_one_line_error, byte_tokenizer, make_export, make_tiny_lm, run_cli
from scipy.stats import chisquare

from mop.cli import main
from mop.data import Record
from mop.errors import MopError
from mop.export import load_export
from mop.generate import (
    Component,
    ComponentSampler,
    Sampling,
    build_prompt,
    clean_text,
    default_stop,
    find_stop,
    generate_population,
    sample_continuations,
)


class HashEmbedder:
    """A stand-in sentence embedder: a fixed random unit vector per text."""

    def __init__(self, dim: int):
        self.dim = dim

    def encode(self, texts, desc: str = ""):
        out = []
        for t in texts:
            rng = np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16))
            v = rng.normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def _contexts(n: int = 3) -> list[Record]:
    return [Record(id=f"c{i}", response="", context={"movie": f"Film {i}"}, label=["fresh", "rotten"][i % 2])
            for i in range(n)]


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _chisquare(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of observed counts against probabilities; cells expected below 5 are merged into one."""
    counts, probs = np.asarray(counts, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    expected = probs / probs.sum() * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(chisquare(obs[keep], exp[keep]).pvalue)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_lm():
    return make_tiny_lm(seed=1)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved as a model folder (what --model accepts)."""
    path = tmp_path_factory.mktemp("tiny-lm")
    make_tiny_lm(seed=2, save_to=path)
    return path


# ----------------------------------------------------------------------------------------- mixture sampling
def test_persona_and_exemplar_frequencies_follow_the_gate(tmp_path):
    export = load_export(make_export(tmp_path / "gate", dim=16, k=6, n_pool=10, init_std=0.6).path)
    sampler = ComponentSampler(export, "mop")
    hx = torch.as_tensor(HashEmbedder(16).encode(["a fresh review of the movie Film 0"]))
    n = 2000
    comps = sampler.sample(hx.expand(n, -1), [None] * n, range(n), seed=0)
    pi = sampler.log_pi(hx)[0].exp().numpy()
    assert pi.max() > 2.5 * pi.min()  # a far-from-uniform pi: the test can tell it from uniform
    counts = np.bincount([c.persona for c in comps], minlength=6)
    assert _chisquare(counts, pi) > 1e-3
    assert _chisquare(counts, np.full(6, 1 / 6)) < 1e-6
    # exemplars given the most frequent persona follow Omega_k(x) as the gate computes it
    k = int(counts.argmax())
    omega = export.gate.log_omega(hx, export.persona_emb, export.pool_emb)[0, k].exp().numpy()
    ex_counts = np.bincount([c.exemplar for c in comps if c.persona == k], minlength=10)
    assert _chisquare(ex_counts, omega) > 1e-3
    assert all(c.temperature == pytest.approx(float(export.tau[c.persona])) for c in comps[:50])


def test_ablations_keep_one_half_of_the_gate(tmp_path):
    """mop-no-exemplar: k ~ pi(x), no exemplar; mop-random-persona: uniform k, j ~ Omega_k(x); both at
    tau_k."""
    export = load_export(make_export(tmp_path / "gate", dim=16, k=6, n_pool=10, init_std=0.6).path)
    hx = torch.as_tensor(HashEmbedder(16).encode(["a fresh review of the movie Film 0"]))
    n = 2000
    pi = ComponentSampler(export, "mop").log_pi(hx)[0].exp().numpy()
    no_ex = ComponentSampler(export, "mop-no-exemplar").sample(hx.expand(n, -1), [None] * n, range(n), seed=0)
    assert all(c.exemplar is None for c in no_ex)
    counts = np.bincount([c.persona for c in no_ex], minlength=6)
    assert _chisquare(counts, pi) > 1e-3 and _chisquare(counts, np.full(6, 1 / 6)) < 1e-6
    rnd = ComponentSampler(export, "mop-random-persona").sample(hx.expand(n, -1), [None] * n, range(n),
                                                                seed=0)
    counts = np.bincount([c.persona for c in rnd], minlength=6)
    assert _chisquare(counts, np.full(6, 1 / 6)) > 1e-3 and _chisquare(counts, pi) < 1e-6
    k = int(counts.argmax())
    omega = export.gate.log_omega(hx, export.persona_emb, export.pool_emb)[0, k].exp().numpy()
    ex_counts = np.bincount([c.exemplar for c in rnd if c.persona == k], minlength=10)
    assert _chisquare(ex_counts, omega) > 1e-3 and _chisquare(ex_counts, np.full(10, 0.1)) < 1e-3
    assert all(c.temperature == pytest.approx(float(export.tau[c.persona])) for c in no_ex[:50] + rnd[:50])


def test_gate_temperature_tempers_pi_and_omega_and_only_the_gate(tmp_path):
    """T divides the gate's logits: draws follow pi^(1/T) and Omega_k^(1/T) renormalised; T = 1 is the trained
    gate, a large T nears the uniform gate, T < 1 sharpens; the baselines refuse it."""
    export = load_export(make_export(tmp_path / "gate", dim=16, k=6, n_pool=10, init_std=0.6).path)
    hx = torch.as_tensor(HashEmbedder(16).encode(["a fresh review of the movie Film 0"]))
    pi = ComponentSampler(export, "mop").log_pi(hx)[0].exp().numpy()
    assert pi.max() > 2.5 * pi.min()
    n = 3000
    for T in (0.5, 3.0):
        sampler = ComponentSampler(export, "mop", gate_temperature=T)
        want = pi ** (1 / T) / (pi ** (1 / T)).sum()
        assert np.allclose(sampler.log_pi(hx)[0].exp().numpy(), want, atol=1e-6)
        comps = sampler.sample(hx.expand(n, -1), [None] * n, range(n), seed=0)
        counts = np.bincount([c.persona for c in comps], minlength=6)
        assert _chisquare(counts, want) > 1e-3 and _chisquare(counts, pi) < 1e-6
        k = int(counts.argmax())
        omega = export.gate.log_omega(hx, export.persona_emb, export.pool_emb)[0, k].exp().numpy()
        want_omega = omega ** (1 / T) / (omega ** (1 / T)).sum()
        ex_counts = np.bincount([c.exemplar for c in comps if c.persona == k], minlength=10)
        assert _chisquare(ex_counts, want_omega) > 1e-3
        assert all(c.temperature == pytest.approx(float(export.tau[c.persona])) for c in comps[:50])
    # flatter with T, the trained gate at 1, close to uniform at a large T; the masked exemplar stays out
    entropy = [float(-(p * np.log(p)).sum()) for p in
               (ComponentSampler(export, "mop", gate_temperature=T).log_pi(hx)[0].exp().numpy()
                for T in (0.5, 1.0, 2.0, 1e4))]
    assert entropy[0] < entropy[1] < entropy[2] < entropy[3]
    assert entropy[3] == pytest.approx(np.log(6), abs=1e-4)
    hot = ComponentSampler(export, "mop", gate_temperature=4.0).sample(hx.expand(400, -1), ["e2"] * 400,
                                                                    range(400), seed=1)
    assert 2 not in {c.exemplar for c in hot}
    for method in ("uniform", "fewshot", "zerogen", "persona"):
        with pytest.raises(MopError, match="does not use it"):
            ComponentSampler(export, method, gate_temperature=2.0)
        ComponentSampler(export, method, gate_temperature=1.0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(MopError, match="positive and finite"):
            Sampling(num_samples=1, gate_temperature=bad).check()


def test_own_record_is_never_an_exemplar(tmp_path):
    export = load_export(make_export(tmp_path / "gate", dim=16, k=3, n_pool=4, init_std=0.6).path)
    hx = torch.as_tensor(HashEmbedder(16).encode(["x"])).expand(400, -1)
    for method in ("mop", "uniform", "fewshot"):
        comps = ComponentSampler(export, method).sample(hx, ["e2"] * 400, range(400), seed=3)
        assert {c.exemplar for c in comps} == {0, 1, 3}, method


def test_label_matched_exemplars_are_drawn_among_the_contexts_label_only(tmp_path):
    """exemplar_label match: every exemplar-drawing method draws among the exemplars with the context's label,
    the gate's Omega renormalised over them (mop) or uniformly (the baselines); the own record stays out; an
    unlabelled context is not restricted; a label the pool lacks is refused."""
    export = load_export(make_export(tmp_path / "gate", dim=16, k=6, n_pool=10, init_std=0.6).path)
    rotten = [j for j, e in enumerate(export.exemplars) if e.label == "rotten"]
    assert rotten == [1, 3, 5, 7, 9]
    hx = torch.as_tensor(HashEmbedder(16).encode(["a rotten review of the movie Film 1"]))
    n = 3000
    comps = ComponentSampler(export, "mop", match_label=True).sample(hx.expand(n, -1), [None] * n, range(n),
                                                                      seed=0, labels=["rotten"] * n)
    assert {c.exemplar for c in comps} <= set(rotten)
    k = int(np.bincount([c.persona for c in comps]).argmax())
    omega = export.gate.log_omega(hx, export.persona_emb, export.pool_emb)[0, k].exp().numpy()
    want = np.zeros(10)
    want[rotten] = omega[rotten] / omega[rotten].sum()
    ex_counts = np.bincount([c.exemplar for c in comps if c.persona == k], minlength=10)
    assert _chisquare(ex_counts[rotten], want[rotten]) > 1e-3
    assert _chisquare(ex_counts[rotten], np.full(5, 0.2)) < 1e-3  # the gate's weights, not a uniform draw
    for method in ("fewshot", "uniform", "mop-random-persona"):
        got = ComponentSampler(export, method, match_label=True).sample(
            hx.expand(n, -1), ["e3"] * n, range(n), seed=1, labels=["rotten"] * n)
        assert {c.exemplar for c in got} <= {1, 5, 7, 9}, method  # rotten, and never the own record e3
        if method != "mop-random-persona":
            assert _chisquare(np.bincount([c.exemplar for c in got], minlength=10)[[1, 5, 7, 9]],
                              np.full(4, 0.25)) > 1e-3
    # off by default; an unlabelled context is not restricted even with match_label
    free = ComponentSampler(export, "fewshot").sample(hx.expand(400, -1), [None] * 400, range(400), seed=2,
                                                      labels=["rotten"] * 400)
    unlabelled = ComponentSampler(export, "fewshot", match_label=True).sample(
        hx.expand(400, -1), [None] * 400, range(400), seed=2, labels=[None] * 400)
    for got in (free, unlabelled):
        assert {c.exemplar for c in got} == set(range(10))
    with pytest.raises(MopError, match="no exemplar of the pool has its label 'mixed'"):
        ComponentSampler(export, "mop", match_label=True).sample(hx, [None], [0], seed=0, labels=["mixed"])
    with pytest.raises(MopError, match="exemplar_label must be auto, match or any"):
        Sampling(num_samples=1, exemplar_label="same").check()


def test_label_exclusions_mask_exactly_the_other_labels():
    from mop.datamodule import exclusions

    pool = [Record(id=f"e{j}", response=f"text {j}", context={}, label=lab)
            for j, lab in enumerate(["fresh", "rotten", "fresh", None, "rotten"])]
    records = [Record(id="e0", response="text 0", context={}, label="fresh"),
               Record(id="x", response="other", context={}, label="rotten"),
               Record(id="y", response="text 2", context={}, label=None)]
    assert exclusions(records, pool) == [[0], [], [2]]
    assert exclusions(records, pool, other_label=True) == [[0, 1, 4], [0, 2], [2]]


def test_baselines_share_the_template(tmp_path):
    export = load_export(make_export(tmp_path / "gate", dim=16, k=4).path)
    record = _contexts(1)[0]
    hx = torch.as_tensor(HashEmbedder(16).encode(["x"]))
    mean_tau = float(export.tau.mean())
    seen = {}
    for method in ("mop", "uniform", "persona", "fewshot", "zerogen", "attrprompt"):
        comp = ComponentSampler(export, method).sample(hx, [record.id], [0], seed=0)[0]
        prompt = build_prompt(export, record, comp)
        seen[method] = prompt
        assert (prompt.endswith("Now write a fresh review of the movie Film 0.\nReview:")
                or method == "attrprompt")
        assert ("Persona: You are critic" in prompt) == (method in ("mop", "uniform", "persona")), method
        assert ("Example: you wrote this" in prompt) == (method in ("mop", "uniform", "fewshot")), method
        if method != "mop":
            assert comp.temperature == pytest.approx(mean_tau)
    lines = seen["attrprompt"].split("\n")
    assert lines[-1] == "Review:" and lines[-2].startswith("Attributes: style=") and "aspect=" in lines[-2]
    fixed = ComponentSampler(export, "mop", temperature=0.25).sample(hx, ["c0"], [0], seed=0)[0]
    assert fixed.temperature == 0.25


def test_the_persona_free_component_writes_the_fewshot_prompt(tmp_path):
    """With a null persona the export has K + 1 components: the gate may pick it (its prompt is few-shot's,
    no persona line), the uniform gate draws it 1 / (K + 1) of the time, the persona baseline never."""
    export = load_export(make_export(tmp_path / "gate", dim=16, k=4, null_persona=True).path)
    assert export.null_persona_index == 3 and export.described_personas == [0, 1, 2]
    assert export.persona_ids[3] == "none" and export.persona_texts[3] == ""
    record = _contexts(1)[0]
    with_null = build_prompt(export, record, Component(3, 2, 1.0))
    fewshot = build_prompt(export, record, Component(None, 2, 1.0))
    assert with_null == fewshot and "Persona:" not in with_null and "Example: you wrote" in with_null
    n = 1200
    hx = torch.zeros(n, 16)
    persona = np.bincount([c.persona for c in ComponentSampler(export, "persona").sample(
        hx, [None] * n, range(n), seed=0)], minlength=4)
    assert persona[3] == 0 and _chisquare(persona[:3], np.full(3, 1 / 3)) > 1e-3
    uniform = np.bincount([c.persona for c in ComponentSampler(export, "uniform").sample(
        hx, [None] * n, range(n), seed=0)], minlength=4)
    assert _chisquare(uniform, np.full(4, 1 / 4)) > 1e-3
    # the trained gate draws the persona-free component with its weight pi_none(x), like any other
    export = load_export(make_export(tmp_path / "gate2", dim=16, k=4, init_std=0.6, null_persona=True).path)
    gated = ComponentSampler(export, "mop")
    hx = torch.as_tensor(HashEmbedder(16).encode(["a fresh review of the movie Film 0"]))
    pi = gated.log_pi(hx)[0].exp().numpy()
    drawn = np.bincount([c.persona for c in gated.sample(hx.expand(n, -1), [None] * n, range(n), seed=0)],
                        minlength=4)
    assert drawn[3] > 0 and _chisquare(drawn, pi) > 1e-3


# ------------------------------------------------------------------------------------------------ LM sampling
def _fixed_logit_lm(tok):
    """A tiny Llama whose next-token logits are the same at every position, whatever the input."""
    model, _ = make_tiny_lm(tokenizer=None, vocab_size=len(tok), seed=0, hidden=32, layers=1)
    with torch.no_grad():
        for layer in model.model.layers:  # residual stream = the token embedding, which is the same for all
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        head = torch.full((len(tok),), -50.0)
        letters = tok.convert_tokens_to_ids(["a", "b", "c", "d"])
        head[letters] = torch.tensor([1.0, 0.5, 0.0, -0.5])
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = head / np.sqrt(32)
        z = model(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1]
    return model, letters, z


def test_per_row_temperature_is_honoured_within_one_batch():
    tok = byte_tokenizer()
    model, letters, z = _fixed_logit_lm(tok)
    taus = [0.3] * 4 + [3.0] * 4
    out = sample_continuations(model, tok, ["any prompt"] * 8, taus, list(range(8)), max_new_tokens=100,
                               stop=())
    assert all(len(row) == 100 for row in out)
    low = np.bincount(np.searchsorted(letters, np.concatenate(out[:4])), minlength=4)
    high = np.bincount(np.searchsorted(letters, np.concatenate(out[4:])), minlength=4)
    assert low.sum() == high.sum() == 400  # only the four letters are ever sampled
    p_low, p_high = (torch.softmax(z[letters] / t, -1).numpy() for t in (0.3, 3.0))
    assert _chisquare(low, p_low) > 1e-3 and _chisquare(high, p_high) > 1e-3
    assert _chisquare(low, p_high) < 1e-6 and _chisquare(high, p_low) < 1e-6
    # top-p keeps the nucleus of the tempered distribution only (at tau=1: tokens a, b hold 0.73 > 0.6)
    nucleus = sample_continuations(model, tok, ["p"] * 2, [1.0, 1.0], [10, 11], max_new_tokens=100, top_p=0.6,
                                   stop=())
    counts = np.bincount(np.searchsorted(letters, np.concatenate(nucleus)), minlength=4)
    assert counts[2:].sum() == 0
    assert _chisquare(counts[:2], torch.softmax(z[letters[:2]], -1).numpy()) > 1e-3


def test_a_row_does_not_depend_on_its_batch(tiny_lm):
    model, tok = tiny_lm
    prompts = ["Review of Film 1:", "A much longer prompt about Film 2, which pads the first one:", "x"]
    together = sample_continuations(model, tok, prompts, [0.7, 1.0, 1.3], [7, 8, 9], max_new_tokens=12,
                                    stop=())
    alone = [sample_continuations(model, tok, [p], [t], [s], max_new_tokens=12, stop=())[0]
             for p, t, s in zip(prompts, [0.7, 1.0, 1.3], [7, 8, 9])]
    assert together == alone
    other_seed = sample_continuations(model, tok, prompts, [0.7, 1.0, 1.3], [17, 18, 19], max_new_tokens=12,
                                      stop=())
    assert other_seed != together


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_decode_loop_equals_hf_generate_where_no_stop_applies(arch):
    """Same seed, same samples as the Hugging Face generate loop it replaced (no stop string, no end
    token)."""
    model, tok = make_tiny_lm(arch, seed=3)
    prompts = ["Review of Film 1:", "A much longer prompt about Film 2, which pads the first one:", "x",
               "Film 4"]
    taus, seeds = [0.7, 1.0, 1.3, 0.5], [7, 8, 9, 10]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import hf_generate_reference

    ours = sample_continuations(model, tok, prompts, taus, seeds, max_new_tokens=14, min_new_tokens=14,
                                stop=())
    assert ours == hf_generate_reference(model, tok, prompts, taus, seeds, max_new_tokens=14,
                                         min_new_tokens=14, stop_at_newline=False)
    assert all(len(row) == 14 for row in ours)
    # with the newline stop: the same texts (the old loop kept decoding finished rows; their tails are cut)
    ours = sample_continuations(model, tok, prompts, taus, seeds, max_new_tokens=30, stop=("\n",))
    old = hf_generate_reference(model, tok, prompts, taus, seeds, max_new_tokens=30)
    assert [clean_text(tok.decode(a, skip_special_tokens=True)) for a in ours] == \
        [clean_text(tok.decode(b, skip_special_tokens=True)) for b in old]


@pytest.mark.parametrize("arch,config", [("llama", {}), ("gemma3", {}), ("gemma3", {"sliding_window": 48})])
def test_shared_prompt_prefixes_run_once_and_change_nothing(arch, config):
    """Prompts sharing a long prefix (instruction + persona): the same samples with and without prefix
    sharing;
    with it, fewer prompt tokens go through the LM (none saved where a sliding window forbids sharing)."""
    model, tok = make_tiny_lm(arch, seed=5, **config)
    head = "You embody the persona in the description to complete the task. Persona: "
    prompts = ([head + f"a critic who loves films. Now review Film {i}:" for i in range(4)]
               + [head + f"a grumpy critic. Example: it was bad. Now review Film {i}:" for i in range(3)]
               + ["short", "short prompt", head[:30]])
    taus, seeds = [0.8 + 0.05 * i for i in range(len(prompts))], list(range(100, 100 + len(prompts)))
    embedded = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: embedded.append(i[0].shape))
    runs = {}
    for share in (False, True):
        embedded.clear()
        runs[share] = sample_continuations(model, tok, prompts, taus, seeds, max_new_tokens=20, stop=("\n",),
                                           share_prefixes=share)
        runs[share, "prefill"] = sum(b * w for b, w in embedded if w > 1)  # prompt forwards, padding included
    hook.remove()
    assert runs[True] == runs[False]
    if config.get("sliding_window"):
        assert runs[True, "prefill"] == runs[False, "prefill"]  # the window: not shared
    else:
        assert runs[True, "prefill"] < 0.75 * runs[False, "prefill"], (runs[True, "prefill"],
                                                                       runs[False, "prefill"])


def test_a_stop_string_ends_its_row_and_the_rest_of_the_batch_continues_unchanged():
    model, tok = make_tiny_lm(seed=4)
    prompts = [f"Review number {i}:" for i in range(6)]
    taus, seeds = [1.0] * 6, list(range(6))
    free = sample_continuations(model, tok, prompts, taus, seeds, max_new_tokens=30, stop=())
    texts = [tok.decode(row, skip_special_tokens=True) for row in free]
    # a stop string that row 0 writes (the text of its tokens 5 to 8) and others do not
    stop = texts[0][len(tok.decode(free[0][:5])):len(tok.decode(free[0][:9]))]
    assert stop.strip(), texts[0]
    stopped = sample_continuations(model, tok, prompts, taus, seeds, max_new_tokens=30, stop=(stop,))
    hit = [find_stop(t, [stop]) is not None for t in texts]
    assert hit[0] and not all(hit)
    for row, full, text, h in zip(stopped, free, texts, hit):
        assert full[:len(row)] == row  # a stopped row is a prefix of the free one...
        if h:  # ... ending with the token that completed the stop string
            assert (len(row) < len(full)
                    and find_stop(tok.decode(row, skip_special_tokens=True), [stop]) is not None)
            assert find_stop(tok.decode(row[:-1], skip_special_tokens=True), [stop]) is None
            assert clean_text(tok.decode(row, skip_special_tokens=True), [stop]) == clean_text(text, [stop])
        else:  # rows that never write it are exactly as without the stop string
            assert row == full


def test_bundled_attribute_files_load():
    from mop.generate import DEFAULT_ATTRIBUTES, load_attributes

    assert load_attributes(REPO / "configs/attributes/reviews.yaml") == DEFAULT_ATTRIBUTES
    headlines = load_attributes(REPO / "configs/attributes/headlines.yaml")
    assert set(headlines) == {"topic", "tone", "form"} and all(len(v) >= 5 for v in headlines.values())


def test_default_stop_is_a_newline_unless_the_population_writes_several_lines(tmp_path):
    from types import SimpleNamespace

    def pool(n_multiline, n=20):
        return SimpleNamespace(exemplars=[Record(id=str(i), response="line one\nline two" if i < n_multiline
                                                 else "one line", context={}, label=None) for i in range(n)])

    assert default_stop(pool(0)) == ["\n"] and default_stop(pool(20)) == []
    assert default_stop(pool(1)) == ["\n"]  # a stray newline in one review of 20 does not count
    assert default_stop(pool(2)) == []  # a tenth of the population writes several lines
    assert clean_text("  \n first\nsecond", ["\n"]) == "first" and clean_text(" a END b", ["END"]) == "a"


def test_lora_adapter_changes_the_output(tiny_lm_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from mop.assets import load_lm

    base, tok = load_lm(str(tiny_lm_dir))
    lora = get_peft_model(make_tiny_lm(seed=2)[0], LoraConfig(r=4, lora_alpha=16, target_modules=[
        "q_proj", "v_proj", "down_proj"], init_lora_weights=False))  # lora_B random, not zero
    lora.save_pretrained(tmp_path / "adapter")
    adapted, _ = load_lm(str(tiny_lm_dir), adapter=str(tmp_path / "adapter"))
    prompts = ["Review of Film 1:", "Review of Film 2:", "Review of Film 3:"]
    args = {"max_new_tokens": 16, "stop": ()}
    plain = sample_continuations(base, tok, prompts, [1.0] * 3, [1, 2, 3], **args)
    assert sample_continuations(base, tok, prompts, [1.0] * 3, [1, 2, 3], **args) == plain
    assert sample_continuations(adapted, tok, prompts, [1.0] * 3, [1, 2, 3], **args) != plain


# ------------------------------------------------------------------------------------- rows, seeds, resuming
def test_same_seed_same_rows(tmp_path, tiny_lm):
    model, tok = tiny_lm
    export = load_export(make_export(tmp_path / "gate", dim=16, k=4, init_std=0.6).path)
    records = _contexts(3)
    emb = HashEmbedder(16).encode([f"a {r.label} review of the movie {r.context['movie']}" for r in records])
    kw = {"context_emb": emb, "model_name": "tiny", "progress": False}

    def run(name, n=7, **settings):
        sampling = Sampling(num_samples=n, **{"batch_size": 4, "max_new_tokens": 10, **settings})
        return generate_population(export, model, tok, records, tmp_path / name, sampling, **kw)

    s1 = run("a.jsonl")
    run("b.jsonl")
    run("c.jsonl", batch_size=3)
    run("d.jsonl", seed=1)
    a = _rows(tmp_path / "a.jsonl")
    assert s1 == {"output": str(tmp_path / "a.jsonl"), "written": 7, "skipped": 0, "empty": s1["empty"]}
    assert a == _rows(tmp_path / "b.jsonl") == _rows(tmp_path / "c.jsonl")  # batch size does not matter
    assert [r["id"] for r in a] == ["c0-0", "c1-0", "c2-0", "c0-1", "c1-1", "c2-1", "c0-2"]
    assert [r["text"] for r in _rows(tmp_path / "d.jsonl")] != [r["text"] for r in a]
    row = a[4]
    assert row["record_id"] == "c1" and row["context"] == {"movie": "Film 1"} and row["label"] == "rotten"
    assert row["persona"] == export.persona_texts[export.persona_ids.index(row["persona_id"])]
    assert row["exemplar_id"] in {e.id for e in export.exemplars}
    assert (row["model"], row["method"], row["seed"], row["adapter"]) == ("tiny", "mop", 0, None)
    k = export.persona_ids.index(row["persona_id"])
    assert row["temperature"] == pytest.approx(float(export.tau[k]), abs=1e-6)
    # shuffled contexts: another order, but a sample's content depends on (seed, its id) only
    run("e.jsonl", 3, shuffle=True)
    shuffled = _rows(tmp_path / "e.jsonl")
    assert [r["id"] for r in shuffled] == [f"c{i}-0" for i in np.random.default_rng(0).permutation(3)]
    assert {r["id"]: r for r in shuffled} == {r["id"]: r for r in a[:3]}
    # a finished output is a no-op to re-run; one from another method is refused
    again = run("a.jsonl")
    assert again["written"] == 0 and again["skipped"] == 7
    with pytest.raises(MopError, match="other settings: method 'mop' \\(now 'zerogen'\\)"):
        run("a.jsonl", method="zerogen")
    # the gate temperature is in every row, and a file of one is not resumed with another
    assert {r["gate_temperature"] for r in a} == {1.0}
    run("g.jsonl", 3, gate_temperature=2.5)
    assert {r["gate_temperature"] for r in _rows(tmp_path / "g.jsonl")} == {2.5}
    with pytest.raises(MopError, match="gate_temperature 2.5 \\(now 1.0\\)"):
        run("g.jsonl", 3)
    legacy = tmp_path / "legacy.jsonl"  # rows written before the field existed were sampled at T = 1
    legacy.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "gate_temperature"}) + "\n"
                              for r in a[:2]))
    assert run("legacy.jsonl", 3)["skipped"] == 2
    with pytest.raises(MopError, match="gate_temperature 1.0 \\(now 2.0\\)"):
        run("legacy.jsonl", 3, gate_temperature=2.0)
    # which exemplars a context may get is in every row too: any by default, match draws the context's label
    assert {r["exemplar_label"] for r in a} == {"any"}
    run("m.jsonl", 6, exemplar_label="match")
    matched = _rows(tmp_path / "m.jsonl")
    labels = {e.id: e.label for e in export.exemplars}
    assert {r["exemplar_label"] for r in matched} == {"match"}
    assert all(labels[r["exemplar_id"]] == r["label"] for r in matched)
    with pytest.raises(MopError, match="exemplar_label 'match' \\(now 'any'\\)"):
        run("m.jsonl", 6)
    # auto: as the export was trained (an export trained with data.mask_other_label samples label-matched)
    trained = load_export(make_export(tmp_path / "gate-label", dim=16, k=4, init_std=0.6,
                                      mask_other_label=True).path)
    for name, setting, want in (("auto.jsonl", "auto", "match"), ("any.jsonl", "any", "any")):
        sampling = Sampling(num_samples=6, batch_size=4, max_new_tokens=4, exemplar_label=setting)
        generate_population(trained, model, tok, records, tmp_path / name, sampling, **kw)
        got = _rows(tmp_path / name)
        assert {r["exemplar_label"] for r in got} == {want}
        if want == "match":
            assert all(labels[r["exemplar_id"]] == r["label"] for r in got)
    with pytest.raises(MopError, match="tokenizer has none"):
        run("f.jsonl", 2, chat_template="on")
    # the nucleus mass is in every row too: a file of one top-p is not resumed at another
    assert {r["top_p"] for r in a} == {1.0}
    run("p.jsonl", 3, top_p=0.5)
    assert {r["top_p"] for r in _rows(tmp_path / "p.jsonl")} == {0.5}
    with pytest.raises(MopError, match="top_p 0.5 \\(now 1.0\\)"):
        run("p.jsonl", 4)
    old = tmp_path / "old.jsonl"  # rows written before the field existed were sampled without a nucleus
    old.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "top_p"}) + "\n" for r in a[:2]))
    assert run("old.jsonl", 3)["skipped"] == 2
    with pytest.raises(MopError, match="top_p 1.0 \\(now 0.9\\)"):
        run("old.jsonl", 4, top_p=0.9)
    # the gate, the prompt template and the sampling options are in every row: a file is not resumed with
    # another export (a retrained gate would otherwise be skipped over: its rows "already there"), another
    # --temperature, --max-new-tokens or --stop
    assert {r["max_new_tokens"] for r in a} == {10} and {r["sampling_temperature"] for r in a} == {None}
    assert {r["stop"] for r in a} == {None} and len({r["gate_sha"] for r in a}) == 1
    for changed, message in (({"max_new_tokens": 12}, "max_new_tokens 10 \\(now 12\\)"),
                             ({"temperature": 0.7}, "sampling_temperature None \\(now 0.7\\)"),
                             ({"stop": ()}, "stop None \\(now \\[\\]\\)")):
        with pytest.raises(MopError, match=message):
            run("a.jsonl", **changed)
    retrained = load_export(make_export(tmp_path / "gate2", dim=16, k=4, init_std=0.6, seed=1).path)
    with pytest.raises(MopError, match=f"gate_sha '{a[0]['gate_sha']}' \\(now '[0-9a-f]{{12}}'\\)"):
        generate_population(retrained, model, tok, records, tmp_path / "a.jsonl",
                            Sampling(num_samples=7, batch_size=4, max_new_tokens=10), **kw)
    export.config = {**export.config, "prompt_template": "Review {movie}:"}  # what --prompt-template does
    with pytest.raises(MopError, match=f"prompt_sha '{a[0]['prompt_sha']}' \\(now '[0-9a-f]{{12}}'\\)"):
        run("a.jsonl")
    # rows from before these were recorded resume (their values are unknown, not compared)
    older = tmp_path / "older.jsonl"
    unrecorded = ("gate_sha", "prompt_sha", "sampling_temperature", "max_new_tokens", "stop")
    older.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in unrecorded}) + "\n"
                             for r in a[:2]))
    assert run("older.jsonl", 3, max_new_tokens=12)["skipped"] == 2


@pytest.mark.slow  # generate.py subprocesses, killed and rerun (about 11 s on 2 cores)
def test_killed_generation_resumes_to_exactly_n_rows(tmp_path, tiny_lm_dir, monkeypatch):
    """A real process killed with SIGKILL mid-run, plus a torn last line: the re-run completes the set."""
    gate = make_export(tmp_path / "gate", dim=384, k=4, init_std=0.2).path  # the real bundled embedder's size
    ctx = tmp_path / "contexts.jsonl"
    ctx.write_text("".join(json.dumps({"id": f"m{i}", "movie": f"Film {i}", "label": "fresh"}) + "\n"
                           for i in range(5)))
    n = 30
    args = ["--gating", str(gate), "--model", str(tiny_lm_dir), "--contexts", str(ctx),
            "--num-samples", str(n), "--batch-size", "2", "--max-new-tokens", "12", "--stop", "--no-progress"]
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "MOP_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("MOP_CACHE", str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "generate.py", *args, "--output", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
    if len(complete) >= n:  # the process won the race: simulate the kill by truncating its output
        complete = complete[:9]
    if len(complete) % 2 == 0:  # end inside a batch (of 2), which the re-run must complete identically
        complete = complete[:-1]
    out.write_bytes(b"".join(line + b"\n" for line in complete) + b'{"id": "m1-9", "text": "a torn wri')
    assert main(["generate", *args, "--output", str(out)]) == 0
    rows = _rows(out)
    assert out.read_bytes().endswith(b"\n")
    ids = [r["id"] for r in rows]
    assert len(ids) == n and len(set(ids)) == n
    assert set(ids) == {f"m{i % 5}-{i // 5}" for i in range(n)}
    # ... and they are the rows an uninterrupted run writes
    assert main(["generate", *args, "--output", str(tmp_path / "ref.jsonl")]) == 0
    ref = {r["id"]: r for r in _rows(tmp_path / "ref.jsonl")}
    assert {r["id"]: r for r in rows} == ref
    assert len({r["persona_id"] for r in ref.values()}) > 1


def test_prompt_template_override_changes_every_methods_prompt(tmp_path):
    model, tok = make_tiny_lm(seed=3)
    with torch.no_grad():  # peaked logits: the prompt, not only the seeded noise, decides the tokens
        model.lm_head.weight.mul_(12.0)
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    gate = make_export(tmp_path / "gate", dim=16, k=3, init_std=0.2).path
    ctx = tmp_path / "contexts.jsonl"
    ctx.write_text("".join(json.dumps({"id": f"m{i}", "movie": f"Film {i}", "label": "fresh"}) + "\n"
                           for i in range(3)))
    args = ["generate", "--gating", str(gate), "--model", str(tmp_path / "lm"), "--contexts", str(ctx),
            "--num-samples", "6", "--max-new-tokens", "8", "--stop", "--method", "fewshot", "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "a.jsonl")]) == 0
    template = 'Here is a {label} review of {movie}, like "{exemplar_response}":'
    assert main([*args, "--output", str(tmp_path / "b.jsonl"), "--prompt-template", template]) == 0
    a, b = _rows(tmp_path / "a.jsonl"), _rows(tmp_path / "b.jsonl")
    assert [r["exemplar_id"] for r in a] == [r["exemplar_id"] for r in b]  # the same choices ...
    assert [r["text"] for r in a] != [r["text"] for r in b]  # ... under another prompt
    proc = run_cli(*args, "--output", str(tmp_path / "c.jsonl"), "--prompt-template", "About {film}:")
    assert_one_line_error(proc, "unknown field(s) film")


# ------------------------------------------------------------------------------------------------- CLI errors
def test_cli_errors_are_one_line(tmp_path):
    gate = make_export(tmp_path / "gate", dim=16).path
    base = ["--gating", str(gate), "--model", "nowhere", "--num-samples", "3"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(run_cli("generate", *base, "--contexts", str(empty),
                                  "--output", str(tmp_path / "o.jsonl")),
                          "empty.jsonl", "is empty")
    partial = tmp_path / "ctx.csv"
    partial.write_text("label,title\nfresh,Film 1\n")
    assert_one_line_error(run_cli("generate", *base, "--contexts", str(partial), "--output",
                                  str(tmp_path / "o.jsonl")), "lacks field(s) 'movie'")
    ok = tmp_path / "ok.csv"
    ok.write_text("label,movie\nfresh,Film 1\n")
    assert_one_line_error(run_cli("generate.py", *base, "--contexts", str(ok), "--output",
                                  str(tmp_path / "missing" / "o.jsonl")),
                          "output directory", "does not exist")
    assert_one_line_error(run_cli("generate", *base, "--contexts", str(ok), "--output",
                                  str(tmp_path / "o.jsonl"), "--method", "fewshot",
                                  "--gate-temperature", "2"),
                          "--gate-temperature tempers the trained gate", "'fewshot' does not use it")
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_real_assets_end_to_end(tmp_path):
    """SmolLM2 + MiniLM on Rotten Tomatoes test contexts (--data): full rows of one-paragraph reviews."""
    gate = make_export(tmp_path / "gate", dim=384, k=4, init_std=0.2).path
    out = tmp_path / "out.jsonl"
    args = ["--gating", str(gate), "--model", "smollm2-135m",
            "--data", str(REPO / "configs" / "quickstart.yaml"),
            "--split", "test", "--num-samples", "4", "--shuffle", "--max-new-tokens", "40", "--no-progress"]
    assert main(["generate", *args, "--output", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 4 and len({r["record_id"] for r in rows}) == 4
    assert all(r["text"] and "\n" not in r["text"] for r in rows)
    assert all(r["context"]["movie"] and r["label"] in ("fresh", "rotten") and r["persona_id"] for r in rows)
    # resumed: nothing to add
    assert main(["generate", *args, "--output", str(out)]) == 0 and _rows(out) == rows


@pytest.mark.parametrize("share", [False, True])
def test_a_model_that_takes_past_key_values_generates_the_same(share):
    """transformers releases before the ``cache`` keyword take the cache as ``past_key_values``: the decode
    loop must pass it under the name the model's forward takes (under the wrong one it is swallowed by
    ``**kwargs`` and the cache stays empty), with the same samples."""
    from transformers import LlamaForCausalLM

    class PastKeyValuesLlama(LlamaForCausalLM):  # the older signature
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None, logits_to_keep=0):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=past_key_values, use_cache=use_cache,
                                   logits_to_keep=logits_to_keep)

    model, tok = make_tiny_lm("llama", seed=5)
    old = PastKeyValuesLlama(model.config).eval()
    old.load_state_dict(model.state_dict())
    head = "You embody the persona in the description to complete the task. Persona: "
    prompts = [head + f"a critic. Now review Film {i}:" for i in range(4)] + ["short"]
    taus, seeds = [0.9] * len(prompts), list(range(len(prompts)))
    want = sample_continuations(model, tok, prompts, taus, seeds, max_new_tokens=12, stop=(),
                                share_prefixes=share)
    assert sample_continuations(old, tok, prompts, taus, seeds, max_new_tokens=12, stop=(),
                                share_prefixes=share) == want


def test_population_usage_counts_what_the_rows_drew(tmp_path):
    from mop.outputs import population_usage, read_rows, usage_line

    rows = [{"persona_id": "p1", "exemplar_id": "e1", "text": "one two three"},
            {"persona_id": "p1", "exemplar_id": "e2", "text": "four"},
            {"persona_id": "p2", "exemplar_id": "e1", "text": ""},
            {"persona_id": "p2", "exemplar_id": "e2", "text": "five six"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"persona_id": "p9", "te')  # a torn line
    usage = population_usage(read_rows(path))
    assert usage == {"rows": 4, "personas_used": 2, "exemplars_used": 2, "effective_personas": 2.0,
                     "effective_exemplars": 2.0, "empty": 1, "mean_words": 1.5}
    assert usage_line(usage) == ("4 row(s), 2 personas used (2.0 effective), 2 exemplars used "
                                 "(2.0 effective), 1.5 words on average")
    # one persona drawn 3 times in 4: 1.75 effective; no exemplars (persona-only): no exemplar part
    skew = population_usage([{"persona_id": "a", "text": "x"}] * 3 + [{"persona_id": "b", "text": "y"}])
    assert skew["effective_personas"] == 1.75 and skew["exemplars_used"] == 0
    assert "exemplars" not in usage_line(skew)

