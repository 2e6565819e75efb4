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


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run ``python -m mop ARGS`` (or a script path given as first arg ending in .py) in a subprocess."""
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
