"""The Python API (mop.simulate, mop.evaluate_population, mop.load_population and the population schema):
the same rows and report as the command line, one schema for every method's rows, a lazy ``import mop``, and
the Python example of README.md / docs/api.md run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, make_export, make_tiny_embedder, make_tiny_lm

import mop
from mop.cli import main
from mop.outputs import IDENTITY, ROW_FIELDS, population_schema, read_rows

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLES = REPO / "benchmarks" / "results" / "fidelity_scale_samples"
EXAMPLE_GATE = REPO / "benchmarks" / "results" / "fidelity_scale_gate"


def _contexts(n: int = 3) -> list[dict]:
    return [{"id": f"m{i}", "movie": f"Film {i}", "label": ["fresh", "rotten"][i % 2]} for i in range(n)]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random LM folder, a tiny sentence embedder and a 32-d export made for it (no bundled asset)."""
    tmp = tmp_path_factory.mktemp("api")
    make_tiny_lm(seed=2, save_to=tmp / "lm")
    embedder = make_tiny_embedder(tmp / "embedder")
    gate = make_export(tmp / "gate", dim=32, k=4, init_std=0.6, embedder=str(embedder)).path
    return {"lm": str(tmp / "lm"), "embedder": str(embedder), "gate": str(gate)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOP_CACHE", str(tmp_path / "cache"))  # the embedding cache of this test only


def test_import_mop_loads_no_model_and_exposes_the_documented_names():
    code = ("import sys, mop; heavy = {'torch', 'transformers', 'numpy', 'pandas', 'pyarrow', "
            "'sentence_transformers'}; print(sorted(heavy & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]"
    public = {"GateExport", "load_lm", "simulate", "evaluate_population", "format_table", "load_population",
              "population_schema", "population_features", "MopError"}
    assert public <= set(mop.__all__) and public <= set(dir(mop))
    for name in public:
        assert callable(getattr(mop, name)) and getattr(mop, name).__doc__, name
    with pytest.raises(AttributeError):
        mop.no_such_name  # noqa: B018
    api_doc = (REPO / "docs" / "api.md").read_text()
    assert all(f"mop.{name}" in api_doc for name in public), "docs/api.md documents every public name"


# --------------------------------------------------------------------------------------------------- simulate
CLI_SETTINGS = ["--batch-size", "4", "--max-new-tokens", "10", "--stop", "--no-progress"]
API_SETTINGS = {"batch_size": 3, "max_new_tokens": 10, "stop": [], "progress": False}  # batch size: no matter


@pytest.mark.parametrize("method,seed,extra", [("mop", 3, {}), ("mop", 0, {"shuffle": True}),
                                               ("attrprompt", 5, {})])
def test_simulate_gives_the_rows_of_mop_generate(world, tmp_path, method, seed, extra):
    """Same export, model, contexts and seed: the API's rows are the CLI's, field for field (texts, personas,
    exemplars, temperatures and provenance), whatever form the contexts take."""
    contexts = _contexts(3)
    flags = ["--shuffle"] if extra.get("shuffle") else []
    out = tmp_path / "cli.jsonl"
    assert main(["generate", "--gating", world["gate"], "--model", world["lm"], "--contexts",
                 _jsonl(tmp_path / "contexts.jsonl", contexts), "--num-samples", "7", "--seed", str(seed),
                 "--method", method, *flags, *CLI_SETTINGS, "--output", str(out)]) == 0
    cli = list(read_rows(out))
    assert len(cli) == 7 and [list(r) for r in cli] == [list(ROW_FIELDS)] * 7  # the schema's fields, in order

    def simulate(contexts, model=world["lm"], seed=seed, **kw):
        return mop.simulate(world["gate"], model, contexts, num_samples=7, seed=seed, method=method,
                            **extra, **API_SETTINGS, **kw)

    rows = simulate(contexts)
    assert rows == cli
    if method == "mop":
        assert len({r["persona_id"] for r in rows}) > 1 and len({r["temperature"] for r in rows}) > 1
        assert all(r["exemplar_id"] for r in rows)
    else:
        assert all(r["persona"] is None and r["attributes"] for r in rows)
    # the contexts as a DataFrame, the gate and the model already loaded: the same rows
    import pandas as pd

    gate = mop.GateExport.from_pretrained(world["gate"])
    loaded = mop.load_lm(world["lm"])
    assert simulate(pd.DataFrame(contexts), model=loaded) == cli
    # another seed, other rows
    other = simulate(contexts, seed=seed + 1)
    assert [r["text"] for r in other] != [r["text"] for r in cli] and {r["seed"] for r in other} == {seed + 1}
    # a DataFrame of the population schema
    frame = mop.simulate(gate, loaded, contexts, num_samples=7, seed=seed, method=method, as_frame=True,
                         **extra, **API_SETTINGS)
    assert list(frame.columns) == list(ROW_FIELDS)
    assert frame["text"].tolist() == [r["text"] for r in cli]
    assert frame["id"].tolist() == [r["id"] for r in cli]


def test_simulate_takes_a_datasets_dataset_and_writes_a_resumable_output(world, tmp_path):
    contexts = _contexts(4)
    out = tmp_path / "api.jsonl"
    rows = mop.simulate(world["gate"], world["lm"], contexts, seed=1, output=out, **API_SETTINGS)
    assert [r["id"] for r in rows] == ["m0-0", "m1-0", "m2-0", "m3-0"]  # num_samples: one per context
    assert list(read_rows(out)) == rows
    again = mop.simulate(world["gate"], world["lm"], contexts, seed=1, output=out, **API_SETTINGS)
    assert again == rows and out.read_text().count("\n") == 4  # resumed: nothing added
    with pytest.raises(mop.MopError, match="other settings: seed 1 \\(now 2\\)"):
        mop.simulate(world["gate"], world["lm"], contexts, seed=2, output=out, **API_SETTINGS)
    with pytest.raises(mop.MopError, match="lacks field\\(s\\) 'label'"):
        mop.simulate(world["gate"], world["lm"], [{"movie": "Heat"}], **API_SETTINGS)
    with pytest.raises(mop.MopError, match="expected a file path, a pandas DataFrame"):
        mop.simulate(world["gate"], world["lm"], "Heat".split(), **API_SETTINGS)
    datasets = pytest.importorskip("datasets")
    assert mop.simulate(world["gate"], world["lm"], datasets.Dataset.from_list(contexts), seed=1,
                        **API_SETTINGS) == rows


# ------------------------------------------------------------------------------------------------- evaluate
def _texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    words = {"fresh": "brilliant moving witty superb charming".split(),
             "rotten": "dull messy flat tired".split()}
    labels = [["fresh", "rotten"][i % 2] for i in range(n)]
    return [" ".join(rng.choice(words[lab], 5)) + f" film {rng.integers(50)}" for lab in labels], labels


def test_evaluate_population_gives_the_report_of_mop_evaluate(world, tmp_path):
    real_texts, real_labels = _texts(40, 0)
    real = _jsonl(tmp_path / "real.jsonl",
                  [{"text": t, "label": lab} for t, lab in zip(real_texts, real_labels)])
    sets = {}
    for method, seed in (("mop", 1), ("zerogen", 2)):
        texts, labels = _texts(30, seed)
        sets[method] = [{"id": f"r{i}-0", "record_id": f"r{i}", "label": lab, "method": method,
                         "model": "tiny", "text": t} for i, (t, lab) in enumerate(zip(texts, labels))]
    files = [_jsonl(tmp_path / f"{m}.jsonl", rows) for m, rows in sets.items()]
    options = ["--embedder", world["embedder"], "--mauve-seeds", "1", "--bootstrap", "10",
               "--mauve-bootstrap", "2", "--seed", "4"]
    assert main(["evaluate", "--real", real, "--synthetic", *files, *options, "--no-progress",
                 "--output", str(tmp_path / "cli.json")]) == 0
    cli = json.loads((tmp_path / "cli.json").read_text())
    kw = {"embedder": world["embedder"], "mauve_seeds": 1, "bootstrap": 10, "mauve_bootstrap": 2, "seed": 4,
          "progress": False}

    def metrics(report):
        return [{k: r[k] for k in ("name", "n", "fid", "mauve", "kl_cosine", "f1", "ci95", "diversity",
                                   "length")} for r in report["rows"]]

    from_files = mop.evaluate_population(files, real=real, **kw)
    assert metrics(from_files) == metrics(cli) and from_files["real"] == cli["real"]
    assert [r["file"] for r in from_files["rows"]] == files
    # rows in memory and real texts as a list: the same figures
    in_memory = mop.evaluate_population(list(sets.values()), real=real_texts, real_labels=real_labels, **kw)
    assert metrics(in_memory) == metrics(cli)
    assert {r["name"] for r in in_memory["rows"]} == {"mop/tiny", "zerogen/tiny"}
    assert cli["rows"][1]["fid"] > 0 and cli["rows"][0]["f1"] is not None
    named = mop.evaluate_population({"a": sets["mop"]}, real=real, **kw)
    assert named["rows"][0]["name"] == "a" and named["rows"][0]["fid"] == cli["rows"][0]["fid"]
    assert "| a | 30 | " in mop.format_table(named)
    with pytest.raises(mop.MopError, match="exactly one of config"):
        mop.evaluate_population(files, **kw)


# ------------------------------------------------------------------------------------------ population schema
def test_every_committed_set_loads_as_one_table_of_the_population_schema(tmp_path):
    """Each method's rows of the committed Rotten Tomatoes sets (SmolLM2 and Gemma) in one table: a
    baseline's persona is a null string, rows written before a field was recorded read it as null."""
    import pyarrow as pa
    import pyarrow.json as pj

    files = sorted(SAMPLES.glob("*.jsonl.gz"))
    smollm = [f for f in files if f.name.startswith("smollm2-135m__")]
    assert len(smollm) >= 7
    counts = {f.name: sum(1 for _ in read_rows(f)) for f in files}
    # what the schema fixes: inferred one file at a time, the tables do not concatenate
    inferred = [pj.read_json(f) for f in smollm]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        pa.concat_tables(inferred)
    table = mop.load_population(SAMPLES, as_arrow=True)
    assert table.schema == population_schema(["movie"]) and table.num_rows == sum(counts.values())
    df = mop.load_population([str(SAMPLES / "*.jsonl.gz")])
    assert list(df.columns) == list(ROW_FIELDS) and len(df) == sum(counts.values())
    by = df.groupby(["model", "method"]).size().to_dict()
    for f in files:
        model, method = f.name.split(".")[0].split("__")
        assert by[(model, method)] == counts[f.name]
    methods = set(df["method"])
    assert {"mop", "uniform", "persona", "fewshot", "zerogen", "attrprompt"} <= methods
    has_persona = df["persona"].notna()
    assert not has_persona[df["method"].isin(["fewshot", "zerogen", "attrprompt"])].any()
    assert has_persona[df["method"].isin(["mop", "uniform", "persona"])].all()
    assert df["text"].notna().all() and df["context"].map(lambda c: bool(c["movie"])).all()
    attrs = df.loc[df["method"] == "attrprompt", "attributes"]
    assert attrs.map(lambda a: set(a) == {"style", "length", "aspect"}).all()
    # rows from before gate_temperature / exemplar_label / top_p were recorded read their values then
    assert set(df["gate_temperature"]) == {1.0} and set(df["exemplar_label"]) == {"any"}
    assert df["gate_sha"].isna().all() and df["max_new_tokens"].isna().all()
    # the datasets library with the published Features
    datasets = pytest.importorskip("datasets")
    data_files = [str(f) for f in files]
    ds = datasets.load_dataset("json", data_files=data_files, features=mop.population_features(["movie"]),
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == table.num_rows and ds.features == mop.population_features(["movie"])
    assert ds.data.table.column("persona").to_pylist() == table.column("persona").to_pylist()


def test_the_schema_reads_rows_as_written_and_refuses_what_does_not_fit(tmp_path):
    row = {"id": "m0-0", "record_id": "m0", "context": {"movie": "Heat"}, "label": "fresh",
           "persona_id": "p1", "persona": "A critic.", "exemplar_id": "e3", "attributes": None,
           "temperature": 0.7, **{k: None for k in IDENTITY}, "model": "tiny", "method": "mop", "seed": 0,
           "gate_temperature": 2.0, "exemplar_label": "match", "top_p": 0.9, "stop": ["\n"],
           "max_new_tokens": 12, "text": "Good."}
    baseline = {**row, "id": "m0-1", "method": "zerogen", "persona_id": None, "persona": None,
                "exemplar_id": None}
    path = _jsonl(tmp_path / "a.jsonl", [row, baseline])
    with open(path, "a") as fh:
        fh.write('{"id": "m0-2", "text": "a torn')  # an interrupted run's last line is left out
    df = mop.load_population(path)
    assert df["id"].tolist() == ["m0-0", "m0-1"] and df.loc[0, "context"] == {"movie": "Heat"}
    assert df.loc[0, "stop"] == ["\n"] and int(df.loc[0, "max_new_tokens"]) == 12
    settings = (df.loc[0, "gate_temperature"], df.loc[0, "exemplar_label"], df.loc[0, "top_p"])
    assert settings == (2.0, "match", 0.9)
    assert df["persona"].isna().tolist() == [False, True]
    _jsonl(tmp_path / "bad.jsonl", [{**row, "seed": "zero"}])
    with pytest.raises(mop.MopError, match="do not fit the population schema"):
        mop.load_population(tmp_path / "bad.jsonl")
    with pytest.raises(mop.MopError, match="does not exist"):
        mop.load_population(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------ the documented example
def _first_python_block(path) -> str | None:
    match = re.search(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)
    return match.group(1) if match else None


@pytest.mark.slow  # SmolLM2 on CPU, the example then mop generate: about a minute on 2 cores
@pytest.mark.parametrize("document", ["README.md", "docs/api.md"])
def test_the_python_example_runs_as_written_and_gives_the_cli_rows(document, tmp_path, monkeypatch, capsys):
    """The first ```python block of the document runs as written (from the repository root, offline, on the
    committed Rotten Tomatoes export), and ``mop generate`` with the settings its rows record writes the same
    rows for the same contexts."""
    code = _first_python_block(REPO / document)
    assert code is not None, f"{document} has no ```python block (the Python API's example goes there)"
    assert EXAMPLE_GATE.is_dir()
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, document, "exec"), namespace)  # noqa: S102 - the documented example, as written
    printed = capsys.readouterr().out
    rows, contexts = namespace["rows"], namespace["contexts"]
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    assert 1 <= len(rows) <= 8 and all(r["text"] for r in rows) and printed.strip()
    first = rows[0]
    ctx = _jsonl(tmp_path / "contexts.jsonl", contexts)  # without ids: c000000, c000001, ... for both
    args = ["generate", "--gating", str(namespace["gate"].directory), "--model", first["model"],
            "--contexts", ctx, "--num-samples", str(len(rows)), "--seed", str(first["seed"]),
            "--method", first["method"], "--gate-temperature", str(first["gate_temperature"]),
            "--exemplar-label", first["exemplar_label"], "--top-p", str(first["top_p"]), "--no-progress"]
    for key, flag in (("sampling_temperature", "--temperature"), ("max_new_tokens", "--max-new-tokens")):
        if first[key] is not None:
            args += [flag, str(first[key])]
    if first["stop"] is not None:
        args += ["--stop", *first["stop"]]
    out = tmp_path / "cli.jsonl"
    assert main([*args, "--output", str(out)]) == 0
    cli = {r["id"]: r for r in read_rows(out)}
    assert {r["id"]: r for r in rows} == cli
