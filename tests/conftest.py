"""Shared fixtures: an isolated cache, offline hub, and helpers to run the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread (OpenMP threads contend badly on a shared, busy CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run ``python -m mop ARGS`` (or a script path given as first arg ending in .py) in a subprocess."""
    if args and args[0].endswith(".py") and not Path(args[0]).is_absolute():
        args = (str(REPO / args[0]), *args[1:])
    cmd = [sys.executable, *args] if args and args[0].endswith(".py") else [sys.executable, "-m", "mop", *args]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MOP_DEBUG", None)
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments: str) -> str:
    """A user error: non-zero exit, no traceback, one line on stderr naming what was wrong."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def write_csv(tmp_path):
    def _write(rows: list[dict], name: str = "pop.csv") -> Path:
        import pandas as pd

        path = tmp_path / name
        pd.DataFrame(rows).to_csv(path, index=False)
        return path

    return _write


def tiny_tokenizer():
    """A byte-level tokenizer (any text encodes; ~260 ids) built offline, for tiny random LMs."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for special in ("<bos>", "<eos>", "<pad>"):
        vocab[special] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A tiny random Llama, frozen and in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model
