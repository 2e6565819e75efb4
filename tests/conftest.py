"""Shared fixtures: offline hub, one torch thread, CSV writing, the scorers' tiny LMs and the tiny train.py
world.

The builders behind them (tiny random LMs, exports, synthetic data modules, running the CLI) are plain
functions in tests/helpers.py, so that tests and the scripts they run as subprocesses import them from one
place.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and small arrays run fastest on one thread: torch's, and the BLAS / OpenMP pools of numpy,
    scipy and faiss (their threads contend badly on a shared, busy CPU: 10-30x slower measured on 2 cores)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


# The scorers' tiny LMs (tests/test_scoring.py, tests/test_prefix_scoring.py): peaked heads over
# helpers.SCORING_VOCAB


@pytest.fixture(scope="module")
def llama():
    from helpers import SCORING_VOCAB, peaked_tiny_lm

    return peaked_tiny_lm("llama", SCORING_VOCAB, seed=0, max_positions=None)


@pytest.fixture(scope="module")
def gemma3():
    """Sliding window 3 (shorter than most sequences and than the shared prefixes) and logit softcapping on,
    to exercise both."""
    from helpers import SCORING_VOCAB, peaked_tiny_lm

    return peaked_tiny_lm("gemma3", SCORING_VOCAB, seed=1, max_positions=None, sliding_window=3,
                          layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=5.0)


@pytest.fixture(params=["llama", "gemma3"])
def tiny_lm(request):
    """Each scorer test on both (tests/test_generate.py has its own tiny_lm, with a tokenizer)."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def write_csv(tmp_path):
    def _write(rows: list[dict], name: str = "pop.csv"):
        import pandas as pd

        path = tmp_path / name
        pd.DataFrame(rows).to_csv(path, index=False)
        return path

    return _write


@pytest.fixture(scope="session")
def tiny_world_files(tmp_path_factory):
    """The tiny train.py world's models, population and config (helpers.World), no run started."""
    from helpers import World

    return World(tmp_path_factory.mktemp("world"), start=False)


@pytest.fixture(scope="session")
def tiny_world(tiny_world_files):
    """The tiny world with its three train.py runs started (once per session), shared by test_crash.py and
    test_determinism.py; ``tiny_world.finished(name)`` waits for one."""
    tiny_world_files.start_runs()
    return tiny_world_files


@pytest.fixture(scope="session")
def bundled_lm():
    """``bundled_lm(name)``: a bundled LM and its tokenizer, each loaded once per session (slow tests)."""
    from mop.assets import load_lm

    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = load_lm(name)
        return loaded[name]

    return get
