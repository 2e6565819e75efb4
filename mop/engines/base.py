"""The interface of a generation engine: it turns prompts into new tokens, one row per prompt.

The gate (mop.generate) draws each sample's persona, exemplar and temperature; an engine only samples the LM.
One module per engine (mop.engines.hf, mop.engines.vllm); a third engine is a subclass of :class:`Engine` in
a file of its own, named in mop.engines.ENGINES.
"""

from __future__ import annotations

from collections.abc import Sequence


class Engine:
    """An LM runtime behind ``mop generate``: ``generate(prompts, temperatures, seeds, ...)`` returns each
    prompt's new token ids (up to, excluding, its end token; a row that wrote a stop string, leading
    whitespace aside, ends there keeping the token that completed it), in input order.

    Row b depends only on its prompt, temperature and seed, never on the rest of the batch.
    """

    name: str = "engine"
    tokenizer = None
    model = None  # the Hugging Face model where the engine has one (closed-ended exports score with it)

    @property
    def version(self) -> str:
        """The runtime's version, written into every row (``engine_version``)."""
        raise NotImplementedError

    def generate(self, prompts: Sequence[str], temperatures: Sequence[float], seeds: Sequence[int], *,
                 max_new_tokens: int = 96, top_p: float = 1.0, use_chat_template: bool = False,
                 stop: Sequence[str] = ("\n",)) -> list[list[int]]:
        raise NotImplementedError

    def default_batch_size(self) -> int:
        """Rows per call of :meth:`generate` when ``--batch-size`` is not given."""
        raise NotImplementedError

    def unload(self) -> None:
        """Free the engine's memory (and processes)."""


def prompt_token_ids(tokenizer, prompts: Sequence[str], use_chat_template: bool) -> list[list[int]]:
    """The prompts' token ids as mop.generate.sample_continuations makes them (with the chat template: one
    user turn and the generation prompt)."""
    if use_chat_template:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts]
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [list(ids) for ids in tokenizer(list(prompts))["input_ids"]]
