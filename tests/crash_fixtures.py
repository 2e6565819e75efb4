"""Tiny, offline stand-ins for a full train.py / generate.py run, shared by test_crash.py and test_determinism.py.

Everything is random and small (a 2-layer Llama, a 1-layer BERT sentence embedder, a few dozen reviews in a CSV),
so a real ``python train.py fit`` subprocess runs in seconds on a CPU; the config is ``configs/quickstart.yaml``
with only the models, data and sizes replaced, so its logger, callbacks and checkpoint locations are the real ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import REPO, tiny_llama, tiny_tokenizer

WORDS = {"fresh": ["brilliant", "moving", "witty", "superb", "charming", "gripping", "tender", "bold"],
         "rotten": ["tedious", "clumsy", "bland", "muddled", "shrill", "limp", "hollow", "dreary"]}


def make_tiny_lm(path: Path, seed: int = 2) -> Path:
    """A tiny random Llama and its byte-level tokenizer saved as a model folder (what --model accepts)."""
    tok = tiny_tokenizer()
    tiny_llama(len(tok), seed=seed, hidden=16, layers=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_embedder(path: Path, seed: int = 0) -> Path:
    """A tiny random BERT + mean pooling saved as a sentence-transformers folder (32-d embeddings)."""
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    hf = path.with_name(path.name + "-hf")
    BertModel(cfg).save_pretrained(hf)
    tok.save_pretrained(hf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = models.Transformer(str(hf), max_seq_length=128)
        SentenceTransformer(modules=[tr, models.Pooling(32, "mean")], device="cpu").save(str(path))
    return path


def write_population(path: Path, n_movies: int = 12, per_movie: int = 4) -> Path:
    """A small review population: movie, label (fresh / rotten), review text; ids r<row>."""
    import random

    rng = random.Random(0)
    lines = ["movie,label,review"]
    for m in range(n_movies):
        for i in range(per_movie):
            label = "fresh" if (m + i) % 2 == 0 else "rotten"
            words = rng.sample(WORDS[label], 3)
            lines.append(f"Film {m},{label},A {words[0]} and {words[1]} film; {words[2]} at times ({m}.{i}).")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(tmp: Path, lm: Path, embedder: Path, data: Path, epochs: int = 2, name: str = "run") -> Path:
    """configs/quickstart.yaml with tiny models, the CSV population, K=4 keyword personas and ``epochs`` epochs.

    Relative paths in the config (logger save dir, checkpoints, export, artifacts) resolve against the cwd of
    the run, so each run gets its own folder by running in its own cwd.
    """
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["model"].update(lm=str(lm), hidden_dim=16, num_candidates=2, lr=0.05, max_prompt_tokens=96,
                        max_target_tokens=24, export_dir=f"runs/{name}/gate")
    cfg["data"].update(
        dataset={"source": str(data), "response_column": "review", "context_columns": ["movie"],
                 "label_column": "label", "group_column": "movie",
                 "context_template": "a {label} review of the movie {movie}", "split": [0.6, 0.2, 0.2],
                 "seed": 0},
        personas={"num_personas": 4, "synthesizer": "keywords", "text_kind": "movie reviews", "role": "critic"},
        embedder=str(embedder), batch_size=4, artifacts_dir="artifacts")
    cfg["trainer"].update(max_epochs=epochs, log_every_n_steps=1, default_root_dir=f"runs/{name}")
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = f"runs/{name}"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def child_env(cache: Path) -> dict:
    env = {**os.environ, "MOP_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    env.pop("MOP_DEBUG", None)
    return env


def popen(args: list[str], cwd: Path, cache: Path, log: Path) -> subprocess.Popen:
    """Start ``python ARGS`` (a repo script path first) in ``cwd``, stdout + stderr to ``log``."""
    if args[0].endswith(".py") and not Path(args[0]).is_absolute():
        args = [str(REPO / args[0]), *args[1:]]
    cwd.mkdir(parents=True, exist_ok=True)
    fh = open(log, "wb")
    try:
        return subprocess.Popen([sys.executable, *args], cwd=cwd, env=child_env(cache), stdout=fh,
                                stderr=subprocess.STDOUT)
    finally:
        fh.close()


def wait_ok(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    """Wait for a started process; fail with its log unless it exits 0. Returns the log text."""
    rc = proc.wait(timeout=timeout)
    text = log.read_text(errors="replace")
    assert rc == 0, f"exit {rc}:\n{text[-4000:]}"
    return text


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.005) -> bool:
    """Poll ``predicate()`` until it holds (True) or ``proc`` exits / time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return bool(predicate())
        time.sleep(poll)
    return False


class World:
    """Tiny models, a population and three train.py runs of the same config, started once per test session.

    ``ref`` (seed 0) and ``again`` (seed 0, another folder) must give the same gate; ``seed1`` another one.
    They start together (they are independent) so that the session waits for them once.
    """

    def __init__(self, root: Path):
        self.root = root
        self.cache = root / "cache"
        self.lm = make_tiny_lm(root / "lm")
        self.embedder = make_tiny_embedder(root / "embedder")
        self.data = write_population(root / "population.csv")
        self.config = write_config(root, self.lm, self.embedder, self.data, epochs=2, name="tiny")
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        for name, extra in (("ref", []), ("again", []), ("seed1", ["--seed_everything", "1"])):
            self.start_train(name, *extra)

    def run_dir(self, name: str) -> Path:
        return self.root / name

    def start_train(self, name: str, *extra: str) -> subprocess.Popen:
        cwd = self.run_dir(name)
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        proc = popen(["train.py", "fit", "-c", str(self.config), "--validate_before_fit", "false", *extra], cwd,
                     self.cache, log)
        self.procs[name] = (proc, log)
        return proc

    def finished(self, name: str) -> Path:
        """Wait for a run to exit 0; its folder (export at runs/tiny/gate, checkpoint at
        runs/tiny/checkpoints/last.ckpt)."""
        proc, log = self.procs[name]
        wait_ok(proc, log)
        return self.run_dir(name)


_WORLD: dict[str, World] = {}


def world(tmp_path_factory) -> World:
    """The session's :class:`World` (built on first use, shared by test_crash.py and test_determinism.py)."""
    if "w" not in _WORLD:
        _WORLD["w"] = World(tmp_path_factory.mktemp("world"))
    return _WORLD["w"]


def gate_tensors(export_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(export_dir / "gate.safetensors"))
