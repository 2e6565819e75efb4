"""Shared helpers of the speed benchmarks: hardware facts, a measured matmul peak, timers, pairs, JSON output.

Not a benchmark itself. The scripts in this folder import it as ``common`` (they run as
``python benchmarks/<name>.py``, which puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SHARED_NOTE = ("machine shared with another job during the run: absolute numbers are pessimistic; "
               "read the ratios, measured side by side in one run")


def model_slug(model: str) -> str:
    """The file-name form of an LM named on the command line: a bundled name (``smollm2-135m``) as it is, a
    local path or hub id with every run of other characters as ``--`` (``meta-llama/Meta-Llama-3-8B`` ->
    ``meta-llama--Meta-Llama-3-8B``), so a set ``<slug>__<method>.jsonl`` stays inside its folder."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", model).strip("-.")
    if not slug:
        raise ValueError(f"no file name can be made of the LM name {model!r}")
    return slug


def local_lm(model: str) -> str:
    """An LM named by a folder that exists here, as an absolute path (so that it names the same sets from any
    working directory); a bundled name or a hub id as it is."""
    from mop.assets import BUNDLED_LMS

    return os.path.abspath(model) if model not in BUNDLED_LMS and Path(model).is_dir() else model


def lm_file_name(model: str) -> str:
    """The name an LM's sample sets carry: ``<lm_file_name>__<method>.jsonl``."""
    return model_slug(local_lm(model))


def hardware(device: str = "cpu") -> dict:
    """CPU model, cores, torch version and (on cuda) the GPU name, so numbers can be compared across
    machines."""
    import torch

    model = platform.processor() or "unknown"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    out = {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
        "device": device,
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def hardware_line(hw: dict) -> str:
    where = f"GPU {hw['gpu']}" if "gpu" in hw else f"{hw['cpu']} ({hw['cpu_capability']})"
    return (f"Hardware: {where}, {hw['cores']} cores, torch {hw['torch']}, {hw['threads']} torch thread(s); "
            f"load average at start {hw['load_average_at_start'][0]:.1f}")


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Timer:
    """Accumulating wall-clock timer (synchronises cuda before reading the clock)."""

    def __init__(self, device: str = "cpu"):
        self.device, self.seconds, self._start = device, 0.0, None

    def __enter__(self):
        sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds += time.perf_counter() - self._start
        return False


def matmul_peak(dtype, device: str = "cpu", size: int | None = None, repeats: int = 5) -> float:
    """Measured GFLOP/s of a square matmul in ``dtype`` (1024 on CPU, 8192 on cuda): the achievable peak."""
    import torch

    size = size or (8192 if str(device).startswith("cuda") else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    # a @ b and F.linear (what nn.Linear runs) take different kernels for bf16 on CPU: the faster one is
    # the peak
    for fn in (lambda: a @ b, lambda: torch.nn.functional.linear(a, b)):
        with Timer(device) as t:  # warm-up; a very slow path (bf16 a @ b on a CPU without bf16
            fn()                  # instructions) is measured by this one call
        if t.seconds > 1:
            best = min(best, t.seconds)
            continue
        for _ in range(repeats):
            with Timer(device) as t:
                fn()
            best = min(best, t.seconds)
    return 2 * size**3 / best / 1e9


def param_counts(model) -> dict:
    """Parameters of the decoder body (no input embedding) and of the output head (the logits' matmul)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    total = sum(p.numel() for p in base.parameters())  # tied head counted once
    body = total - emb.numel() - (0 if head is emb or head.data_ptr() == emb.data_ptr() else head.numel())
    return {"total": total, "body": body, "head": head.numel()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_bench_lm(name: str, dtype: str, device: str, random_weights: bool = False):
    """mop.assets.load_lm, or with ``random_weights`` the same shape built from the folder's config.json
    with seeded random weights (model_shapes.random_lm; for speed only: reads config, tokenizer)."""
    from mop.assets import load_lm, load_tokenizer, resolve_lm

    if not random_weights:
        return load_lm(name, dtype=dtype, device=device)
    from model_shapes import random_lm

    path = resolve_lm(name)
    tok = load_tokenizer(path)
    model = random_lm(path, dtype, device)
    model.mop_name = f"{name} (random weights)"
    return model, tok


def load_config(path: str | Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def datamodule_from_config(config: dict, **overrides):
    """The config's PopulationDataModule (its ``data`` section), with keyword overrides."""
    from mop.data import DatasetSpec
    from mop.datamodule import PersonaSpec, PopulationDataModule

    data = dict(config.get("data") or {})
    data.update({k: v for k, v in overrides.items() if k not in ("dataset", "personas")})
    dataset = DatasetSpec.from_dict({**data.get("dataset", {}), **overrides.get("dataset", {})})
    personas = PersonaSpec(**{**data.get("personas", {}), **overrides.get("personas", {})})
    data.pop("dataset", None)
    data.pop("personas", None)
    return PopulationDataModule(dataset=dataset, personas=personas, **data)


def training_pairs(config_path: str | Path, n_pairs: int, per_record: int = 5, seed: int = 0):
    """(prompts, targets, taus) of real training prompts: persona + exemplar + target context, as in training.

    Records are the config's training records in order; each gets ``per_record`` pairs (M + 1 = 5 in training)
    with a seeded random persona and exemplar (never itself). Personas come from the config's artifacts when
    they were built (``python train.py fit -c CONFIG``), else a few generic critic personas (noted in the
    JSON).
    """
    import random

    from mop.data import load_population
    from mop.personas import read_personas
    from mop.prompts import DEFAULT_TEMPLATE, render_prompt

    config = load_config(config_path)
    dm = datamodule_from_config(config)
    population = load_population(dm.dataset)
    template = (config.get("model") or {}).get("prompt_template", DEFAULT_TEMPLATE)
    path = dm.artifact_path / "personas.jsonl"
    if path.exists():
        personas, source = [p.text for p in read_personas(path)], str(path)
    else:
        personas = ["You are a film critic who writes short, punchy verdicts.",
                    "You are a reviewer who cares about acting and dialogue above all.",
                    "You are a critic who loves genre films and hates pretension.",
                    "You are a careful critic who weighs a film's ambitions against its execution."]
        source = "generic (no artifacts for this config)"
    train = population["train"]
    rng = random.Random(seed)
    prompts, targets = [], []
    for i in range(n_pairs):
        record = train[(i // per_record) % len(train)]
        exemplar = record
        while exemplar.id == record.id:
            exemplar = train[rng.randrange(len(train))]
        prompts.append(render_prompt(template, population.spec.context_template, record,
                                     personas[rng.randrange(len(personas))], exemplar))
        targets.append(record.response)
    return prompts, targets, {"personas": source, "template": template}


def write_json(path: Path, payload: dict) -> None:
    """Atomic write (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def hf_generate_reference(model, tok, prompts, temperatures, seeds, *, max_new_tokens: int = 96,
                          stop_at_newline: bool = True, min_new_tokens: int = 0) -> list[list[int]]:
    """Sampling as it was before mop's own decode loop (the "before" of the generation benchmark and the
    reference of its tests): Hugging Face ``generate`` with a per-row temperature, a per-row seeded Gumbel-max
    logits processor and a newline stopping criterion. Finished rows stay in the batch (padded) until the last
    row stops. Returns each row's new ids up to (excluding) its first end token."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    class RowSampler:
        def __init__(self):
            self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

        def __call__(self, input_ids, scores):
            scores = scores / torch.tensor(temperatures, dtype=torch.float32)[:, None]
            u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.gens])
            pick = (torch.log_softmax(scores.float(), -1) - torch.log(-torch.log(u))).argmax(-1, keepdim=True)
            return torch.full_like(scores, float("-inf")).scatter_(1, pick, 0.0)

    side, tok.padding_side = tok.padding_side, "left"
    enc = tok(list(prompts), padding=True, return_tensors="pt")
    tok.padding_side = side
    width = enc["input_ids"].shape[1]

    def newline(input_ids, scores, **kwargs):
        return torch.tensor(["\n" in tok.decode(row[width:], skip_special_tokens=True).lstrip()
                             for row in input_ids.tolist()])

    ends = [i for i in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None))
            if i is not None]
    ends = sorted({int(e) for i in ends for e in (i if isinstance(i, (list, tuple)) else [i])})
    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, eos_token_id=ends,
                              pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else ends[0])
    with torch.inference_mode():
        out = model.generate(**enc, generation_config=config,
                             logits_processor=LogitsProcessorList([RowSampler()]),
                             stopping_criteria=StoppingCriteriaList([newline] if stop_at_newline else []))
    return [next((row[:i] for i, t in enumerate(row) if t in ends), row) for row in out[:, width:].tolist()]
