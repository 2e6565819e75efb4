"""Generated-population files: one resumable JSONL, written by one process or by many ranks.

One process appends rows to the output itself (:class:`OutputFile`). Several ranks
(``mop generate --devices N``, ``--num-nodes``) each append to a part file of their own,
``<output>.parts/rank<r>-of-<W>.jsonl``, and rank 0 merges the output and every part into the output when all
ranks are done (:meth:`ShardedOutput.merge`: written to a temporary file, then renamed over the output, so a
kill leaves either the old or the new file).

Every file is appended one complete line per row and fsync'ed per batch, so a kill -9 loses at most the batch
being written and leaves at most one torn last line. Resuming (with the same or another number of ranks) reads
the output and every part, old runs' parts included: their complete lines are done, their torn last lines are
ignored (and cut from the files the reader owns), and only the missing samples are generated. The merge keeps
the first line of each id, so no id ever appears twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mop.errors import MopError

IDENTITY = ("model", "adapter", "method", "seed", "gate_temperature", "exemplar_label", "top_p", "gate_sha",
            "prompt_sha", "sampling_temperature", "max_new_tokens", "stop", "engine")
# the value of an identity key in rows written before the key existed (rows before engines: the hf engine's)
IDENTITY_DEFAULTS = {"gate_temperature": 1.0, "exemplar_label": "any", "top_p": 1.0, "engine": "hf"}
# keys that rows written before they existed did not record (their value then is unknown, and not compared)
UNRECORDED = ("gate_sha", "prompt_sha", "sampling_temperature", "max_new_tokens", "stop")

# ------------------------------------------------------------------------------------ the population schema
# The fields of a generated row, in the order ``mop generate`` writes them, and their Arrow types: one schema
# for the rows of every method (a baseline's persona is a null string, not a column of another type).
# ``context`` and ``attributes`` are structs of strings: the fields of the contexts the rows were generated
# for (e.g. movie) and the attrprompt baseline's attribute names (null in the other methods' rows). Rows
# written before a field of IDENTITY existed read it as null (or as its IDENTITY_DEFAULTS value).
# ``engine_version`` (the engine's runtime version, recorded but not compared on resume) is null in them.
ROW_FIELDS = ("id", "record_id", "context", "label", "persona_id", "persona", "exemplar_id", "attributes",
              "temperature", *IDENTITY, "engine_version", "text")
FIELD_TYPES = {"id": "string", "record_id": "string", "context": "struct<string>", "label": "string",
               "persona_id": "string", "persona": "string", "exemplar_id": "string",
               "attributes": "struct<string>", "temperature": "float64", "model": "string",
               "adapter": "string", "method": "string", "seed": "int64", "gate_temperature": "float64",
               "exemplar_label": "string", "top_p": "float64", "gate_sha": "string", "prompt_sha": "string",
               "sampling_temperature": "float64", "max_new_tokens": "int64", "stop": "list<string>",
               "engine": "string", "engine_version": "string", "text": "string"}


def read_lines(path: Path) -> tuple[list[bytes], int, int]:
    """The complete lines of a JSONL file (without their newlines), the byte offset after the last one and the
    file's size (larger when the last line is torn)."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    return data[:cut].split(b"\n")[:-1], cut, len(data)


def parse_ids(path: Path, lines: Sequence[bytes], identity: dict[str, Any]) -> list[str]:
    """The ids of generated rows, after checking the file holds rows of this run's settings."""
    ids, first = [], None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            ids.append(None)
            continue
        try:
            row = json.loads(line)
            ids.append(str(row["id"]))
        except (ValueError, KeyError, TypeError) as err:
            raise MopError(f"output '{path}' line {n} is not a generated row "
                           "(invalid JSON or no id): choose another --output") from err
        if first is None:
            first = row
    if first is not None:
        keys = [k for k in IDENTITY if k in first or k not in UNRECORDED]
        theirs = {k: first.get(k, IDENTITY_DEFAULTS.get(k)) for k in keys}
        ours = {k: identity.get(k, IDENTITY_DEFAULTS.get(k)) for k in keys}
        if theirs != ours:
            if theirs["engine"] != ours["engine"]:
                raise MopError(f"output '{path}' was generated with engine {theirs['engine']!r}: resume it "
                               f"with --engine {theirs['engine']}, or choose another --output for engine "
                               f"{ours['engine']!r}")
            diff = ", ".join(f"{k} {theirs[k]!r} (now {ours[k]!r})" for k in keys if theirs[k] != ours[k])
            raise MopError(f"output '{path}' holds rows generated with other settings: {diff}; "
                           "choose another --output rather than mixing them")
    return ids


def effective_number(ids: Iterable) -> float | None:
    """exp(entropy) of the empirical distribution of the ids (how many are used, weighted by use); None for
    none. ``ids`` may also be a Counter of them."""
    import math
    from collections import Counter

    counts = (ids if isinstance(ids, Counter) else Counter(ids)).values()
    total = sum(counts)
    if not total:
        return None
    return round(math.exp(-sum(c / total * math.log(c / total) for c in counts)), 2)


def population_usage(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What a generated population drew: personas and exemplars used (and their effective numbers, so a set
    drawn from few components shows), empty texts and mean length in words. One pass; memory grows with the
    distinct ids only."""
    from collections import Counter

    personas, exemplars = Counter(), Counter()
    n = empty = words = 0
    for r in rows:
        n += 1
        if r.get("persona_id") is not None:
            personas[r["persona_id"]] += 1
        if r.get("exemplar_id") is not None:
            exemplars[r["exemplar_id"]] += 1
        empty += not r.get("text")
        words += len(str(r.get("text") or "").split())
    return {"rows": n, "personas_used": len(personas), "exemplars_used": len(exemplars),
            "effective_personas": effective_number(personas),
            "effective_exemplars": effective_number(exemplars), "empty": empty,
            "mean_words": round(words / n, 1) if n else None}


def read_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a generated-population file (``.jsonl``, or ``.jsonl.gz``), one at a time (a torn last
    line is skipped)."""
    import gzip

    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n") and line.strip():
                yield json.loads(line)


def population_files(paths) -> list[Path]:
    """The files of ``paths``: a file, a folder (its ``*.jsonl`` and ``*.jsonl.gz``), a glob pattern, or a
    list of these."""
    import glob

    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted([*p.glob("*.jsonl"), *p.glob("*.jsonl.gz")])
        elif any(c in str(item) for c in "*?["):
            found = [Path(f) for f in sorted(glob.glob(str(p)))]
        else:
            found = [p]
        if not found:
            raise MopError(f"population '{item}': no .jsonl or .jsonl.gz file there")
        missing = [f for f in found if not f.is_file()]
        if missing:
            raise MopError(f"population file '{missing[0]}' does not exist")
        files += found
    if not files:
        raise MopError("no population file given")
    return files


def population_fields(rows: Iterable[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(context fields, attribute names) of generated rows, in the order first seen; the attribute names
    default to the attrprompt baseline's built-in ones when no row has attributes."""
    from mop.generate import DEFAULT_ATTRIBUTES

    context: dict[str, None] = {}
    attributes: dict[str, None] = {}
    for r in rows:
        context.update(dict.fromkeys(r.get("context") or {}))
        attributes.update(dict.fromkeys(r.get("attributes") or {}))
    return list(context), list(attributes) or list(DEFAULT_ATTRIBUTES)


def population_schema(context: Sequence[str] = ("movie",), attributes: Sequence[str] | None = None):
    """The pyarrow schema of generated rows (:data:`ROW_FIELDS`), whatever the method: ``context`` the
    contexts' fields (a struct of strings), ``attributes`` the attrprompt attribute names (default: the
    built-in style / length / aspect)."""
    import pyarrow as pa

    from mop.generate import DEFAULT_ATTRIBUTES

    if attributes is None:
        attributes = list(DEFAULT_ATTRIBUTES)
    scalar = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(),
              "list<string>": pa.list_(pa.string())}
    structs = {"context": list(context), "attributes": list(attributes)}
    fields = []
    for name in ROW_FIELDS:
        kind = FIELD_TYPES[name]
        if kind == "struct<string>":
            fields.append(pa.field(name, pa.struct([pa.field(str(f), pa.string()) for f in structs[name]])))
        else:
            fields.append(pa.field(name, scalar[kind]))
    return pa.schema(fields)


def population_features(context: Sequence[str] = ("movie",), attributes: Sequence[str] | None = None):
    """:func:`population_schema` as ``datasets.Features``, for
    ``datasets.load_dataset("json", data_files=..., features=population_features(...))`` (needs the
    ``datasets`` package)."""
    try:
        from datasets import Features
    except ImportError as err:
        raise MopError("population_features needs the datasets package: pip install datasets") from err
    return Features.from_arrow_schema(population_schema(context, attributes))


def population_table(rows: Sequence[dict[str, Any]], context: Sequence[str] | None = None,
                     attributes: Sequence[str] | None = None, where: str = "rows"):
    """Generated rows as one pyarrow Table of :func:`population_schema`: fields a row lacks are null (but
    gate_temperature, exemplar_label and top_p, which rows written before they were recorded lack, take the
    value those rows were sampled with: IDENTITY_DEFAULTS), fields outside the schema are left out;
    ``context`` / ``attributes``: inferred from the rows when None."""
    import pyarrow as pa

    # rows written before gate_temperature, exemplar_label and top_p were recorded had their defaults
    rows = [r if all(k in r for k in IDENTITY_DEFAULTS) else {**IDENTITY_DEFAULTS, **r} for r in rows]
    if context is None or attributes is None:
        seen_context, seen_attributes = population_fields(rows)
        context = seen_context if context is None else context
        attributes = seen_attributes if attributes is None else attributes
    schema = population_schema(context, attributes)
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise MopError(f"{where} do not fit the population schema: {err}") from err


def population_frame(table):
    """A population Table as a pandas DataFrame: strings, floats (NaN for null), nullable Int64 integers,
    ``context`` / ``attributes`` as dicts (None where null) and ``stop`` as lists."""
    import pandas as pd
    import pyarrow as pa

    df = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    df["stop"] = [None if v is None else list(v) for v in table.column("stop").to_pylist()]
    return df


def load_population(paths, *, context: Sequence[str] | None = None, attributes: Sequence[str] | None = None,
                    as_arrow: bool = False):
    """Generated-population files (any method, any mix) as one table of :func:`population_schema`.

    ``paths``: a file (``.jsonl`` or ``.jsonl.gz``), a folder, a glob pattern or a list of these. A pandas
    DataFrame (``as_arrow=True``: a pyarrow Table), its rows in file order; ``context`` / ``attributes``:
    the struct fields (default: every one the rows hold).
    """
    import pyarrow as pa

    files = population_files(paths)
    per_file = [list(read_rows(f)) for f in files]
    if not any(per_file):
        raise MopError(f"no rows in {', '.join(map(str, files))}")
    if context is None or attributes is None:
        seen_context, seen_attributes = population_fields(r for rows in per_file for r in rows)
        context = seen_context if context is None else context
        attributes = seen_attributes if attributes is None else attributes
    table = pa.concat_tables([population_table(rows, context, attributes, where=f"rows of '{f}'")
                              for f, rows in zip(files, per_file)])
    return table if as_arrow else population_frame(table)


def usage_line(usage: dict[str, Any]) -> str:
    """:func:`population_usage` in one line, as ``mop generate`` prints it."""
    parts = [f"{usage['rows']} row(s)"]
    for kind in ("personas", "exemplars"):
        if usage[f"{kind}_used"]:
            parts.append(f"{usage[f'{kind}_used']} {kind} used ({usage[f'effective_{kind}']} effective)")
    if usage["mean_words"] is not None:
        parts.append(f"{usage['mean_words']} words on average")
    return ", ".join(parts)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputFile:
    """A JSONL output appended one line per row and fsync'ed per batch; resumable.

    ``repair``: cut a torn last line (left by a kill) from the file; only the file's writer should.
    """

    def __init__(self, path: str | Path, identity: dict[str, Any], repair: bool = True):
        self.path = Path(path).expanduser()
        parent = self.path.parent
        if not parent.is_dir():
            raise MopError(f"output directory '{parent}' does not exist (create it first)")
        if self.path.is_dir():
            raise MopError(f"output '{path}' is a directory, expected a .jsonl file path")
        self.identity = identity
        self.done: set[str] = set()
        self.dropped_partial = False
        if self.path.exists():
            lines, cut, size = read_lines(self.path)
            self.done.update(i for i in parse_ids(self.path, lines, identity) if i is not None)
            if cut < size:
                if repair:
                    _truncate(self.path, cut)
                self.dropped_partial = True

    def append(self, rows: Sequence[dict]) -> None:
        """Append rows, each as one complete line in one write, then fsync."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for row in rows:
                data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                self.done.add(str(row["id"]))
            os.fsync(fd)
        finally:
            os.close(fd)


class ShardedOutput:
    """The output of one rank of a (possibly) multi-rank run: what is done, where this rank writes, the merge.

    With one rank and no part files (the usual case) rows go straight to the output, as :class:`OutputFile`.
    Otherwise this rank appends to its own part file, and :meth:`merge` (rank 0, once every rank is done)
    folds the output and the parts into the output, in ``order`` (the run's sample ids; ids outside it keep
    their file order after them), then removes the parts.
    """

    def __init__(self, path: str | Path, identity: dict[str, Any], rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size
        self.main = OutputFile(path, identity, repair=world_size == 1)
        self.path = self.main.path
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.done = set(self.main.done)
        self.dropped_partial = self.main.dropped_partial
        own = self.part_path(rank)
        for part in self.part_files():
            if part == own:
                continue
            lines, _, _ = read_lines(part)
            self.done.update(i for i in parse_ids(part, lines, identity) if i is not None)
        if world_size > 1:
            self.parts_dir.mkdir(exist_ok=True)
            self.marker(rank).unlink(missing_ok=True)  # a finished earlier run of the same shape
            self.writer = OutputFile(own, identity, repair=True)
            self.done |= self.writer.done
            self.dropped_partial |= self.writer.dropped_partial
        else:
            self.writer = self.main

    # ------------------------------------------------------------------------------------------ files
    def part_path(self, rank: int) -> Path:
        return self.parts_dir / f"rank{rank}-of-{self.world_size}.jsonl"

    def marker(self, rank: int) -> Path:
        return self.parts_dir / f"rank{rank}-of-{self.world_size}.done"

    def part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob("rank*-of-*.jsonl")) if self.parts_dir.is_dir() else []

    @property
    def needs_merge(self) -> bool:
        return bool(self.part_files())

    def append(self, rows: Sequence[dict]) -> None:
        self.writer.append(rows)
        self.done.update(str(r["id"]) for r in rows)

    def finish(self) -> None:
        """Mark this rank done (rank 0 waits for every rank's mark before it merges)."""
        if self.world_size > 1:
            self.marker(self.rank).write_text("done\n")

    # ---------------------------------------------------------------------------------------- progress
    def progress_watcher(self) -> Callable[[], tuple[int, int, bool]]:
        """For rank 0: a function returning (rows the other ranks of this run appended since now, how many of
        them have an empty text, whether those ranks have all finished), reading only the bytes added since
        its last call."""
        others = [r for r in range(self.world_size) if r != self.rank]
        offsets = {r: (self.part_path(r).stat().st_size if self.part_path(r).exists() else 0) for r in others}
        counts = [0, 0]

        def poll() -> tuple[int, int, bool]:
            finished = True
            for r in others:
                finished &= self.marker(r).exists()  # read first: the rows before the mark are then counted
                path = self.part_path(r)
                if not path.exists():
                    continue
                with open(path, "rb") as fh:
                    fh.seek(offsets[r])
                    new = fh.read()
                cut = new.rfind(b"\n") + 1
                lines = new[:cut].split(b"\n")[:-1]
                counts[0] += len(lines)
                counts[1] += sum(not json.loads(line).get("text") for line in lines if line.strip())
                offsets[r] += cut
            return counts[0], counts[1], finished

        return poll

    # ------------------------------------------------------------------------------------------- merge
    def merge(self, order: Sequence[str]) -> int:
        """Fold the output and every part file into the output (atomically), then remove the parts.

        Returns the number of rows of the merged output."""
        rank_of = {sid: n for n, sid in enumerate(order)}
        seen: set[str] = set()
        keep: list[tuple[int, int, bytes]] = []
        files = ([self.path] if self.path.exists() else []) + self.part_files()
        for path in files:
            lines, _, _ = read_lines(path)  # a torn last line is left out
            for line, sid in zip(lines, parse_ids(path, lines, self.main.identity)):
                if sid is None or sid in seen:
                    continue
                seen.add(sid)
                keep.append((rank_of.get(sid, len(order)), len(keep), line))
        keep.sort()
        tmp = self.path.with_name(f".{self.path.name}.merge-{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            for _, _, line in keep:
                fh.write(line + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return len(keep)
