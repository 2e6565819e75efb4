"""Builders shared by the tests (and by the scripts they run as subprocesses, tests/ddp_train.py and
tests/export_writer.py): running the CLI, tiny random models, gate exports, synthetic data modules and the
tiny train.py world of the crash / determinism tests.

Plain functions, importable from a test module, a fixture in conftest.py or a subprocess script alike; the
fixtures built on them live in conftest.py. No test module imports another test module.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- the CLI
def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run ``python -m mop ARGS`` (or a script path given as first arg ending in .py) in a subprocess."""
    if args and args[0].endswith(".py") and not Path(args[0]).is_absolute():
        args = (str(REPO / args[0]), *args[1:])
    cmd = ([sys.executable, *args] if args and args[0].endswith(".py")
           else [sys.executable, "-m", "mop", *args])
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


# ---------------------------------------------------------------------------------------- tiny random LMs
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def byte_tokenizer():
    """A byte-level tokenizer (any text encodes; 259 ids: 256 bytes, <bos>, <eos>, <pad>) built offline."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for special in ("<bos>", "<eos>", "<pad>"):
        vocab[special] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def junk_word_tokenizer():
    """A word-level tokenizer over ~200 random five-letter junk words ([UNK] 0, [PAD] 1, [EOS] 2): whatever a
    model writes with it is gibberish."""
    import string

    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    junk = {"".join(rng.choice(list(string.ascii_lowercase), size=5)) for _ in range(200)}
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", *sorted(junk)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]")


TOKENIZERS = {"bytes": byte_tokenizer, "words": junk_word_tokenizer}


def make_tiny_lm(arch: str = "llama", *, tokenizer: str | None = "bytes", chat: bool = False,
            vocab_size: int | None = None, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4,
            kv_heads: int = 2, max_positions: int | None = 2048, save_to: str | Path | None = None, **config):
    """The one tiny random causal LM builder: ``(model, tokenizer)``, the model frozen and in eval mode.

    ``arch``: ``"llama"`` or ``"gemma3"`` (text-only Gemma 3; head_dim = query_pre_attn_scalar =
    hidden / heads).
    ``tokenizer``: ``"bytes"`` (:func:`byte_tokenizer`), ``"words"`` (:func:`junk_word_tokenizer`) or None (no
    tokenizer: then ``vocab_size`` is required and None is returned in its place); ``chat`` gives it a simple
    chat template. ``vocab_size`` defaults to the tokenizer's size. The weights depend only on the seed, the
    sizes and ``config`` (extra config fields, e.g. ``sliding_window`` or ``pad_token_id``, which zeroes that
    embedding row). ``max_positions=None`` keeps the config class's default. ``save_to``: also save model and
    tokenizer there as a model folder (what ``--model`` and ``load_lm`` accept).
    """
    import torch

    tok = TOKENIZERS[tokenizer]() if tokenizer else None
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    if vocab_size is None:
        vocab_size = len(tok)
    sizes = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                 num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                 tie_word_embeddings=False)
    if max_positions is not None:
        sizes["max_position_embeddings"] = max_positions
    torch.manual_seed(seed)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**sizes, **config))
    elif arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = {"head_dim": hidden // heads, "query_pre_attn_scalar": hidden // heads, **config}
        model = Gemma3ForCausalLM(Gemma3TextConfig(**sizes, **config))
    else:
        raise ValueError(f"unknown tiny LM architecture {arch!r}")
    model.eval()
    model.requires_grad_(False)
    if save_to is not None:
        model.save_pretrained(save_to)
        tok.save_pretrained(save_to)
    return model, tok


# the vocabulary of the scorer tests' peaked tiny LMs (conftest fixtures llama, gemma3, tiny_lm)
SCORING_VOCAB = 97


def peaked_tiny_lm(arch: str = "llama", vocab_size: int = SCORING_VOCAB, **kwargs):
    """A tokenizer-less tiny LM (:func:`make_tiny_lm`) whose output head is scaled x12: random weights give
    near-uniform logits, the scaled head peaked ones (the scoring tests compare numbers on it)."""
    import torch

    model = make_tiny_lm(arch, tokenizer=None, vocab_size=vocab_size, **kwargs)[0]
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    return model


def make_tiny_embedder(path: Path, seed: int = 0) -> Path:
    """A tiny random BERT + mean pooling saved as a sentence-transformers folder (32-d embeddings)."""
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    tok = byte_tokenizer()
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


# ------------------------------------------------------------------------------------------- gate exports
PROMPT = ("You embody the persona in the description to complete the task.\n"
          "Persona: {persona}\n"
          "Example: you wrote this {exemplar[label]} review of the movie {exemplar[movie]}: "
          "{exemplar_response}\n"
          "Now write a {label} review of the movie {movie}.\n"
          "Review:")
CONTEXT = "a {label} review of the movie {movie}"


def unit_rows(rng, n: int, dim: int):
    """``n`` random unit vectors of ``dim`` floats (float32) from the numpy generator ``rng``."""
    import numpy as np

    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_export(out: Path, dim: int = 384, k: int = 5, n_pool: int = 12, seed: int = 0,
                init_std: float | None = None, embedder: str = "minilm-l6",
                hidden: int = 16, null_persona: bool = False,
                mask_other_label: bool = False) -> SimpleNamespace:
    """A small export written by save_pretrained (random gate, personas and pool), plus what went into it;
    ``null_persona``: the last of the k personas is the persona-free component; ``mask_other_label``: the
    export says it was trained on label-consistent exemplars."""
    import numpy as np
    import torch

    from mop.data import Record
    from mop.export import GateConfig, save_pretrained
    from mop.gating import Gate
    from mop.index import ExemplarIndex
    from mop.personas import Persona
    from mop.personas import null_persona as null_persona_component

    rng = np.random.default_rng(seed)
    gate = Gate(dim, k, hidden, init_std=init_std, seed=seed)
    with torch.no_grad():
        gate.log_tau.copy_(torch.log(torch.linspace(0.4, 1.2, k)))
    persona_emb = unit_rows(rng, k, dim)
    pool = [Record(id=f"e{j}", response=f"exemplar review number {j}", context={"movie": f"Movie {j}"},
                   label=["fresh", "rotten"][j % 2], group=f"g{j}") for j in range(n_pool)]
    pool_emb = unit_rows(rng, n_pool, dim)
    config = GateConfig(embedder=embedder, embed_dim=dim, hidden_dim=hidden, num_candidates=4,
                        prompt_template=PROMPT, context_template=CONTEXT, context_columns=["movie"],
                        use_chat_template=False, trained_with_lm="tiny", metrics={"val/nll": 1.5},
                        mask_other_label=mask_other_label)
    ids, texts = ([f"p{i:03d}" for i in range(k)],
                  [f"You are critic number {i}, fond of films." for i in range(k)])
    personas = [Persona(id=i, text=t, cluster_size=n) for n, (i, t) in enumerate(zip(ids, texts), 1)]
    if null_persona:
        personas[-1] = null_persona_component()
        ids[-1], texts[-1] = personas[-1].id, personas[-1].text
    path = save_pretrained(out, gate=gate, personas=personas, persona_emb=persona_emb, pool=pool,
                           index=ExemplarIndex(pool_emb, kind="flat", device="cpu"), config=config)
    return SimpleNamespace(path=path, gate=gate, persona_ids=ids, persona_texts=texts,
                           persona_emb=persona_emb, pool=pool, pool_emb=pool_emb, config=config)


def gate_tensors(export_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(export_dir / "gate.safetensors"))


# ------------------------------------------------------------------------------ synthetic data modules
def synthetic_datamodule(n_train: int, n_val: int, k: int, dim: int = 16, n_pool: int | None = None,
                         noise: float = 0.3, seed: int = 0, batch_size: int = 8):
    """Records whose context embedding points along their hidden group's direction (group = persona), wired
    into the real PopulationDataModule (artifacts in memory)."""
    import numpy as np

    from mop.data import DatasetSpec, Population, Record
    from mop.datamodule import Artifacts, PopulationDataModule, exclusions
    from mop.index import ExemplarIndex
    from mop.personas import Persona

    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(k, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)

    def make(split: str, n: int):
        groups = rng.integers(0, k, size=n)
        emb = directions[groups] + noise * rng.normal(size=(n, dim))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        recs = [Record(id=f"{split}{i}", response=f"text of group {g} number {i}", context={"topic": f"t{g}"},
                       label=f"g{g}", group=str(g)) for i, g in enumerate(groups)]
        return recs, emb.astype(np.float32)

    train, train_emb = make("train", n_train)
    val, val_emb = make("val", n_val)
    spec = DatasetSpec(source="synthetic", response_column="text", context_columns=["topic"],
                       label_column="label", context_template="about {topic}")
    population = Population(spec=spec, splits={"train": train, "val": val, "test": val})
    pool = train[: n_pool or n_train]
    pool_emb = train_emb[: len(pool)]
    persona_emb = rng.normal(size=(k, dim)).astype(np.float32)
    persona_emb /= np.linalg.norm(persona_emb, axis=1, keepdims=True)

    dm = PopulationDataModule(dataset=spec, batch_size=batch_size)
    dm.artifacts = Artifacts(
        directory=Path("."), population=population,
        personas=[Persona(id=f"p{i:03d}", text=f"persona-{i}") for i in range(k)], persona_emb=persona_emb,
        pool=pool, pool_emb=pool_emb,
        context_emb={"train": train_emb, "val": val_emb, "test": val_emb}, index=ExemplarIndex(pool_emb),
        embedder="synthetic")
    dm.exclude = {s: exclusions(population[s], pool) for s in ("train", "val", "test")}
    return dm


# -------------------------------------------------------------- the tiny train.py world (crash, determinism)
# Everything is random and small (a 1-layer Llama, a 1-layer BERT sentence embedder, a few dozen reviews in a
# CSV), so a real ``python train.py fit`` subprocess runs in seconds on a CPU; the config is
# ``configs/quickstart.yaml`` with only the models, data and sizes replaced, so its logger, callbacks and
# checkpoint locations are the real ones.
WORDS = {"fresh": ["brilliant", "moving", "witty", "superb", "charming", "gripping", "tender", "bold"],
         "rotten": ["tedious", "clumsy", "bland", "muddled", "shrill", "limp", "hollow", "dreary"]}


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
    """configs/quickstart.yaml with tiny models, the CSV population, K=4 keyword personas and ``epochs``
    epochs.

    Relative paths in the config (logger save dir, checkpoints, export, artifacts) resolve against the cwd of
    the run, so each run gets its own folder by running in its own cwd.
    """
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["model"].update(lm=str(lm), hidden_dim=16, num_candidates=2, lr=0.05, max_prompt_tokens=96,
                        max_target_tokens=24, export_dir=f"runs/{name}/gate")
    cfg["data"].update(
        dataset={"source": str(data), "response_column": "review", "context_columns": ["movie"],
                 "label_column": "label", "group_column": "movie",
                 "context_template": "a {label} review of the movie {movie}", "split": [0.6, 0.2, 0.2],
                 "seed": 0},
        personas={"num_personas": 4, "synthesizer": "keywords", "text_kind": "movie reviews",
                  "role": "critic"},
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
    """Tiny models, a population and three train.py runs of the same config, for test_crash.py and
    test_determinism.py (the session fixtures ``tiny_world_files``: the files only, and ``tiny_world``: the
    runs started too, in conftest.py).

    ``ref`` (seed 0) and ``again`` (seed 0, another folder) must give the same gate; ``seed1`` another one.
    They start together (they are independent) so that the session waits for them once.
    """

    def __init__(self, root: Path, start: bool = True):
        self.root = root
        self.cache = root / "cache"
        self.lm = root / "lm"
        make_tiny_lm(seed=2, hidden=16, layers=1, save_to=self.lm)
        self.embedder = make_tiny_embedder(root / "embedder")
        self.data = write_population(root / "population.csv")
        self.config = write_config(root, self.lm, self.embedder, self.data, epochs=2, name="tiny")
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        if start:
            self.start_runs()

    def start_runs(self) -> None:
        """Start the three runs ``ref``, ``again`` and ``seed1`` (once)."""
        for name, extra in (("ref", []), ("again", []), ("seed1", ["--seed_everything", "1"])):
            if name not in self.procs:
                self.start_train(name, *extra)

    def run_dir(self, name: str) -> Path:
        return self.root / name

    def start_train(self, name: str, *extra: str) -> subprocess.Popen:
        cwd = self.run_dir(name)
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        proc = popen(["train.py", "fit", "-c", str(self.config), "--validate_before_fit", "false", *extra],
                     cwd, self.cache, log)
        self.procs[name] = (proc, log)
        return proc

    def finished(self, name: str) -> Path:
        """Wait for a run to exit 0; its folder (export at runs/tiny/gate, checkpoint at
        runs/tiny/checkpoints/last.ckpt)."""
        proc, log = self.procs[name]
        wait_ok(proc, log)
        return self.run_dir(name)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def as_legacy_export(path: Path) -> Path:
    """Turn an export into format 1, as the writer before the manifest made it: exemplars.faiss beside the
    embeddings, checksums of the five other files in config.json (which they do not cover)."""
    import faiss
    import numpy as np

    cfg = json.loads((path / "config.json").read_text())
    flat = faiss.IndexFlatIP(cfg["embed_dim"])
    flat.add(np.load(path / "exemplar_embeddings.npy"))
    faiss.write_index(flat, str(path / "exemplars.faiss"))
    (path / "manifest.json").unlink()
    del cfg["index"]
    names = ["exemplar_embeddings.npy", "exemplars.faiss", "exemplars.jsonl", "gate.safetensors",
             "personas.jsonl"]
    cfg.update(format_version=1, checksums={n: file_sha256(path / n) for n in names})
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path
