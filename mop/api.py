"""The Python API: simulate a population with a gate export and any causal LM, evaluate it, load it.

    gate = mop.GateExport.from_pretrained("benchmarks/results/fidelity_scale_gate")
    rows = mop.simulate(gate, "smollm2-135m", [{"movie": "Heat", "label": "fresh"}], num_samples=2)
    report = mop.evaluate_population(rows_or_files, real=real_texts)

:func:`simulate` runs the code of ``mop generate`` (mop.generate.generate_population): the same export, model,
contexts and settings give the same rows, field for field, as the command line. :func:`evaluate_population`
runs the metrics of ``mop evaluate`` (mop.evaluate.evaluate_sets) and returns the report it writes. Every
import here is lazy: ``import mop`` loads no model and no torch. docs/api.md is the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mop.errors import MopError


# ----------------------------------------------------------------------------------------------- simulate
def _export(gate, prompt_template: str | None):
    """A GateExport from an export or its folder; with ``prompt_template``, a copy using that template (the
    caller's export is left as it was)."""
    import copy

    from mop.export import GateExport

    export = gate if isinstance(gate, GateExport) else None
    if export is None:
        if not isinstance(gate, (str, Path)):
            raise MopError(f"gate: expected a GateExport or an export folder, got {type(gate).__name__}")
        export = GateExport.from_pretrained(gate)
    if prompt_template is not None:
        from mop.prompts import validate_prompt_template

        validate_prompt_template(prompt_template, list(export.config.get("context_columns") or []))
        export = copy.copy(export)
        export.config = {**export.config, "prompt_template": prompt_template}
    return export


def _records(contexts, config: dict[str, Any]) -> list:
    """The contexts as the records ``mop generate --contexts`` makes: from a file path, a pandas DataFrame,
    anything with ``to_pandas()`` (a ``datasets.Dataset``, a pyarrow Table) or a list of dicts."""
    from mop.generate import frame_contexts, read_contexts

    if isinstance(contexts, (str, Path)):
        return read_contexts(contexts, config)
    import pandas as pd

    if isinstance(contexts, pd.DataFrame):
        return frame_contexts(contexts, config)
    if hasattr(contexts, "to_pandas"):
        return frame_contexts(contexts.to_pandas(), config)
    if isinstance(contexts, Sequence) and all(isinstance(c, Mapping) for c in contexts):
        if not contexts:
            raise MopError("no contexts to generate for")
        return frame_contexts(pd.DataFrame([dict(c) for c in contexts]), config)
    raise MopError("contexts: expected a file path, a pandas DataFrame, a datasets.Dataset or a list of "
                   f"dicts, got {type(contexts).__name__}")


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def simulate(
    gate,
    model,
    contexts,
    *,
    num_samples: int | None = None,
    method: str = "mop",
    seed: int = 0,
    shuffle: bool = False,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    top_p: float = 1.0,
    temperature: float | None = None,
    gate_temperature: float = 1.0,
    exemplar_label: str = "auto",
    stop: Sequence[str] | None = None,
    chat_template: str = "auto",
    prompt_template: str | None = None,
    attributes: str | Path | Mapping[str, Sequence[str]] | None = None,
    adapter: str | None = None,
    embedder: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    engine: str = "auto",
    output: str | Path | None = None,
    as_frame: bool = False,
    progress: bool = True,
):
    """Sample a synthetic population: for each context a persona and an exemplar from the gate, then the LM
    at the persona's temperature. The same arguments give the rows ``mop generate`` writes.

    Args:
        gate: a :class:`mop.GateExport`, or the folder of one.
        model: a bundled LM name (``smollm2-135m``, ``gemma3-270m``), a local folder or a hub id (loaded on
            ``device`` in ``dtype``, with ``adapter``), or an already loaded ``(model, tokenizer)`` pair of
            Hugging Face objects (``mop.load_lm`` returns one: load once, simulate many times), or a loaded
            engine (``mop.engines.load_engine``, e.g. a vLLM engine: load once, simulate many times).
        contexts: a pandas DataFrame, a list of dicts, a ``datasets.Dataset`` (anything with ``to_pandas()``)
            or a CSV / JSONL / Parquet path: every field the export's templates use (e.g. movie, label) and
            optionally a unique ``id`` (else the records are ``c000000``, ``c000001``, ...).
        num_samples: rows to generate (default: one per context); the contexts are cycled.
        method, seed, shuffle, batch_size, max_new_tokens, top_p, temperature, gate_temperature,
            exemplar_label, stop, chat_template: as ``mop generate``'s options (mop.generate.Sampling);
            ``method``: mop, uniform, persona, fewshot, zerogen, attrprompt, mop-no-exemplar,
            mop-random-persona.
        prompt_template: a template to use instead of the export's (``--prompt-template``).
        attributes: attrprompt's attribute lists: a JSON / YAML file or a dict name -> values (default: the
            built-in style / length / aspect lists).
        adapter: a PEFT adapter folder attached to a model given by name.
        embedder: the contexts' sentence embedder (default: the export's; gated methods only).
        device: auto (the GPU when there is one), cpu, cuda, cuda:N; ignored for a loaded model (its own).
        dtype: float32, bfloat16 or float16 for a model given by name (default: the checkpoint's).
        engine: the generation engine of a model given by name: hf (mop's decode loop), vllm (vLLM, an extra)
            or auto (vllm on a CUDA device where it is installed, else hf); as ``mop generate --engine``.
        output: a JSONL path to write the rows to as well, resumable like ``mop generate --output`` (default:
            a temporary file, removed).
        as_frame: return a pandas DataFrame of the population schema (mop.outputs.population_schema) rather
            than a list of dicts.
        progress: show progress bars.

    Returns:
        The ``num_samples`` rows in sample order, each a dict with the fields of ``mop generate``'s JSONL
        (id, record_id, context, label, persona_id, persona, exemplar_id, attributes, temperature, the run's
        settings and text), or a DataFrame with ``as_frame=True``.
    """
    import tempfile

    from mop.generate import (
        GATED,
        Sampling,
        embed_contexts,
        generate_population,
        load_attributes,
        sample_plan,
    )
    from mop.outputs import population_frame, population_table, read_rows

    export = _export(gate, prompt_template)
    records = _records(contexts, export.config)
    sampling = Sampling(num_samples=len(records) if num_samples is None else int(num_samples), method=method,
                        seed=int(seed), shuffle=shuffle, batch_size=batch_size, max_new_tokens=max_new_tokens,
                        top_p=top_p, temperature=temperature, gate_temperature=gate_temperature,
                        exemplar_label=exemplar_label, stop=None if stop is None else list(stop),
                        chat_template=chat_template)
    sampling.check()
    if attributes is not None and method != "attrprompt":
        raise MopError("attributes are only used by method attrprompt")
    attribute_lists = None
    if method == "attrprompt":
        attribute_lists = ({str(k): [str(v) for v in vs] for k, vs in attributes.items()}
                           if isinstance(attributes, Mapping) else load_attributes(attributes))

    from mop.engines import ENGINES, Engine, load_engine, resolve_engine

    if engine not in (*ENGINES, "auto"):
        raise MopError(f"unknown engine '{engine}', expected one of {', '.join(ENGINES)} or auto")
    if isinstance(model, (str, Path)):
        from mop.assets import check_model_path, load_lm

        model_name = str(model)
        check_model_path(model_name, "model")
        engine = resolve_engine(engine, device)
        device = _device(device)
        if engine == "hf":
            lm, tokenizer = load_lm(model_name, dtype=dtype, device=device, adapter=adapter)
        else:
            lm = load_engine(engine, model_name, dtype=dtype, device=device, adapter=adapter)
            tokenizer = lm.tokenizer
    elif isinstance(model, Engine):
        if adapter is not None or dtype is not None:
            raise MopError("adapter and dtype apply to a model given by name; give them to the engine's load")
        lm, tokenizer = model, model.tokenizer
        model_name = str(getattr(model, "mop_name", None) or type(model).__name__)
        device = _device(device) if model.model is None else str(
            model.model.get_input_embeddings().weight.device)
    elif isinstance(model, (tuple, list)) and len(model) == 2:
        if engine == "vllm":
            raise MopError("a loaded (model, tokenizer) pair runs on the hf engine; give engine='vllm' a "
                           "model by name, or pass a loaded vLLM engine (mop.engines.load_engine)")
        lm, tokenizer = model
        if adapter is not None or dtype is not None:
            raise MopError("adapter and dtype apply to a model given by name; attach or cast a loaded model "
                           "yourself")
        model_name = str(getattr(lm, "mop_name", None) or getattr(lm, "name_or_path", None)
                         or type(lm).__name__)
        device = str(lm.get_input_embeddings().weight.device)
    else:
        raise MopError("model: expected a bundled name, a folder or hub id, a (model, tokenizer) pair or an "
                       f"engine, got {type(model).__name__}")

    context_emb = None
    if method in GATED:
        from mop.assets import check_model_path
        from mop.embed import Embedder

        check_model_path(embedder or export.embedder, "embedder", role="embedder")
        context_embedder = Embedder(embedder or export.embedder)
        export.check_embed_dim(context_embedder.dim)
        context_embedder.device = device if device != "auto" else _device(device)

        def context_emb(positions):
            return embed_contexts(export, [records[p] for p in positions], context_embedder)

    with tempfile.TemporaryDirectory(prefix="mop-simulate-") as tmp:
        path = Path(output).expanduser() if output is not None else Path(tmp) / "population.jsonl"
        generate_population(export, lm, tokenizer, records, path, sampling, context_emb=context_emb,
                            model_name=model_name, adapter=adapter, attributes=attribute_lists,
                            progress=progress)
        by_id = {r["id"]: r for r in read_rows(path)}
    rows = [by_id[sid] for _, sid in sample_plan(records, sampling.num_samples,
                                                 sampling.seed if sampling.shuffle else None)]
    return population_frame(population_table(rows)) if as_frame else rows


# ----------------------------------------------------------------------------------------------- evaluate
def _is_set(value) -> bool:
    """One set of texts: a path, a DataFrame (or anything with ``to_pandas()``) or a list of row dicts."""
    import pandas as pd

    return (isinstance(value, (str, Path, pd.DataFrame)) or hasattr(value, "to_pandas")
            or (isinstance(value, Sequence) and bool(value) and all(isinstance(r, Mapping) for r in value)))


def _frame(value, where: str):
    """(DataFrame, file path or None) of one set."""
    import pandas as pd

    if isinstance(value, (str, Path)):
        from mop.data import read_table

        return read_table(value), str(value)
    if isinstance(value, pd.DataFrame):
        return value, None
    if hasattr(value, "to_pandas"):
        return value.to_pandas(), None
    if isinstance(value, Sequence) and value and all(isinstance(r, Mapping) for r in value):
        return pd.DataFrame([dict(r) for r in value]), None
    raise MopError(f"{where}: expected a file path, a DataFrame or a list of row dicts, got "
                   f"{type(value).__name__}")


def _synthetic(synthetic, names: Sequence[str] | None):
    """{name: (texts, labels)}, {name: file}, {name: record ids or None}: as mop.evaluate._synthetic_sets
    makes of files, for files and rows in memory alike."""
    from mop.evaluate import _table_texts, set_name

    if isinstance(synthetic, Mapping) and not _is_set(synthetic):
        given = [(str(k), v) for k, v in synthetic.items()]
    elif _is_set(synthetic):
        given = [(None, synthetic)]
    elif isinstance(synthetic, Sequence) and synthetic and all(_is_set(s) for s in synthetic):
        given = [(None, s) for s in synthetic]
    else:
        raise MopError("synthetic: expected a file path, rows (a list of dicts or a DataFrame), a list of "
                       "these or a dict name -> one of these")
    if names is not None:
        if len(names) != len(given):
            raise MopError(f"names gives {len(names)} name(s) for {len(given)} synthetic set(s)")
        given = [(str(n), v) for n, (_, v) in zip(names, given)]
    sets, files, record_ids = {}, {}, {}
    for n, (name, value) in enumerate(given):
        df, path = _frame(value, f"synthetic set {n + 1}")
        where = path or f"synthetic set {n + 1}"
        texts, labels, first = _table_texts(df, where)
        if name is None:
            name = set_name(path or f"set{n + 1}", first)
            if name in sets:
                name = f"{name} ({Path(path).name if path else n + 1})"
        elif name in sets:
            raise MopError(f"duplicate set name '{name}'")
        sets[name] = (texts, labels)
        if path:
            files[name] = path
        has_ids = "record_id" in df.columns and not df["record_id"].isna().any()
        record_ids[name] = [str(v) for v in df["record_id"]] if has_ids else None
    return sets, files, record_ids


def _texts(value, labels, where: str, text_field: str | None):
    """(texts, labels) of real texts given as a file path, a DataFrame or a list of strings."""
    from mop.evaluate import _table_texts

    if isinstance(value, (str, Path)) or not (isinstance(value, Sequence) and all(isinstance(t, str)
                                                                                    for t in value)):
        df, path = _frame(value, where)
        texts, file_labels, _ = _table_texts(df, path or where, text_field)
        return texts, file_labels if labels is None else list(labels)
    return list(value), None if labels is None else list(labels)


def evaluate_population(
    synthetic,
    real=None,
    *,
    real_labels: Sequence | None = None,
    config: str | Path | None = None,
    split: str = "test",
    same_contexts: bool = False,
    reference=None,
    reference_split: str | None = None,
    names: Sequence[str] | None = None,
    embedder=None,
    sample_size: int | None = None,
    text_field: str | None = None,
    seed: int = 0,
    mauve_seeds: int = 5,
    bootstrap: int = 200,
    mauve_bootstrap: int = 20,
    device: str = "auto",
    embed_batch_size: int = 64,
    output: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The fidelity report of ``mop evaluate``: FID, MAUVE, KL-cosine and downstream F1 of each synthetic set
    against the real held-out texts, every set at the same n, with 95% bootstrap intervals, the reference row
    and each set's diversity and lengths (mop.evaluate.evaluate_sets).

    Args:
        synthetic: one set or several: a population file (``mop generate``'s JSONL, or a CSV / Parquet with a
            text column), rows (a list of dicts, e.g. :func:`simulate`'s, or a DataFrame), a list of these,
            or a dict name -> one of these.
        real: the real held-out texts: a file (text or response column, optional label), a DataFrame or a
            list of strings (``real_labels``: their labels, optional). Or give ``config`` instead.
        config: a train config or dataset YAML whose ``split`` holds the real texts (``-c``).
        same_contexts: with ``config``: the real texts of the records the rows were generated for, in row
            order (``--same-contexts``).
        reference: with ``real``: real training texts for the reference row (a file, a DataFrame or a list of
            strings); with ``config`` use ``reference_split`` (default train; "none": no reference row).
        names: one name per synthetic set (default: the dict's keys, else ``<method>/<model>`` of its rows).
        embedder: a bundled name, a folder or any object with ``encode(texts) -> (N, D)`` (default: the
            config's data.embedder, else minilm-l6).
        sample_size, text_field, seed, mauve_seeds, bootstrap, mauve_bootstrap, device, embed_batch_size:
            as ``mop evaluate``'s options.
        output: also write the report there as JSON (what ``mop evaluate --output`` writes).
        progress: show progress bars.

    Returns:
        The report dict ``mop evaluate`` writes: ``rows`` (one per set: name, n, fid, mauve, kl_cosine, f1,
        ci95, diversity, length, notes, ...), ``reference``, ``real``, ``n``, ``embedder``, ``notes``, ...;
        ``mop.format_table(report)`` is the table it prints.
    """
    import time

    from mop.evaluate import (
        MIN_TEXTS,
        _configured_embedder,
        _make_embedder,
        _real_sets,
        _same_context_sets,
        evaluate_sets,
        write_json_atomic,
    )

    t0 = time.perf_counter()
    if (config is None) == (real is None):
        raise MopError("pass exactly one of config (a dataset's split) and real (the real held-out texts)")
    if same_contexts and config is None:
        raise MopError("same_contexts reads the real texts from config's dataset, not from real")
    if config is not None and reference is not None:
        raise MopError("reference goes with real; with config use reference_split")
    if real is not None and reference_split not in (None, "none"):
        raise MopError("reference_split goes with config; with real pass reference")
    if config is not None and (reference_split or "train") == split:
        raise MopError(f"reference_split '{split}' is the evaluated split itself")
    if sample_size is not None and sample_size < MIN_TEXTS:
        raise MopError(f"sample_size must be at least {MIN_TEXTS}, got {sample_size}")
    sets, files, record_ids = _synthetic(synthetic, names)
    configured = None
    if config is not None and same_contexts:
        missing = [name for name, ids in record_ids.items() if ids is None]
        if missing:
            raise MopError("same_contexts reads each row's record_id (rows as mop generate writes them); "
                           f"none in {', '.join(missing)}")
        real_texts, labels, reference_set, source, sets = _same_context_sets(
            str(config), split, sets, {n: files.get(n, n) for n in sets}, record_ids, sample_size, seed,
            reference_split)
        configured = _configured_embedder(str(config))
    elif config is not None:
        real_texts, labels, reference_set, source, configured = _real_sets(
            str(config), None, split, reference_split, None, text_field)
    else:
        real_texts, labels = _texts(real, real_labels, "real", text_field)
        reference_set = None if reference is None else _texts(reference, None, "reference", text_field)
        source = {"real": str(real) if isinstance(real, (str, Path)) else "in memory",
                  "reference": (str(reference) if isinstance(reference, (str, Path))
                                else None if reference is None else "in memory")}
    if embedder is None or isinstance(embedder, (str, Path)):
        from mop.assets import DEFAULT_EMBEDDER

        embedder_name = str(embedder or configured or DEFAULT_EMBEDDER)
        embedder = _make_embedder(embedder_name, device, embed_batch_size)
    else:
        embedder_name = getattr(embedder, "name", type(embedder).__name__)
    result = evaluate_sets(real_texts, labels, sets, embedder, reference_train=reference_set,
                           sample_size=sample_size, seed=seed, mauve_seeds=tuple(range(mauve_seeds)),
                           progress=progress, bootstrap=bootstrap, mauve_bootstrap=mauve_bootstrap)
    for row in result["rows"]:
        if row["name"] in files:
            row["file"] = files[row["name"]]
    result["embedder"] = embedder_name
    result["real"].update(source)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if output is not None:
        write_json_atomic(result, output)
    return result
