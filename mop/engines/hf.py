"""The Hugging Face engine: mop's own batched decode loop (mop.generate.sample_continuations) on a
transformers model, PEFT adapters included."""

from __future__ import annotations

from collections.abc import Sequence

from mop.engines.base import Engine


class HFEngine(Engine):
    """A loaded transformers causal LM and its tokenizer (``mop.load_lm`` returns the pair)."""

    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.mop_name = getattr(model, "mop_name", None) or getattr(model, "name_or_path", None)

    @classmethod
    def load(cls, name_or_path: str, *, dtype: str | None = None, device: str | None = None,
             adapter: str | None = None) -> HFEngine:
        from mop.assets import load_lm

        return cls(*load_lm(name_or_path, dtype=dtype, device=device, adapter=adapter))

    @property
    def version(self) -> str:
        import transformers

        return transformers.__version__

    def generate(self, prompts: Sequence[str], temperatures: Sequence[float], seeds: Sequence[int], *,
                 max_new_tokens: int = 96, top_p: float = 1.0, use_chat_template: bool = False,
                 stop: Sequence[str] = ("\n",)) -> list[list[int]]:
        from mop.generate import sample_continuations

        return sample_continuations(self.model, self.tokenizer, prompts, temperatures, seeds,
                                    max_new_tokens=max_new_tokens, top_p=top_p,
                                    use_chat_template=use_chat_template, stop=stop)

    def default_batch_size(self) -> int:
        from mop.generate import default_batch_size

        return default_batch_size(self.model)
