"""Generation with a gate export and any causal LM (docs/method.md section 5): the synthetic population.

For each context x: k ~ pi(x), j ~ Omega_k(x) (exact dense softmax over the exemplar pool, the context's own
record masked out), the prompt is rendered from the export's template, and the LM samples at temperature tau_k
(top-p configurable). Baselines share the machinery and the prompt template (a line whose fields are all empty
is dropped): ``uniform`` (untrained, uniform gate), ``persona`` (random described persona, no exemplar),
``fewshot`` (random exemplar, no persona), ``zerogen`` (context only) and ``attrprompt`` (random attribute
values).

Reproducibility: every random choice of a sample (its persona, exemplar, attribute values and each sampled
token) comes from its own generators, seeded from (seed, sample id). Tokens are drawn by a per-row Gumbel-max
sampler (a logits processor), so a sample does not depend on which other samples share its batch. Output rows
are appended one line per ``write`` and fsync'ed per batch; re-running the same command skips the ids already
written, so an interrupted run resumes and ends with the rows an uninterrupted run would have written.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mop.errors import MopError
from mop.outputs import OutputFile, ShardedOutput
from mop.types import PositiveFloat, PositiveInt, Probability

METHODS = ("mop", "uniform", "persona", "fewshot", "zerogen", "attrprompt", "mop-no-exemplar",
           "mop-random-persona")
USES_PERSONA = {"mop", "uniform", "persona", "mop-no-exemplar", "mop-random-persona"}
USES_EXEMPLAR = {"mop", "uniform", "fewshot", "mop-random-persona"}
# Methods that use the trained gate (and so need the contexts' embeddings and sample at tau_k): MoP and its
# two ablations, persona k ~ pi(x) without an exemplar, and a uniformly random persona with j ~ Omega_k(x).
GATED = {"mop", "mop-no-exemplar", "mop-random-persona"}
# Attribute lists of the attrprompt baseline when no --attributes file is given (written for reviews).
DEFAULT_ATTRIBUTES: dict[str, list[str]] = {
    "style": ["enthusiastic", "sarcastic", "analytical", "witty", "blunt", "poetic", "casual", "formal"],
    "length": ["one short sentence", "one long sentence", "two sentences", "three sentences"],
    "aspect": ["acting", "plot", "direction", "visuals", "music", "pacing", "dialogue", "humour",
               "emotional impact", "originality"],
}
_GATE_STREAM, _LM_STREAM = 0, 1  # independent random streams of one sample


def sample_key(sample_id: str) -> int:
    """A 60-bit integer naming a sample: its random choices depend on its id, not on its position in a run."""
    import hashlib

    return int(hashlib.sha256(sample_id.encode("utf-8")).hexdigest()[:15], 16)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, keys...): distinct keys give independent streams."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), *keys]).generate_state(1, dtype=np.uint64)[0]
               >> np.uint64(1))


# --------------------------------------------------------------------------------------------------- contexts
def needed_fields(config: dict[str, Any]) -> list[str]:
    """Context fields (and ``label``) the export's context and prompt templates use."""
    from mop.data import template_fields
    from mop.prompts import FIXED_FIELDS

    fields = list(template_fields(config["context_template"]))
    fields += [f for f in template_fields(config["prompt_template"]) if f not in FIXED_FIELDS or f == "label"]
    return list(dict.fromkeys(fields))


def read_contexts(path: str | Path, config: dict[str, Any]) -> list:
    """Contexts from a CSV / JSONL / Parquet file: one record per row, with every field the templates use.

    An ``id`` column (unique) names the records; otherwise they are ``c<row>``.
    """
    from mop.data import read_table

    return frame_contexts(read_table(path), config, f"contexts file '{path}'")


def frame_contexts(df, config: dict[str, Any], where: str = "contexts") -> list:
    """:func:`read_contexts` of a table already in memory (a pandas DataFrame; ``where`` names it in
    errors): the records ``mop generate --contexts`` makes of the same rows."""
    from mop.data import Record

    need = needed_fields(config)
    missing = [f for f in need if f not in df.columns]
    if missing:
        raise MopError(f"{where} lacks field(s) {', '.join(repr(m) for m in missing)} used "
                       f"by the export's templates (found columns: {', '.join(map(str, df.columns))})")
    columns = [c for c in dict.fromkeys([*(config.get("context_columns") or []), *need])
               if c != "label" and c in df.columns]
    records, seen = [], set()
    for n, row in enumerate(df.to_dict("records")):
        rid = str(row["id"]).strip() if "id" in df.columns else f"c{n:06d}"
        if not rid or rid in seen:
            raise MopError(f"{where}: {'empty' if not rid else 'duplicate'} id {rid!r} at row {n + 1}")
        seen.add(rid)
        label = str(row["label"]) if "label" in df.columns else None
        records.append(Record(id=rid, response="", context={c: str(row[c]) for c in columns}, label=label))
    return records


def dataset_contexts(config_path: str | Path, split: str, config: dict[str, Any]) -> list:
    """The records of one split of a config's dataset (``data.dataset``), checked against the templates."""
    from mop.data import load_dataset_config, load_population

    population = load_population(load_dataset_config(config_path))
    records = population[split]
    if not records:
        raise MopError(f"split '{split}' of the dataset of '{config_path}' has no records")
    have = set(population.spec.context_columns) | ({"label"} if population.spec.label_column else set())
    missing = [f for f in needed_fields(config) if f not in have]
    if missing:
        raise MopError(f"the dataset of '{config_path}' lacks field(s) {', '.join(repr(m) for m in missing)} "
                       "used by the export's templates "
                       f"(its context fields: {', '.join(sorted(have)) or 'none'})")
    return records


def render_context(config: dict[str, Any], record) -> str:
    """The context text x whose embedding h(x) the gate reads (the export's context template)."""
    from mop.data import render_template

    return render_template(config["context_template"], {**record.context, "label": record.label or ""})


def embed_contexts(export, records: Sequence, embedder):
    """(R, D) float32 context embeddings, after checking the embedder's dimension against the export's."""
    import numpy as np

    export.check_embed_dim(embedder.dim)
    texts = [render_context(export.config, r) for r in records]
    uniq = sorted(set(texts))
    emb = np.asarray(embedder.encode(uniq, desc="embedding contexts"), dtype=np.float32)
    export.check_embed_dim(emb.shape[1])
    pos = {t: i for i, t in enumerate(uniq)}
    return emb[[pos[t] for t in texts]]


def load_attributes(path: str | Path | None) -> dict[str, list[str]]:
    """Attribute name -> values, from a JSON / YAML file (or the built-in movie-review lists)."""
    if path is None:
        return {k: list(v) for k, v in DEFAULT_ATTRIBUTES.items()}
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise MopError(f"attributes file '{path}' does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise MopError(f"attributes file '{path}' is not valid JSON/YAML: "
                       f"{str(err).splitlines()[0]}") from err
    if not isinstance(raw, dict) or not raw:
        raise MopError(f"attributes file '{path}' must map attribute names to lists of values")
    out = {}
    for name, values in raw.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, (str, int, float))
                                                                 for v in values):
            raise MopError(f"attributes file '{path}': '{name}' must be a non-empty list of values")
        out[str(name)] = [str(v) for v in values]
    return out


# ------------------------------------------------------------------------------------------- mixture sampling
def check_gate_temperature(gate_temperature: float, method: str) -> None:
    if not gate_temperature > 0 or gate_temperature == float("inf"):
        raise MopError(f"gate_temperature must be positive and finite, got {gate_temperature}")
    if gate_temperature != 1.0 and method not in GATED:
        raise MopError(f"--gate-temperature tempers the trained gate; method '{method}' does not use it "
                       f"(only {', '.join(sorted(GATED))} do)")


@dataclass
class Component:
    """The sampled mixture component of one sample: persona k, exemplar j (pool positions), temperature."""

    persona: int | None
    exemplar: int | None
    temperature: float
    attributes: dict[str, str] | None = None


class ComponentSampler:
    """Draws (k, j, tau) per sample: k ~ pi(x), j ~ Omega_k(x) for ``mop``; uniform choices for the baselines.

    Temperatures: tau_k for the gated methods (``mop`` and its ablations); the mean of the export's tau_k for
    every baseline; ``temperature``, when given, replaces both.

    ``gate_temperature`` T flattens (T > 1) or sharpens (T < 1) the trained gate's weights before they are
    sampled: pi(x)^(1/T) and Omega_k(x)^(1/T), each renormalised (its logits divided by T). T = 1 is the
    trained gate; T -> infinity tends to the uniform gate. Only the gated methods have a gate to temper.

    ``match_label``: every method that draws an exemplar (the gated ones and the uniform baselines alike)
    draws it among the exemplars with the context's label (``labels`` of :meth:`sample`; a context without a
    label, or an exemplar without one, is not restricted): Omega_k(x), or the uniform draw, renormalised over
    them.
    """

    def __init__(self, export, method: str = "mop", temperature: float | None = None,
                 attributes: dict[str, list[str]] | None = None, gate_temperature: float = 1.0,
                 match_label: bool = False):
        if method not in METHODS:
            raise MopError(f"unknown method '{method}', expected one of {', '.join(METHODS)}")
        if temperature is not None and not temperature > 0:
            raise MopError(f"temperature must be positive, got {temperature}")
        check_gate_temperature(gate_temperature, method)
        self.export, self.method, self.temperature = export, method, temperature
        self.gate_temperature = float(gate_temperature)
        self.match_label = bool(match_label)
        self._other_label: dict[str, list[int]] = {}  # label -> pool positions of the other labels (cached)
        self.attributes = (attributes or load_attributes(None)) if method == "attrprompt" else None
        self._pool = export.pool_emb  # (N, D) h(e_j)
        self._pos_of: dict[str, list[int]] = {}
        for j, e in enumerate(export.exemplars):
            self._pos_of.setdefault(e.id, []).append(j)
        self.tau = export.tau.float()  # (K,)
        self.mean_tau = float(self.tau.mean())

    def log_pi(self, hx):
        """(B, D) -> (B, K) log persona weights (uniform for the baselines)."""
        import torch

        hx = torch.as_tensor(hx, dtype=torch.float32)
        K = self.export.num_personas
        if self.method not in ("mop", "mop-no-exemplar"):
            out = torch.full((hx.shape[0], K), -float("inf"))
            # the persona baseline draws a described persona (the persona-free component would make it
            # zerogen); the uniform gate and the random-persona ablation draw any component
            keep = self.export.described_personas if self.method == "persona" else list(range(K))
            out[:, keep] = -float(torch.log(torch.tensor(float(len(keep)))))
            return out
        with torch.no_grad():
            return self._tempered(self.export.gate.log_pi(hx, self.export.persona_emb))

    def _tempered(self, log_w):
        """Log weights over the last dim divided by the gate temperature and renormalised (-inf stays)."""
        import torch

        if self.gate_temperature == 1.0:
            return log_w
        return torch.log_softmax(log_w / self.gate_temperature, dim=-1)

    def log_omega(self, hx, persona, record_ids: Sequence[str | None],
                  labels: Sequence[str | None] | None = None):
        """(B, D), (B,) chosen k -> (B, N) log Omega_k(x) over the pool, the record's own id masked out, and
        with ``match_label`` the exemplars of another label than ``labels[b]`` (uniform over the pool for the
        methods that do not use the gate's exemplar weights)."""
        import torch

        from mop.gating import Gate

        N, B = self._pool.shape[0], len(record_ids)
        mask = torch.zeros(B, N, dtype=torch.bool)
        for b, rid in enumerate(record_ids):
            if rid is not None and rid in self._pos_of:
                mask[b, self._pos_of[rid]] = True
        if self.match_label and labels is not None:
            for b, label in enumerate(labels):
                mask[b, self._other_label_positions(label)] = True
        if bool(mask.all(-1).any()):
            b = int(mask.all(-1).nonzero()[0])
            why = (f"no exemplar of the pool has its label '{labels[b]}'"
                   if self.match_label and labels is not None and labels[b] is not None
                   else "the pool holds only the context's own record")
            raise MopError(f"a context has no usable exemplar ({why})")
        with torch.no_grad():
            if self.method in ("mop", "mop-random-persona"):
                q = self.export.gate.queries(torch.as_tensor(hx, dtype=torch.float32),
                                             self.export.persona_emb,
                                             torch.as_tensor(persona)[:, None])  # (B, 1, D)
                return self._tempered(Gate.omega(q, self._pool, mask)[:, 0])
            q = torch.zeros(B, 1, self._pool.shape[1])
            return Gate.omega(q, self._pool, mask)[:, 0]

    def _other_label_positions(self, label: str | None) -> list[int]:
        """Pool positions whose label is not ``label`` (none for an unlabelled context), computed once per
        label rather than per batch."""
        from mop.datamodule import other_label_positions

        if label not in self._other_label:
            self._other_label[label] = other_label_positions([label], self.export.exemplars)[0]
        return self._other_label[label]

    def sample(self, hx, record_ids: Sequence[str | None], keys: Sequence[int],
               seed: int, labels: Sequence[str | None] | None = None) -> list[Component]:
        """One component per sample; ``keys[b]`` (see :func:`sample_key`) and ``seed`` fix its random
        choices; ``labels``: the contexts' labels (used with ``match_label``)."""
        import torch

        B = len(keys)
        gens = [torch.Generator().manual_seed(derive_seed(seed, int(n), _GATE_STREAM)) for n in keys]
        persona = exemplar = None
        if self.method in USES_PERSONA:
            if hx is None:
                hx = torch.zeros(B, self.export.embed_dim)
            pi = self.log_pi(hx).exp()  # (B, K)
            persona = torch.stack([torch.multinomial(pi[b], 1, generator=gens[b])[0] for b in range(B)])
        if self.method in USES_EXEMPLAR:
            k = persona if persona is not None else torch.zeros(B, dtype=torch.long)
            omega = self.log_omega(hx, k, record_ids, labels).exp()  # (B, N)
            exemplar = torch.stack([torch.multinomial(omega[b], 1, generator=gens[b])[0] for b in range(B)])
        out = []
        for b in range(B):
            k = int(persona[b]) if persona is not None else None
            tau = self.temperature or (float(self.tau[k]) if self.method in GATED else self.mean_tau)
            attrs = None
            if self.attributes is not None:
                attrs = {name: values[int(torch.randint(len(values), (1,), generator=gens[b]))]
                         for name, values in self.attributes.items()}
            out.append(Component(k, int(exemplar[b]) if exemplar is not None else None, tau, attrs))
        return out


def build_prompt(export, record, component: Component) -> str:
    """The export's prompt for one sample; persona / exemplar left out where the method has none."""
    from mop.prompts import render_prompt

    persona = export.persona_texts[component.persona] if component.persona is not None else None
    exemplar = export.exemplars[component.exemplar] if component.exemplar is not None else None
    prompt = render_prompt(export.gate_config.prompt_template, export.gate_config.context_template, record,
                           persona, exemplar)
    if component.attributes:
        line = "Attributes: " + ", ".join(f"{k}={v}" for k, v in component.attributes.items())
        lines = prompt.split("\n")  # before the answer cue ("Review:"), the prompt's last line
        prompt = "\n".join([*lines[:-1], line, lines[-1]] if len(lines) > 1 else [*lines, line])
    return prompt


# ------------------------------------------------------------------------------------------------ LM sampling
def top_p_filter(scores, top_p: float):
    """Nucleus filtering of (B, V) scores: keep each row's smallest set of tokens with mass >= top_p."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(-1)
    drop = probs.cumsum(-1) - probs >= top_p  # the mass of the better tokens; the first token always stays
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def gumbel_pick(scores, generators):
    """One draw per row from softmax(scores) (B, V), row b with its own ``generators[b]``: Gumbel-max,
    argmax(log softmax(scores) + Gumbel noise). A row's draws depend only on its generator, not on its batch.

    NB: torch's CPU generator (mt19937) keeps 32 bits of a seed, CUDA's (Philox) 64: on CPU two samples of a
    run share a noise stream with probability ~n^2 / 2^33 (and it matters only for the same prompt).
    """
    import torch

    V = scores.shape[-1]
    u = torch.stack([torch.rand(V, generator=g, device=scores.device) for g in generators])  # (B, V)
    return (torch.log_softmax(scores.float(), dim=-1) - torch.log(-torch.log(u))).argmax(dim=-1)


def find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the first stop string starts in ``text``, leading whitespace aside (a response may begin with a
    newline), or None."""
    body = len(text) - len(text.lstrip())
    hits = [i for i in (text.find(s, body) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def stop_token_ids(model, tokenizer, use_chat_template: bool) -> list[int]:
    """EOS of the tokenizer and of the model's generation config, plus the chat end-of-turn token."""
    ids = [tokenizer.eos_token_id]
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += list(cfg_eos) if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]
    if use_chat_template:
        from mop.prompts import end_of_turn_id

        ids.append(end_of_turn_id(tokenizer))
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def prefill(model, prompt_ids: list[list[int]], max_new_tokens: int, share_prefixes: bool = True,
            min_shared_tokens: int = 16, cache_kw: str | None = None):
    """Run a batch of prompts (token ids, unpadded) through the LM: (logits at each prompt's last token (B, V)
    float32, the key/value cache, the attention mask (B, width)).

    With ``share_prefixes``, a prompt's longest prefix shared with another prompt of the batch (at least
    ``min_shared_tokens``, the prompt's last token excluded) runs once for all the prompts that share it: each
    distinct shared prefix is run once (one batch), its keys and values are copied into the rows that use it,
    and every row then runs only its own remaining tokens. Row layout: [padding][prefix][padding][rest], the
    attention mask hiding the padding and the position ids the true positions, so every row attends to what
    it would attend to alone. Not used where a sliding window could then hide a real key (the padding widens
    index distances): beyond the model's ``sliding_window`` the plain left-padded batch runs instead, and so
    it does where sharing would not run fewer positions (padding included) than the plain batch.
    ``cache_kw``: the name the model's forward takes the cache under (:func:`mop.scoring.cache_kwarg`, looked
    up when not given).
    """
    import torch
    from transformers import DynamicCache

    from mop.scoring import cache_kwarg

    device = model.get_input_embeddings().weight.device
    kw = cache_kw or cache_kwarg(model)
    n = len(prompt_ids)
    shared = [0] * n
    if share_prefixes and n > 1:
        order = sorted(range(n), key=lambda r: prompt_ids[r])
        # the longest prefix a row shares with another is the one it shares with a neighbour in sorted order
        for a, b in zip(order, order[1:]):
            p, q = prompt_ids[a], prompt_ids[b]
            common = next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), min(len(p), len(q)))
            shared[a], shared[b] = max(shared[a], common), max(shared[b], common)
        shared = [min(d, len(p) - 1) if d >= min_shared_tokens else 0 for d, p in zip(shared, prompt_ids)]
    rest = [len(p) - d for p, d in zip(prompt_ids, shared)]
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    keys = sorted({tuple(p[:d]) for p, d in zip(prompt_ids, shared) if d})
    # positions run, padding included: the shared prefixes once + every row's rest, against the plain batch
    cost = len(keys) * max(shared) + n * max(rest)
    too_wide = window and max(shared) + max(rest) + max_new_tokens > window
    if too_wide or cost >= n * max(map(len, prompt_ids)):
        shared = [0] * n
    if not any(shared):
        ids, mask = _left_padded(prompt_ids, device)
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    **{kw: cache}, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float(), cache, mask
    key_ids, key_mask = _left_padded([list(k) for k in keys], device)
    key_cache = DynamicCache(config=model.config)
    model(input_ids=key_ids, attention_mask=key_mask, position_ids=(key_mask.cumsum(-1) - 1).clamp(min=0),
          **{kw: key_cache}, use_cache=True, logits_to_keep=1)
    of_key = {k: i for i, k in enumerate(keys)}
    wp, ws, width = max(shared), max(rest), key_ids.shape[1]
    layers = []
    for layer in key_cache.layers:
        k_all, v_all = layer.keys, layer.values  # (n_keys, H, width, D)
        k_rows = k_all.new_zeros((n, k_all.shape[1], wp, k_all.shape[3]))
        v_rows = v_all.new_zeros((n, v_all.shape[1], wp, v_all.shape[3]))
        for r, (p, d) in enumerate(zip(prompt_ids, shared)):
            if d:
                i = of_key[tuple(p[:d])]
                k_rows[r, :, wp - d:] = k_all[i, :, width - d:]
                v_rows[r, :, wp - d:] = v_all[i, :, width - d:]
        layers.append((k_rows, v_rows))
    cache = DynamicCache(ddp_cache_data=layers, config=model.config)
    ids = torch.zeros((n, ws), dtype=torch.long)
    mask = torch.zeros((n, wp + ws), dtype=torch.long)
    positions = torch.zeros((n, ws), dtype=torch.long)
    for r, (p, d, s) in enumerate(zip(prompt_ids, shared, rest)):
        ids[r, ws - s:] = torch.tensor(p[d:], dtype=torch.long)
        mask[r, wp - d:wp] = 1
        mask[r, wp + ws - s:] = 1
        positions[r, ws - s:] = torch.arange(d, d + s)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{kw: cache}, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1, :].float(), cache, mask


def _left_padded(rows: list[list[int]], device):
    """(ids, attention mask) of a left-padded batch of token-id lists (padding id 0, masked)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def sample_continuations(model, tokenizer, prompts: Sequence[str], temperatures: Sequence[float],
                         seeds: Sequence[int], *, max_new_tokens: int = 96, top_p: float = 1.0,
                         use_chat_template: bool = False, stop: Sequence[str] = ("\n",),
                         min_new_tokens: int = 0, share_prefixes: bool = True) -> list[list[int]]:
    """Sample one continuation per prompt (a left-padded batch, row b at temperature ``temperatures[b]``).

    Returns the new token ids of each row, up to (excluding) its first end token; a row that produced a stop
    string (leading whitespace aside) ends there and keeps the token that completed it (:func:`clean_text`
    cuts the text). A row that has ended leaves the batch: its keys and values are dropped from the cache, so
    the decode steps that follow cost only the rows still running. The prompts' shared token prefixes run once
    (:func:`prefill`, ``share_prefixes``). ``min_new_tokens`` masks the end tokens
    until that many were generated (with ``stop=()``: equal lengths, for benchmarks). Row b's tokens depend
    only on its prompt, temperature and seed (``seeds[b]`` seeds its own generator), never on the rest of the
    batch.
    """
    import torch

    if not 0 < top_p <= 1:
        raise MopError(f"top_p must be in (0, 1], got {top_p}")
    if any(not t > 0 for t in temperatures):
        raise MopError(f"temperatures must be positive, got {min(temperatures)}")
    ends = stop_token_ids(model, tokenizer, use_chat_template)
    if not ends:
        raise MopError("the tokenizer has no end-of-sequence token")
    if use_chat_template:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts]
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(list(prompts))["input_ids"]
    device = model.get_input_embeddings().weight.device
    rows = list(range(len(prompts)))  # the batch position -> the prompt it is
    tau = torch.as_tensor(temperatures, dtype=torch.float32, device=device)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    new: list[list[int]] = [[] for _ in prompts]
    end_ids = torch.tensor(ends, device=device)
    from mop.scoring import cache_kwarg

    kw = cache_kwarg(model)
    with torch.inference_mode():
        logits, cache, mask = prefill(model, [list(p) for p in prompt_ids], max_new_tokens,
                                      share_prefixes=share_prefixes, cache_kw=kw)
        ids = positions = None  # the next step's input: set at the end of each step
        for step in range(max_new_tokens):
            if step:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{kw: cache},
                               use_cache=True, logits_to_keep=1).logits[:, -1, :].float()  # (b, V)
            if step < min_new_tokens:
                logits[:, end_ids] = float("-inf")
            scores = logits / tau[rows][:, None]
            if top_p < 1:
                scores = top_p_filter(scores, top_p)
            picks = gumbel_pick(scores, [gens[r] for r in rows]).tolist()
            keep = []
            for b, (r, tok) in enumerate(zip(rows, picks)):
                if tok in ends:
                    continue
                new[r].append(tok)
                if stop and find_stop(tokenizer.decode(new[r], skip_special_tokens=True), stop) is not None:
                    continue
                keep.append(b)
            if not keep:
                break
            if len(keep) < len(rows):  # finished rows leave the batch (and the cache)
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask = mask[index]
                rows = [rows[b] for b in keep]
            ids = torch.tensor([[new[r][-1]] for r in rows], device=device)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            positions = mask.sum(-1, keepdim=True) - 1
    return new


def default_batch_size(model) -> int:
    """Rows per LM batch when none is given: 32 on a CPU, 128 on a GPU (rows that end leave the batch, so a
    large batch costs no more decode steps than its longest row; see benchmarks/generation_speed.py)."""
    return 32 if model.get_input_embeddings().weight.device.type == "cpu" else 128


def default_max_new_tokens(export, tokenizer) -> int:
    """1.25 x the longest training response (an exemplar of the export) in this tokenizer's tokens, >= 16."""
    lengths = [len(ids) for ids in tokenizer([" " + e.response for e in export.exemplars],
                                             add_special_tokens=False)["input_ids"]]
    return max(16, int(1.25 * max(lengths, default=64)) + 1)


def default_stop(export, multiline_share: float = 0.1) -> list[str]:
    """The stop strings when none are given: a newline, unless the population writes texts of several lines
    (at least ``multiline_share`` of the training responses, the export's exemplars, hold a newline; a stray
    one in a few reviews does not count)."""
    responses = [e.response.strip() for e in export.exemplars]
    multiline = sum("\n" in r for r in responses)
    return [] if responses and multiline >= multiline_share * len(responses) else ["\n"]


def clean_text(text: str, stop: Sequence[str] = ("\n",)) -> str:
    """Strip the response and cut it at its first stop string (leading whitespace aside)."""
    cut = find_stop(text, stop)
    return (text[:cut] if cut is not None else text).strip()


# ------------------------------------------------------------------------------------------------- main loop
def sample_plan(records: Sequence, num_samples: int,
                shuffle_seed: int | None = None) -> list[tuple[int, str]]:
    """(record position, sample id) of each sample: the records are cycled (in a seeded random order when
    ``shuffle_seed`` is given); the id is ``<record id>-<cycle>``, so ids are stable when N grows."""
    import numpy as np

    R = len(records)
    order = (list(range(R)) if shuffle_seed is None
             else np.random.default_rng(shuffle_seed).permutation(R).tolist())
    return [(order[n % R], f"{records[order[n % R]].id}-{n // R}") for n in range(num_samples)]


@dataclass
class Sampling:
    """How a population is sampled (the sampling options of ``mop generate``).

    Also the settings of :func:`generate_population`.

    Args:
        num_samples: rows to generate; the contexts are cycled, sample ids are <record id>-<repeat>.
        method: mop (trained gate), uniform (untrained uniform gate), persona (random persona), fewshot
            (random exemplar), zerogen (context only), attrprompt (random attribute values); ablations:
            mop-no-exemplar (k ~ pi(x), no exemplar), mop-random-persona (uniform k, j ~ Omega_k(x)).
        seed: seed of every random choice; same seed, same rows.
        shuffle: visit the contexts in a seeded random order (when num_samples is below their number, a sample
            of all of them rather than the first ones).
        batch_size: prompts per LM batch (left-padded; rows that end leave the batch); default: 32 on a CPU,
            128 on a GPU.
        max_new_tokens: tokens generated at most per sample; default: from the export's exemplars, 1.25 x the
            longest exemplar response in the LM's tokens (+ 1), at least 16.
        top_p: nucleus sampling mass (1.0: off).
        temperature: one sampling temperature for every row (default: tau_k of the sampled persona for the
            gated methods, the mean tau of the export for the baselines).
        gate_temperature: temper the trained gate before sampling from it (gated methods only): pi and Omega
            become proportional to pi^(1/T) and Omega^(1/T). 1: the trained gate; above 1 flatter (more
            personas and exemplars used; towards the uniform gate), below 1 sharper.
        exemplar_label: which exemplars a context may be given, for every method that draws one: match (only
            those with the context's label, Omega renormalised over them), any (the whole pool) or auto (as
            the gate was trained: match for an export trained with data.mask_other_label).
        stop: stop strings: a sample ends where it first writes one, and the text is cut there (default: a
            newline, unless a tenth or more of the export's exemplar responses span several lines; ``--stop``
            with no value: none).
        chat_template: wrap prompts in the tokenizer's chat template (auto: as the export was trained).
    """

    num_samples: PositiveInt
    method: Literal[METHODS] = "mop"
    seed: int = 0
    shuffle: bool = False
    batch_size: PositiveInt | None = None
    max_new_tokens: PositiveInt | None = None
    top_p: Probability = 1.0
    temperature: PositiveFloat | None = None
    gate_temperature: PositiveFloat = 1.0
    exemplar_label: Literal["auto", "match", "any"] = "auto"
    stop: list[str] | None = None
    chat_template: Literal["auto", "on", "off"] = "auto"

    def check(self) -> None:
        """The checks the command line does while parsing, for settings built in Python."""
        if self.num_samples < 1 or (self.batch_size or 1) < 1 or (self.max_new_tokens or 1) < 1:
            raise MopError("num_samples, batch_size and max_new_tokens must be >= 1, got "
                           f"{self.num_samples}, {self.batch_size}, {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise MopError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature is not None and not self.temperature > 0:
            raise MopError(f"temperature must be positive, got {self.temperature}")
        if self.method not in METHODS:
            raise MopError(f"unknown method '{self.method}', expected one of {', '.join(METHODS)}")
        check_gate_temperature(self.gate_temperature, self.method)
        if self.exemplar_label not in ("auto", "match", "any"):
            raise MopError(f"exemplar_label must be auto, match or any, got {self.exemplar_label!r}")
        if self.chat_template not in ("auto", "on", "off"):
            raise MopError(f"chat_template must be auto, on or off, got {self.chat_template!r}")


def run_identity(model_name: str, adapter: str | None, sampling: Sampling,
                 export_config: dict[str, Any], engine: str = "hf") -> dict[str, Any]:
    """The settings every row of one output file shares (mop.outputs.IDENTITY), written into each row.

    ``exemplar_label`` auto is resolved with the export's ``mask_other_label``; ``gate_sha`` is a digest of
    the export's file checksums (another gate, personas or pool: another file) and ``prompt_sha`` of the
    prompt template in use (``export_config`` after any ``--prompt-template``); the sampling options are as
    given (None: the default); ``engine`` the generation engine (mop.engines: an output is resumed only with
    the engine that wrote it)."""
    label = sampling.exemplar_label
    if label == "auto":
        label = "match" if export_config.get("mask_other_label", False) else "any"
    return {"model": model_name, "adapter": adapter, "method": sampling.method, "seed": sampling.seed,
            "gate_temperature": sampling.gate_temperature, "exemplar_label": label, "top_p": sampling.top_p,
            "gate_sha": _digest(export_config.get("checksums") or {}),
            "prompt_sha": _digest(export_config.get("prompt_template")),
            "sampling_temperature": sampling.temperature, "max_new_tokens": sampling.max_new_tokens,
            "stop": None if sampling.stop is None else list(sampling.stop), "engine": engine}


def _digest(value: Any) -> str:
    """12 hex digits of the sha256 of ``value`` as sorted JSON."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


class SingleProcess:
    """The rank interface of :func:`generate_population` for a run of one process (Fabric has the same)."""

    global_rank, world_size = 0, 1

    def barrier(self, name: str | None = None) -> None:
        pass


def shard_batches(num_samples: int, batch_size: int, sids: Sequence[str], done: set[str], rank: int,
                  world_size: int) -> list[list[int]]:
    """This rank's batches (lists of sample positions): the run's batches of ``batch_size`` consecutive
    samples that still miss a row, dealt round-robin to the ranks. Every rank computes the same list from the
    same ``done`` set, so the shares are disjoint and cover every missing sample; a batch is the same whatever
    the number of ranks, so a row is the same as in a one-process run."""
    batches = [list(range(s, min(num_samples, s + batch_size))) for s in range(0, num_samples, batch_size)]
    pending = [b for b in batches if any(sids[n] not in done for n in b)]
    return pending[rank::world_size]


def generate_population(export, model, tokenizer, records: Sequence, output: str | Path,
                        sampling: Sampling, *, context_emb=None, model_name: str = "model",
                        adapter: str | None = None, attributes: dict[str, list[str]] | None = None,
                        progress: bool = True, dist=None) -> dict[str, Any]:
    """Write ``sampling.num_samples`` generated rows for ``records`` (cycled) into ``output``, resuming if it
    exists.

    ``context_emb`` (R, D) are the records' context embeddings (needed by the gated methods only), or a
    function of a list of record positions returning their embeddings (each rank then embeds only the
    contexts of its share). A sample's content depends only on (seed, its id).

    ``dist``: this process's rank (``global_rank``, ``world_size``, ``barrier()``; a ``lightning.Fabric``
    does): each rank generates its share of the missing samples (:func:`shard_batches`) into its own part
    file, and rank 0 shows one progress bar for all ranks, waits for them and merges every file into
    ``output`` (mop.outputs). Returns counts (rank 0: of every rank).

    ``model``: a generation engine (mop.engines, e.g. vLLM), or a transformers model, run by the hf engine.
    """
    from tqdm.auto import tqdm

    from mop.engines import as_engine

    sampling.check()
    engine = as_engine(model, tokenizer)
    tokenizer = engine.tokenizer
    dist = dist or SingleProcess()
    rank, world = dist.global_rank, dist.world_size
    method, seed, num_samples = sampling.method, sampling.seed, sampling.num_samples
    if not records:
        raise MopError("no contexts to generate for")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise MopError("context record ids must be unique")
    if method in GATED and context_emb is None:
        raise MopError(f"method '{method}' needs the contexts' embeddings")
    chat = {"auto": export.gate_config.use_chat_template, "on": True,
            "off": False}[sampling.chat_template]
    if chat and not getattr(tokenizer, "chat_template", None):
        raise MopError("the export's prompts use a chat template but this tokenizer has none "
                       "(a base model?); pass --chat-template off")
    identity = run_identity(model_name, adapter, sampling, export.config, engine.name)
    if identity["exemplar_label"] == "match" and method in USES_EXEMPLAR \
            and all(r.label is None for r in records):
        raise MopError("exemplar_label match needs the contexts' labels, and these contexts have none")
    sampler = ComponentSampler(export, method, sampling.temperature, attributes, sampling.gate_temperature,
                               match_label=identity["exemplar_label"] == "match")
    stop = default_stop(export) if sampling.stop is None else list(sampling.stop)
    engine_version = engine.version
    option_sampler = None
    if export.config.get("options"):  # a survey: each prompt's options are scored and one drawn (mop.survey)
        from mop.survey import OptionSampler

        if engine.model is None:
            raise MopError(f"a closed-ended export scores its options with the hf engine, not {engine.name}")
        option_sampler = OptionSampler(engine.model, tokenizer, export.config["options"], chat)
    out = ShardedOutput(output, identity, rank, world)
    if out.dropped_partial and rank == 0:
        print(f"[mop] dropped an incomplete last line of {out.path} (an interrupted run)", file=sys.stderr)
    dist.barrier("mop-generate-read")  # every rank has read what is done before any rank writes
    plan = sample_plan(records, num_samples, seed if sampling.shuffle else None)
    sids = [sid for _, sid in plan]
    todo = [n for n in range(num_samples) if sids[n] not in out.done]
    batch_size = sampling.batch_size or engine.default_batch_size()
    max_new_tokens = sampling.max_new_tokens or default_max_new_tokens(export, tokenizer)
    mine = shard_batches(num_samples, batch_size, sids, out.done, rank, world)
    others = out.progress_watcher() if rank == 0 and world > 1 else None
    dist.barrier("mop-generate-start")
    if context_emb is not None:  # this rank's contexts, embedded (or taken from the array) once
        embed = context_emb if callable(context_emb) else context_emb.__getitem__
        need = sorted({plan[n][0] for batch in mine for n in batch})
        emb, at = embed(need), {p: i for i, p in enumerate(need)}

        def contexts_of(positions):
            return emb[[at[p] for p in positions]]
    written = empty = 0
    others_seen = [0, 0]  # rows and empty texts of the other ranks (rank 0 only)
    bar = tqdm(total=len(todo), unit="sample", disable=not progress or rank != 0,
               desc=f"generating ({method})" + (f", {world} ranks" if world > 1 else ""))

    def count_others() -> bool:
        rows, empties, finished = others()
        bar.update(rows - others_seen[0])
        others_seen[:] = [rows, empties]
        return finished

    for batch in mine:
        missing = [n for n in batch if sids[n] not in out.done]
        # The whole batch is generated even when part of it exists, so its rows equal an uninterrupted run's.
        recs = [records[plan[n][0]] for n in batch]
        hx = contexts_of([plan[n][0] for n in batch]) if context_emb is not None else None
        keys = [sample_key(sids[n]) for n in batch]
        comps = sampler.sample(hx, [r.id for r in recs], keys, seed, labels=[r.label for r in recs])
        prompts = [build_prompt(export, r, c) for r, c in zip(recs, comps)]
        if option_sampler is not None:
            answers = option_sampler.sample(prompts, [r.label for r in recs], [c.temperature for c in comps],
                                            [derive_seed(seed, key, _LM_STREAM) for key in keys])
        else:
            new_ids = engine.generate(
                prompts, [c.temperature for c in comps],
                [derive_seed(seed, key, _LM_STREAM) for key in keys], max_new_tokens=max_new_tokens,
                top_p=sampling.top_p, use_chat_template=chat, stop=stop)
            answers = [{"text": clean_text(tokenizer.decode(ids, skip_special_tokens=True), stop)}
                       for ids in new_ids]
        rows = []
        for n, rec, comp, answer in zip(batch, recs, comps, answers):
            if n not in missing:
                continue
            text = answer["text"]
            empty += not text
            rows.append({
                "id": sids[n], "record_id": rec.id, "context": rec.context, "label": rec.label,
                "persona_id": export.persona_ids[comp.persona] if comp.persona is not None else None,
                "persona": export.persona_texts[comp.persona] if comp.persona is not None else None,
                "exemplar_id": export.exemplars[comp.exemplar].id if comp.exemplar is not None else None,
                "attributes": comp.attributes, "temperature": round(float(comp.temperature), 6), **identity,
                "engine_version": engine_version,
                **answer,  # text; for a survey also option and option_probs
            })
        out.append(rows)
        written += len(rows)
        bar.update(len(rows))
        if others is not None:
            count_others()
    out.finish()
    while others is not None and not count_others():  # rank 0: wait for the other ranks, counting their rows
        time.sleep(0.5)
    if rank == 0 and out.needs_merge:
        out.merge(sids)
    bar.close()
    return {"output": str(out.path), "written": written + others_seen[0],
            "skipped": num_samples - len(todo), "empty": empty + others_seen[1]}


# ---------------------------------------------------------------------------------------------- command
def _devices_arg(devices: int | str):
    """--devices as Lightning takes it: an int, "auto", or a list of ids ("0,1" or "[0, 1]")."""
    if isinstance(devices, int) or devices == "auto":
        return devices
    text = str(devices).strip().strip("[]")
    try:
        return int(text) if "," not in text else [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise MopError(f"--devices: expected a number, a list of device ids or auto, got {devices!r}"
                       ) from None


def generate_command(
    gating: str,
    model: str,
    output: str,
    sampling: Sampling,
    contexts: str | None = None,
    config: str | None = None,
    split: Literal["train", "val", "test"] = "test",
    adapter: str | None = None,
    attributes: str | None = None,
    prompt_template: str | None = None,
    embedder: str | None = None,
    device: str = "auto",
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto",
    devices: int | str = 1,
    num_nodes: PositiveInt = 1,
    strategy: str = "auto",
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    engine: Literal["auto", "hf", "vllm"] = "auto",
    progress: bool = True,
) -> int:
    """Generate a synthetic population with a gate export and any causal LM.

    For each context, sample a persona and an exemplar from the trained gate, render the prompt and sample the
    LM at the persona's temperature. Any causal LM can be used (the gate is LM-free). Rows are JSONL;
    re-running the same command resumes. The contexts come from --contexts or from a split of a config's
    dataset (-c).

    Args:
        gating: the gate export directory (written by mop train or mop export).
        model: the causal LM: a bundled name (smollm2-135m, gemma3-270m), a local folder or a hub id.
        output: the JSONL output; its directory must exist; an existing file is resumed when its rows were
            made with the same settings (model, adapter, method, seed, export, prompt and sampling options).
        contexts: a CSV / JSONL / Parquet of contexts: every field the export's templates use (e.g. movie,
            label) and optionally a unique id column.
        config: a train config (its data.dataset section) or a dataset YAML, whose --split gives the contexts.
        split: the split of the config's dataset to use.
        adapter: a PEFT adapter folder attached to the model.
        attributes: attrprompt: a JSON/YAML file mapping attribute -> list of values (default: style, length
            and aspect lists for movie reviews).
        prompt_template: a prompt template to use instead of the export's, for every method alike (e.g. one
            that suits a base LM the gate is transferred to; fields as in training: persona, exemplar[...],
            exemplar_response and the context columns).
        embedder: the sentence embedder for the contexts (default: the export's; its dimension must match).
        device: one process: auto, cpu, cuda, cuda:N.
        accelerator: the Lightning accelerator of the ranks (auto, cpu, gpu, cuda, mps).
        devices: processes per node, each with its own LM replica: a number, a list of device ids or
            "auto"; above 1 (or with --num-nodes) the run is sharded with Lightning Fabric, each rank
            writing a disjoint share of the samples, merged into one --output at the end (docs/cli.md,
            "Several devices and nodes").
        num_nodes: nodes of a multi-node run (e.g. under SLURM: srun starts the ranks).
        strategy: the Lightning strategy of a sharded run (auto: ddp; ddp_spawn also works).
        dtype: the LM dtype (default: the checkpoint's).
        engine: the generation engine: hf (mop's decode loop on transformers), vllm (vLLM, an extra:
            docs/cli.md, "Engines") or auto (vllm on a CUDA device where it is installed, else hf); an output
            is resumed only with the engine that wrote it.
        progress: show a progress bar.
    """
    from mop.export import read_export_config

    sampling.check()
    if (contexts is None) == (config is None):
        raise MopError("pass exactly one of --contexts FILE and -c/--config CONFIG "
                       "(the contexts to generate for)")
    if attributes and sampling.method != "attrprompt":
        raise MopError("--attributes is only used by --method attrprompt")
    attribute_lists = load_attributes(attributes) if sampling.method == "attrprompt" else None
    # Every input is checked before anything heavy is loaded: the output, the model paths, the export's
    # files, the contexts and the embedder's dimension.
    from mop.assets import check_model_path
    from mop.export import check_embed_dim, check_export_files

    export_config = read_export_config(gating)
    if prompt_template is not None:  # before the contexts are read: it decides the fields they need
        from mop.prompts import validate_prompt_template

        validate_prompt_template(prompt_template, list(export_config.get("context_columns") or []))
        export_config = {**export_config, "prompt_template": prompt_template}
    from mop.engines import load_engine, resolve_engine

    engine = resolve_engine(engine, device, accelerator)
    identity = run_identity(model, adapter, sampling, export_config, engine)
    OutputFile(output, identity)  # a missing directory or another run's output fails before any loading
    check_model_path(model, "model")
    if adapter and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise MopError(f"adapter '{adapter}' has no adapter_config.json: not a PEFT adapter folder")
    check_export_files(gating, export_config)
    records = read_contexts(contexts, export_config) if contexts else dataset_contexts(config, split,
                                                                                       export_config)
    context_embedder = None
    if sampling.method in GATED:
        from mop.embed import Embedder

        check_model_path(embedder or str(export_config["embedder"]), "embedder", role="embedder")
        context_embedder = Embedder(embedder or str(export_config["embedder"]))
        check_embed_dim(export_config, context_embedder.dim, f"gate export '{gating}'")
    from mop.export import GateExport

    export = GateExport.from_pretrained(gating)
    if prompt_template is not None:
        export.config = {**export.config, "prompt_template": prompt_template}

    import torch

    from mop.assets import load_lm

    fabric = None
    if str(devices) not in ("1", "[1]") or num_nodes > 1:
        if device != "auto":
            raise MopError("--device picks the device of a one-process run; with --devices / --num-nodes "
                           "use --accelerator (and a list of --devices ids)")
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator=accelerator, devices=_devices_arg(devices), num_nodes=num_nodes,
                        strategy=strategy)
        fabric.launch()  # the ddp launcher starts this same command once per further local rank
        device = str(fabric.device)
        if fabric.device.type == "cpu":  # ranks on one machine share its cores instead of oversubscribing
            local = max(1, fabric.world_size // num_nodes)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    elif device == "auto":
        device = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}.get(
            accelerator, "cuda" if torch.cuda.is_available() else "cpu")
    context_emb = None
    if context_embedder is not None:
        context_embedder.device = device

        def context_emb(positions):
            return embed_contexts(export, [records[p] for p in positions], context_embedder)
    if engine == "hf":
        lm, tokenizer = load_lm(model, dtype=dtype, device=device, adapter=adapter)
    else:
        lm = load_engine(engine, model, dtype=dtype, device=device, adapter=adapter)
        tokenizer = lm.tokenizer
    summary = generate_population(export, lm, tokenizer, records, output, sampling, context_emb=context_emb,
                                  model_name=model, adapter=adapter, attributes=attribute_lists,
                                  progress=progress, dist=fabric)
    if fabric is not None and fabric.global_rank != 0:
        return 0
    print(f"wrote {summary['written']} row(s) to {summary['output']} ({summary['skipped']} already there"
          + (f", {summary['empty']} empty text(s)" if summary["empty"] else "") + ")")
    from mop.outputs import population_usage, read_rows, usage_line

    print("the population: " + usage_line(population_usage(read_rows(summary["output"]))))
    return 0
