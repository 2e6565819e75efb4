"""The vLLM engine (mop.engines.vllm) against the hf engine, with the real engine (no mock) and SmolLM2.

Runs where vLLM imports (CI's vLLM environment, .venv-vllm: docs/cli.md, "Engines"); skipped elsewhere. One
vLLM engine (LoRA enabled) is shared by the module: an engine start costs about 70 s on a CPU. The tests that
need no vLLM (a refused resume across engines, old rows read as hf) run everywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GATE = ROOT / "benchmarks" / "results" / "fidelity_scale_gate"
CONFIG = ROOT / "configs" / "fidelity.yaml"
GREEDY = 1e-6  # mop's sampler is an argmax at this temperature; vLLM's engine maps it to its greedy mode


def _vllm_missing() -> str | None:
    try:
        import vllm  # noqa: F401
    except Exception as err:  # an ImportError, or a broken install (torchvision beside torch+cpu)
        return f"vllm is not importable here ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


VLLM_MISSING = _vllm_missing()
needs_vllm = pytest.mark.skipif(VLLM_MISSING is not None, reason=VLLM_MISSING or "")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def real():
    """The committed export, 24 records of its config's test split, their embeddings and the MoP prompts
    the gate draws for them (one sample per record, seed 0)."""
    from mop.embed import Embedder
    from mop.export import GateExport
    from mop.generate import ComponentSampler, build_prompt, dataset_contexts, embed_contexts, sample_key

    export = GateExport.from_pretrained(GATE)
    records = dataset_contexts(CONFIG, "test", export.config)
    embedder = Embedder(export.embedder)
    emb = embed_contexts(export, records[:24], embedder)
    comps = ComponentSampler(export, "mop").sample(emb, [r.id for r in records[:24]],
                                                   [sample_key(f"{r.id}-0") for r in records[:24]], 0)
    prompts = [build_prompt(export, r, c) for r, c in zip(records[:24], comps)]
    return {"export": export, "records": records, "embedder": embedder, "prompts": prompts}


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A tiny random LoRA adapter (rank 8 on q_proj and v_proj) of SmolLM2, saved by peft."""
    import torch
    from peft import LoraConfig, get_peft_model

    from mop.assets import load_lm

    torch.manual_seed(0)
    model, _ = load_lm("smollm2-135m", dtype="float32")
    model.requires_grad_(True)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def vllm_engine(lora):
    """One vLLM engine for the module, LoRA enabled with ``lora`` (a test sets ``lora_request`` to use it)."""
    from mop.engines.vllm import VLLMEngine

    engine = VLLMEngine.load("smollm2-135m", dtype="float32", device="cpu", adapter=lora)
    adapter_request, engine.lora_request = engine.lora_request, None
    engine.adapter_request = adapter_request
    yield engine
    engine.unload()


@pytest.fixture(scope="module")
def hf_engine():
    from mop.engines.hf import HFEngine

    return HFEngine.load("smollm2-135m", dtype="float32", device="cpu")


def _same(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------- sampling parity
@needs_vllm
def test_greedy_tokens_match_hf_on_real_prompts(vllm_engine, hf_engine, real):
    prompts = real["prompts"][:16]
    kw = dict(max_new_tokens=32, stop=["\n"])
    hf = hf_engine.generate(prompts, [GREEDY] * 16, list(range(16)), **kw)
    vl = vllm_engine.generate(prompts, [GREEDY] * 16, list(range(16)), **kw)
    same = _same(hf, vl)
    print(f"greedy parity: {same}/16 prompts with the same tokens")
    assert same >= 15, [(hf_engine.tokenizer.decode(a), hf_engine.tokenizer.decode(b))
                        for a, b in zip(hf, vl) if a != b]
    assert sum(map(len, vl)) > 16 * 3  # real texts, not empty rows


@needs_vllm
def test_seeded_sampling_is_reproducible_across_runs_and_batches(vllm_engine, real):
    prompts, seeds = real["prompts"][:8], [11, 12, 13, 14, 15, 16, 17, 18]
    kw = dict(max_new_tokens=24, stop=["\n"])
    first = vllm_engine.generate(prompts, [1.0] * 8, seeds, **kw)
    again = vllm_engine.generate(prompts, [1.0] * 8, seeds, **kw)
    assert again == first
    # another batch: reversed, half of it, next to other prompts with other seeds and temperatures
    mixed = vllm_engine.generate([*prompts[:4][::-1], *real["prompts"][8:14]], [1.0] * 4 + [0.7] * 6,
                                 [*seeds[:4][::-1], *range(100, 106)], **kw)
    assert mixed[:4][::-1] == first[:4]
    other_seeds = vllm_engine.generate(prompts, [1.0] * 8, [s + 1000 for s in seeds], **kw)
    assert _same(other_seeds, first) <= 2  # the seed decides the sample


@needs_vllm
def test_rows_get_the_same_persona_exemplar_temperature_in_both_engines(vllm_engine, hf_engine, real):
    import mop

    contexts = [{"id": r.id, **r.context, "label": r.label} for r in real["records"][:6]]
    kw = dict(num_samples=12, max_new_tokens=8, progress=False, seed=3, shuffle=True)
    hf = mop.simulate(real["export"], hf_engine, contexts, **kw)
    vl = mop.simulate(real["export"], vllm_engine, contexts, **kw)
    keys = ("id", "persona_id", "exemplar_id", "temperature")
    assert [[r[k] for k in keys] for r in hf] == [[r[k] for k in keys] for r in vl]
    assert len({r["persona_id"] for r in vl}) > 1  # the gate drew several personas
    assert {r["engine"] for r in hf} == {"hf"} and {r["engine"] for r in vl} == {"vllm"}
    import vllm

    assert {r["engine_version"] for r in vl} == {vllm.__version__}


# -------------------------------------------------------------------------------------------- stop strings
@needs_vllm
def test_a_stop_string_ends_the_row_as_in_hf(vllm_engine, hf_engine, real):
    from mop.generate import clean_text

    prompts, tok = real["prompts"][:8], vllm_engine.tokenizer
    kw = dict(max_new_tokens=48, stop=["."])
    vl = vllm_engine.generate(prompts, [GREEDY] * 8, list(range(8)), **kw)
    hf = hf_engine.generate(prompts, [GREEDY] * 8, list(range(8)), **kw)
    assert _same(vl, hf) >= 7
    texts = [clean_text(tok.decode(ids, skip_special_tokens=True), ["."]) for ids in vl]
    assert all("." not in t for t in texts)
    assert sum(tok.decode(ids).rstrip().endswith(".") for ids in vl) >= 4  # rows ended at the stop string


@needs_vllm
def test_a_leading_newline_does_not_end_the_row(vllm_engine, hf_engine):
    """mop's rule: a stop string in a response's leading whitespace does not end it (vLLM's own stop check
    would end this row at once, with an empty text)."""
    from mop.generate import clean_text

    prompt = "Title: Heat\nReview:"  # SmolLM2 answers it with a blank line first
    tok = vllm_engine.tokenizer
    vl = vllm_engine.generate([prompt], [GREEDY], [0], max_new_tokens=24, stop=["\n"])[0]
    hf = hf_engine.generate([prompt], [GREEDY], [0], max_new_tokens=24, stop=["\n"])[0]
    raw = tok.decode(vl, skip_special_tokens=True)
    assert raw.startswith("\n") and clean_text(raw, ["\n"])  # a leading newline, then a text
    assert vl == hf
    # a stop string that is the leading space of the response: the first word, in both engines
    vl = vllm_engine.generate(["The movie was"], [GREEDY], [0], max_new_tokens=8, stop=[" "])[0]
    hf = hf_engine.generate(["The movie was"], [GREEDY], [0], max_new_tokens=8, stop=[" "])[0]
    assert vl == hf and clean_text(tok.decode(vl), [" "]) == tok.decode(vl).split()[0]


# -------------------------------------------------------------------------------------------------- LoRA
@needs_vllm
def test_a_lora_adapter_changes_outputs_and_matches_hf_with_peft(vllm_engine, lora, real):
    from mop.engines.hf import HFEngine

    prompts = real["prompts"][:8]
    kw = dict(max_new_tokens=24, stop=["\n"])
    base = vllm_engine.generate(prompts, [GREEDY] * 8, list(range(8)), **kw)
    vllm_engine.lora_request = vllm_engine.adapter_request
    try:
        adapted = vllm_engine.generate(prompts, [GREEDY] * 8, list(range(8)), **kw)
    finally:
        vllm_engine.lora_request = None
    peft = HFEngine.load("smollm2-135m", dtype="float32", device="cpu", adapter=lora)
    with_peft = peft.generate(prompts, [GREEDY] * 8, list(range(8)), **kw)
    assert _same(adapted, base) <= 4  # the adapter changes the outputs
    assert _same(adapted, with_peft) >= 7


# ------------------------------------------------------------------------------------------------ resume
def _generate_cmd(output: Path, engine: str, num_samples: int = 24,
                  place: tuple[str, ...] = ("--device", "cpu")) -> list[str]:
    return [sys.executable, "-m", "mop", "generate", "--gating", str(GATE), "--model", "smollm2-135m",
            "-c", str(CONFIG), "--split", "test", "--num-samples", str(num_samples), "--batch-size", "4",
            "--max-new-tokens", "16", *place, "--dtype", "float32", "--engine", engine,
            "--output", str(output), "--progress", "false"]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@needs_vllm
def test_resume_after_kill_9_then_refused_with_the_other_engine(vllm_engine, real, tmp_path):
    from mop.generate import Sampling, embed_contexts, generate_population

    out, ref = tmp_path / "killed.jsonl", tmp_path / "reference.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(_generate_cmd(out, "vllm"), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 400
    while _lines(out) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and vLLM's engine processes
    _, err = proc.communicate()
    killed = _lines(out)
    assert 1 <= killed < 24, err.decode()[-2000:]

    export, records, embedder = real["export"], real["records"], real["embedder"]

    def context_emb(positions):
        return embed_contexts(export, [records[p] for p in positions], embedder)

    kw = dict(context_emb=context_emb, model_name="smollm2-135m", progress=False)
    sampling = Sampling(num_samples=24, batch_size=4, max_new_tokens=16)
    summary = generate_population(export, vllm_engine, None, records, out, sampling, **kw)
    assert summary["skipped"] == killed and summary["written"] == 24 - killed
    generate_population(export, vllm_engine, None, records, ref, Sampling(num_samples=24, max_new_tokens=16),
                        **kw)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [json.loads(line)["id"] for line in ref.read_text().splitlines()]
    assert rows == [json.loads(line) for line in ref.read_text().splitlines()]  # as if never killed
    assert {r["engine"] for r in rows} == {"vllm"}

    refused = subprocess.run(_generate_cmd(out, "hf"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    message = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and "engine 'vllm'" in message[0] and "--engine vllm" in message[0], message


@needs_vllm
def test_two_ranks_with_an_engine_each_write_the_rows_of_one_process(vllm_engine, real, tmp_path):
    """mop generate --devices 2 on Lightning Fabric (CPU ranks), one vLLM engine per rank: one output, the
    rows a one-process run writes."""
    from mop.generate import Sampling, embed_contexts, generate_population

    out, ref = tmp_path / "two.jsonl", tmp_path / "one.jsonl"
    cmd = _generate_cmd(out, "vllm", num_samples=16, place=("--accelerator", "cpu", "--devices", "2"))
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (tmp_path / "two.jsonl.parts").exists()  # merged, parts removed

    export, records, embedder = real["export"], real["records"], real["embedder"]
    generate_population(export, vllm_engine, None, records, ref, Sampling(num_samples=16, max_new_tokens=16),
                        context_emb=lambda pos: embed_contexts(export, [records[p] for p in pos], embedder),
                        model_name="smollm2-135m", progress=False)
    two = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["id"] for r in two}) == 16
    assert two == [json.loads(line) for line in ref.read_text().splitlines()]


def test_hf_rows_refuse_a_resume_with_vllm(tmp_path):
    """Refused before any model loads, so with or without vLLM installed."""
    out = tmp_path / "hf.jsonl"
    gen = subprocess.run(_generate_cmd(out, "hf", num_samples=2), cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert gen.returncode == 0, gen.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    import transformers

    assert [(r["engine"], r["engine_version"]) for r in rows] == [("hf", transformers.__version__)] * 2
    refused = subprocess.run(_generate_cmd(out, "vllm", num_samples=2), cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    message = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode != 0 and len(message) == 1 and "engine 'hf'" in message[0], message


def test_rows_from_before_engines_read_as_hf(tmp_path):
    from mop.outputs import OutputFile, population_table

    old = {"id": "a-0", "record_id": "a", "context": {"movie": "Heat"}, "label": None, "persona_id": "p1",
           "persona": "x", "exemplar_id": None, "attributes": None, "temperature": 0.7, "model": "m",
           "adapter": None, "method": "mop", "seed": 0, "text": "Fine."}
    table = population_table([old])
    assert table.column("engine").to_pylist() == ["hf"]
    assert table.column("engine_version").to_pylist() == [None]
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n")
    identity = {"model": "m", "adapter": None, "method": "mop", "seed": 0}
    assert OutputFile(path, {**identity, "engine": "hf"}).done == {"a-0"}  # resumed by the hf engine
    from mop.errors import MopError

    with pytest.raises(MopError, match="engine 'hf'"):
        OutputFile(path, {**identity, "engine": "vllm"})


def test_auto_picks_vllm_only_on_a_cuda_device_where_it_is_installed(monkeypatch):
    import mop.engines as engines
    from mop.errors import MopError

    assert engines.resolve_engine("auto", "cpu") == "hf"
    assert engines.resolve_engine("auto", "auto", "cpu") == "hf"
    assert engines.resolve_engine("vllm", "cpu") == "vllm" and engines.resolve_engine("hf", "cuda") == "hf"
    for installed in (True, False):
        monkeypatch.setattr(engines, "vllm_installed", lambda installed=installed: installed)
        assert engines.resolve_engine("auto", "cuda:1") == ("vllm" if installed else "hf")
        assert engines.resolve_engine("auto", "auto", "gpu") == ("vllm" if installed else "hf")
    with pytest.raises(MopError, match="unknown engine 'sglang'"):
        engines.resolve_engine("sglang")
