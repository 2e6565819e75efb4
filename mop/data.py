"""Population data: a dataset spec, loaders for bundled corpora and user files, and deterministic splits.

A population is a list of :class:`Record` (x_i, y_i): a response text, the context fields it answers, an
optional label and an optional group (e.g. the movie) that never spans two splits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mop.assets import BUNDLED_DATASETS, bundled_dataset_path
from mop.errors import MopError, did_you_mean, refuse_unknown_keys
from mop.types import NonNegativeInt

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One member of the population: context fields x and the observed response y."""

    id: str
    response: str
    context: dict[str, str]
    label: str | None = None
    group: str | None = None


@dataclass
class DatasetSpec:
    """Where the population comes from and how records are made and split.

    Args:
        source: a bundled name (``rotten-tomatoes``, ``guardian-headlines``, ``anes96``) or a CSV / JSONL /
            Parquet path.
        response_column: column holding the response text (bundled sources set their own).
        context_columns: columns that form the context x, rendered through ``context_template``.
        label_column: optional label column (also available to templates as ``{label}``).
        group_column: optional column whose values never span two splits (e.g. a movie).
        id_column: optional column of unique record ids; otherwise ids are ``r<row number>`` of the source.
        context_template: Python format string over the context fields and ``label``; a line whose fields
            are all empty is dropped (e.g. a missing plot summary).
        min_words: drop responses with fewer words.
        max_words: drop responses with more words (None: no limit).
        split: train / val / test fractions, each in (0, 1), summing to 1.
        seed: seed of the split (and of the subsampling below).
        max_records: optional per-split caps, e.g. ``{"train": 400}``, applied after splitting.
        options: closed-ended responses (a survey, mop.survey): the answer options, as one list for every
            record, a mapping from label (the question) to its list, or ``infer`` (each label's distinct
            responses, in order of first appearance, at most 20). Every response must be one of its record's
            options. None: free text.
        ordinal: the labels (questions) whose options are an ordered scale, listed in order (Wasserstein
            distance in the survey evaluation); ``all`` for every one.
    """

    source: str = "rotten-tomatoes"
    response_column: str | None = None
    context_columns: list[str] | None = None
    label_column: str | None = None
    group_column: str | None = None
    id_column: str | None = None
    context_template: str | None = None
    min_words: int = 1
    max_words: int | None = None
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0
    max_records: dict[str, int] | None = None
    options: list[str] | dict[str, list[str]] | Literal["infer"] | None = None
    ordinal: list[str] | Literal["all"] | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "dataset") -> DatasetSpec:
        refuse_unknown_keys(raw, [f.name for f in dataclasses.fields(cls)], where)
        return cls(**raw)


# ------------------------------------------------------------------------------------------- bundled corpora
_SMALL_WORDS = {"a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "for", "with", "by", "from",
                "vs"}
_ARTICLES = ("the", "a", "an")


def title_from_slug(slug: str) -> str:
    """'laramie_project_the' -> 'The Laramie Project'; 'return_to_never_land' -> 'Return to Never Land'."""
    words = [w for w in re.split(r"[_\-\s]+", str(slug).strip()) if w]
    if len(words) > 1 and words[-1].lower() in _ARTICLES:  # catalogue order: "matrix_the"
        words = [words[-1]] + words[:-1]
    out = []
    for i, w in enumerate(words):
        lw = w.lower()
        out.append(lw if 0 < i < len(words) - 1 and lw in _SMALL_WORDS else lw[:1].upper() + lw[1:])
    return " ".join(out)


def _rotten_tomatoes_frame(path: Path):
    import pandas as pd

    df = pd.read_csv(path)
    plots = (df[df["category"] == "plot"].dropna(subset=["text"]).drop_duplicates("movie_name")
             .set_index("movie_name")["text"])
    reviews = df[df["category"].isin(["fresh", "rotten"])].copy()
    reviews["movie"] = reviews["movie_name"].map(title_from_slug)
    reviews["plot"] = reviews["movie_name"].map(plots).fillna("")
    reviews = reviews.rename(columns={"category": "label", "text": "review"})
    return reviews[["review", "movie", "plot", "label", "movie_name"]]


# ANES 1996 (statsmodels/datasets/anes96, 944 respondents; the codes' meanings are in that folder's data.py):
# one record per (respondent, question), labelled by the question, grouped by respondent
ANES_QUESTIONS = {  # key: (question, column, options, code of the first option)
    "party_id": ("Party identification", "PID",
                 ["Strong Democrat", "Weak Democrat", "Independent, leaning Democrat", "Independent",
                  "Independent, leaning Republican", "Weak Republican", "Strong Republican"], 0),
    "vote": ("Expected vote in the 1996 presidential election", "vote", ["Clinton", "Dole"], 0),
}
_ANES_EDUCATION = ["1-8 grades", "some high school", "high school graduate", "some college",
                   "college degree", "master's degree", "PhD"]
_ANES_INCOME = ["under $3,000", "$3,000-$4,999", "$5,000-$6,999", "$7,000-$8,999", "$9,000-$9,999",
                "$10,000-$10,999", "$11,000-$11,999", "$12,000-$12,999", "$13,000-$13,999",
                "$14,000-$14,999", "$15,000-$16,999", "$17,000-$19,999", "$20,000-$21,999",
                "$22,000-$24,999", "$25,000-$29,999", "$30,000-$34,999", "$35,000-$39,999",
                "$40,000-$44,999", "$45,000-$49,999", "$50,000-$59,999", "$60,000-$74,999",
                "$75,000-$89,999", "$90,000-$104,999", "$105,000 and over"]
_ANES_IDEOLOGY = ["extremely liberal", "liberal", "slightly liberal", "moderate", "slightly conservative",
                  "conservative", "extremely conservative"]


def _anes96_frame(path: Path):
    """Readable long format: one row per respondent and question, the answer as its option text."""
    import pandas as pd

    df = pd.read_csv(path, sep="\t")  # tab-separated, quoted names: 'popul'
    df.columns = [c.strip("'\" ") for c in df.columns]
    rows = []
    for n, r in enumerate(df.to_dict("records")):
        popul = float(r["popul"])  # census place population in 1000s
        profile = dict(
            respondent=f"anes{n:04d}", age=str(int(r["age"])),
            education=_ANES_EDUCATION[int(r["educ"]) - 1], income=_ANES_INCOME[int(r["income"]) - 1],
            tv_news=str(int(r["TVnews"])),
            place="a place of under 1,000 people" if popul < 1 else
            f"a place of about {int(round(popul * 1000)):,} people",
            ideology=_ANES_IDEOLOGY[int(r["selfLR"]) - 1])
        # the profile in one short line, for prompts (every field also stays a column of its own)
        profile["profile"] = (f"age {profile['age']}, {profile['education']}, income {profile['income']}, "
                              f"TV news {profile['tv_news']} days a week, {profile['place']}, "
                              f"{profile['ideology']}")
        for key, (text, column, options, first) in ANES_QUESTIONS.items():
            rows.append({**profile, "id": f"{profile['respondent']}-{key}", "question": key,
                         "question_text": f"{text} ({' / '.join(options)})?",
                         "answer": options[int(r[column]) - first]})
    return pd.DataFrame(rows)


BUNDLED_DEFAULTS: dict[str, dict[str, Any]] = {
    "rotten-tomatoes": dict(
        response_column="review", context_columns=["movie", "plot"], label_column="label",
        group_column="movie_name",
        context_template="a {label} review of the movie {movie}\nPlot summary: {plot}",
    ),
    "guardian-headlines": dict(
        response_column="headline", context_columns=["date"], label_column=None, group_column=None,
        context_template="a Guardian news headline from {date}",
    ),
    "anes96": dict(
        response_column="answer", label_column="question", group_column="respondent", id_column="id",
        context_columns=["age", "education", "income", "tv_news", "place", "ideology", "profile",
                         "question_text"],
        context_template="Respondent: {profile}.\n{question_text}",
        options={key: q[2] for key, q in ANES_QUESTIONS.items()}, ordinal=["party_id"],
    ),
}


def _guardian_frame(path: Path):
    import pandas as pd

    df = pd.read_csv(path)
    df = df.rename(columns={"Text": "headline", "Date": "date"})[["headline", "date"]]
    # some scraped headlines hold a kicker and the headline on separate lines ("Economics viewpoint\n\n\n
    # How poverty ..."): one line of text each, as the other headlines
    df["headline"] = df["headline"].map(lambda t: " ".join(str(t).split()) if isinstance(t, str) else t)
    return df


# ------------------------------------------------------------------------------------------------ user files
# A physical line longer than this is not population text (a binary file, or a file without newlines): it is
# refused before any parser reads it, so a 100 MB line costs a fast scan of its first MAX_LINE_BYTES, not
# memory.
MAX_LINE_BYTES = 8 << 20
# The first bytes of files users mistake for tables: a clear name beats "invalid start byte".
_MAGIC = (
    (b"PK\x03\x04", "ZIP archive (an Excel .xlsx / .ods workbook or a .zip)"),
    (b"\xd0\xcf\x11\xe0", "legacy Office document (an Excel .xls workbook?)"),
    (b"\x89PNG", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"%PDF", "PDF document"),
    (b"PAR1", "Parquet file"),
    (b"\x1f\x8b", "gzip-compressed file"),
    (b"BZh", "bzip2-compressed file"),
    (b"\xfd7zXZ", "xz-compressed file"),
    (b"SQLite format 3", "SQLite database"),
)
_OPENERS = {".bz2": "bz2", ".gz": "gzip", ".xz": "lzma"}


def read_table(path: str | Path):
    """Read a CSV / JSONL / Parquet file into a DataFrame of strings, with one-line errors for bad files."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.exists():
        where = "" if p.is_absolute() else f" (looked for {p.absolute()}: a relative path is read from the " \
            "directory the command runs in)"
        raise MopError(f"data file '{path}' does not exist{where}")
    if p.is_dir():
        raise MopError(f"data file '{path}' is a directory, expected a CSV, JSONL or Parquet file")
    if p.stat().st_size == 0:
        raise MopError(f"data file '{path}' is empty")
    suffixes = [s.lower() for s in p.suffixes]
    compression = None
    if suffixes and suffixes[-1] in (".bz2", ".gz", ".xz", ".zst"):
        compression = suffixes[-1]
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    if kind not in (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".pq"):
        raise MopError(f"data file '{path}': unsupported type '{''.join(p.suffixes) or 'none'}', "
                       "expected .csv, .tsv, .jsonl or .parquet")
    try:
        if kind in (".csv", ".tsv"):
            _check_text_file(p, compression, kind)
            df = pd.read_csv(p, sep="\t" if kind == ".tsv" else ",", dtype=str, keep_default_na=False,
                             encoding="utf-8", encoding_errors="strict")
        elif kind in (".jsonl", ".ndjson"):
            _check_text_file(p, compression, kind)
            df = _read_jsonl(p)
        else:
            if compression is None:
                what = _sniff(p)
                if what != "Parquet file":
                    raise MopError(f"data file '{path}' is not a Parquet file (it looks like "
                                   f"{'a ' + what if what else 'text'}): give it the extension of what it "
                                   "holds")
            df = pd.read_parquet(p).astype(str)
    except MopError:
        raise
    except UnicodeDecodeError as err:
        raise MopError(f"data file '{path}' is not valid UTF-8 ({err.reason} at byte {err.start})") from err
    except pd.errors.EmptyDataError as err:
        raise MopError(f"data file '{path}' has no columns (empty file?)") from err
    except (pd.errors.ParserError, ValueError, OSError, EOFError) as err:
        raise MopError(f"data file '{path}' could not be parsed: {str(err).strip().splitlines()[0]}") from err
    if len(df) == 0:
        raise MopError(f"data file '{path}' has a header but no rows")
    return df


def _sniff(path: Path) -> str | None:
    """What a file is by its first bytes (see _MAGIC), or None for anything else (e.g. text)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    return next((what for magic, what in _MAGIC if head.startswith(magic)), None)


def _check_text_file(path: Path, compression: str | None, kind: str, block: int = 1 << 20) -> None:
    """Refuse, before any parser reads it, a file that is not UTF-8 text or holds a line over MAX_LINE_BYTES.

    One streaming pass in 1 MB blocks (decompressed on the fly for .bz2 / .gz / .xz); the errors name the byte
    offset or line number, which pandas' own messages do not.
    """
    import codecs

    block = min(block, MAX_LINE_BYTES)
    if compression is not None and compression not in _OPENERS:  # .zst: left to pandas
        return
    if compression is None:
        what = _sniff(path)
        if what is not None:
            raise MopError(f"data file '{path}' looks like a {what}, not {kind[1:].upper()} text: save it as "
                           "UTF-8 CSV, JSONL or Parquet")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = line_no = line_len = 0
    if compression in _OPENERS:
        import importlib

        opener = importlib.import_module(_OPENERS[compression]).open
    else:
        opener = open
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(block):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    raise MopError(f"data file '{path}' is not valid UTF-8 ({err.reason} at byte "
                                   f"{offset + err.start})") from err
                first = chunk.find(b"\n")  # lines inside one block are shorter than block <= MAX_LINE_BYTES
                if first < 0:
                    line_len += len(chunk)
                else:
                    if line_len + first > MAX_LINE_BYTES:
                        _too_long(path, line_no + 1)
                    line_no += chunk.count(b"\n")
                    line_len = len(chunk) - chunk.rfind(b"\n") - 1
                if line_len > MAX_LINE_BYTES:
                    _too_long(path, line_no + 1)
                offset += len(chunk)
    except (OSError, EOFError) as err:  # a corrupt compressed stream
        raise MopError(f"data file '{path}' could not be read: {str(err).strip().splitlines()[0]}") from err
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise MopError(f"data file '{path}' is not valid UTF-8 (truncated sequence at the end)") from err


def _too_long(path: Path, line_no: int):
    raise MopError(f"data file '{path}': line {line_no} is longer than {MAX_LINE_BYTES >> 20} MB (not one "
                   "record of text: a binary file, or one without line breaks?)")


def iter_jsonl_objects(path: Path, where: str):
    """Yield (line number, object) for each non-blank line of a JSONL file (.gz / .bz2 / .xz compressed too);
    one-line errors name the line."""
    import importlib

    suffix = Path(path).suffix.lower()
    opener = importlib.import_module(_OPENERS[suffix]).open if suffix in _OPENERS else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise MopError(f"{where} line {n} is not valid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise MopError(f"{where} line {n} must be a JSON object, found {type(obj).__name__}")
            yield n, obj


def _read_jsonl(path: Path):
    import pandas as pd

    rows = [obj for _, obj in iter_jsonl_objects(path, f"data file '{path}'")]
    if not rows:
        raise MopError(f"data file '{path}' has no records")
    return pd.DataFrame(rows).astype(object).where(lambda d: d.notna(), "").astype(str)


# ------------------------------------------------------------------------------------------------- templates
class BlankDict(dict):
    """A mapping whose missing keys format as empty strings."""

    def __missing__(self, key):
        return ""


def template_fields(template: str) -> list[str]:
    return [name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name]


def render_template(template: str, fields: dict[str, Any]) -> str:
    """Format ``template``; a line whose placeholders all render empty is dropped."""
    lines = []
    for line in template.split("\n"):
        names = template_fields(line)
        if names and all(not str(fields.get(n, "") or "").strip() for n in names):
            continue
        lines.append(line.format_map(BlankDict(fields)))
    return "\n".join(lines).strip()


# ------------------------------------------------------------------------------------------------ population
@dataclass
class Population:
    """A loaded dataset: records per split plus the spec that made them."""

    spec: DatasetSpec
    splits: dict[str, list[Record]]
    dropped: dict[str, int] = field(default_factory=dict)  # rows dropped on load: {"empty": n, "words": m}
    rows: int | None = None  # rows in the source, before any was dropped
    capped: dict[str, int] = field(default_factory=dict)  # split -> its records before its max_records cap

    def __getitem__(self, split: str) -> list[Record]:
        if split not in self.splits:
            raise MopError(f"unknown split '{split}', expected one of {', '.join(SPLITS)}")
        return self.splits[split]

    def context_fields(self, record: Record) -> dict[str, str]:
        return {**record.context, "label": record.label or ""}

    def render_context(self, record: Record) -> str:
        return render_template(self.spec.context_template, self.context_fields(record))

    def summary(self) -> dict[str, Any]:
        return {s: {"records": len(r), "labels": dict(sorted(Counter(x.label for x in r if x.label).items())),
                    "groups": len({x.group for x in r if x.group is not None})}
                for s, r in self.splits.items()}


def resolve_spec(spec: DatasetSpec) -> DatasetSpec:
    """Fill a bundled source's column mapping and template where the user left them unset."""
    spec = dataclasses.replace(spec)
    defaults = BUNDLED_DEFAULTS.get(spec.source, {})
    for key, value in defaults.items():
        if getattr(spec, key) is None:
            setattr(spec, key, value)
    if spec.context_columns is None:
        spec.context_columns = []
    if spec.context_template is None:
        names = list(spec.context_columns) + (["label"] if spec.label_column else [])
        spec.context_template = "\n".join(f"{n}: {{{n}}}" for n in names)
    return spec


def validate_spec(spec: DatasetSpec) -> None:
    if not spec.response_column:
        raise MopError(f"dataset '{spec.source}': response_column is required for a file source")
    fractions = list(spec.split)
    if len(fractions) != 3:
        raise MopError(f"dataset split must have 3 fractions (train, val, test), got {fractions}")
    for name, frac in zip(SPLITS, fractions):
        if not isinstance(frac, (int, float)) or not (0 < frac < 1):
            raise MopError(f"dataset split: the {name} fraction must be in (0, 1), got {frac}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise MopError(f"dataset split: fractions must sum to 1, got {fractions} (sum {sum(fractions):g})")
    if spec.min_words < 0 or (spec.max_words is not None and spec.max_words < max(spec.min_words, 1)):
        raise MopError(f"word filters invalid: min_words={spec.min_words}, max_words={spec.max_words}")
    for split, cap in (spec.max_records or {}).items():
        if split not in SPLITS:
            raise MopError(f"max_records: unknown split '{split}', expected one of {', '.join(SPLITS)}")
        if not isinstance(cap, int) or cap <= 0:
            raise MopError(f"max_records[{split}] must be a positive integer, got {cap}")


def check_context_template(spec: DatasetSpec) -> None:
    """The context template may name the context columns, and ``{label}`` when the dataset has labels, as
    plain fields (what an export's loader accepts: checked here, before anything is embedded)."""
    from mop.prompts import check_plain_template  # mop.prompts imports this module

    check_plain_template(spec.context_template, "context_template")
    fields = template_fields(spec.context_template)
    if "label" in fields and not spec.label_column:
        raise MopError("context_template uses {label} but the dataset has no label_column: set "
                       "data.dataset.label_column, or take {label} out of the template")
    allowed = set(spec.context_columns) | ({"label"} if spec.label_column else set())
    unknown = [f for f in fields if f not in allowed]
    if unknown:
        raise MopError(f"context_template uses field(s) {', '.join(unknown)} that are not context columns "
                       f"({', '.join(sorted(allowed))}){did_you_mean(unknown, allowed)}")


def load_frame(spec: DatasetSpec):
    if spec.source == "rotten-tomatoes":
        return _rotten_tomatoes_frame(bundled_dataset_path(spec.source)), "rotten-tomatoes"
    if spec.source == "guardian-headlines":
        return _guardian_frame(bundled_dataset_path(spec.source)), "guardian-headlines"
    if spec.source == "anes96":
        return _anes96_frame(bundled_dataset_path(spec.source)), "anes96"
    return read_table(spec.source), str(spec.source)


def build_records(df, spec: DatasetSpec, where: str, counts: dict[str, int] | None = None) -> list[Record]:
    """Turn a frame into records: check columns, drop empty / filtered responses, assign stable ids.

    Rows with an empty (or NaN) response are dropped, as are responses outside ``min_words`` / ``max_words``;
    ``counts``, when given, receives how many of each (``empty``, ``words``).
    """
    columns = [spec.response_column, *spec.context_columns, spec.label_column, spec.group_column,
               spec.id_column]
    missing = [c for c in columns if c and c not in df.columns]
    if missing:
        raise MopError(f"{where}: column(s) {', '.join(repr(c) for c in missing)} not found; "
                       f"available: {', '.join(map(str, df.columns))}"
                       + did_you_mean(missing, map(str, df.columns)))

    def clean(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        text = str(value)
        return "" if text.lower() == "nan" and not isinstance(value, str) else text.strip()

    records, seen = [], {}
    dropped = {"empty": 0, "words": 0}
    for row_no, row in enumerate(df.to_dict("records")):
        rid = clean(row[spec.id_column]) if spec.id_column else f"r{row_no:06d}"
        if spec.id_column:
            if not rid:
                raise MopError(f"{where}: empty id in column '{spec.id_column}' at row {row_no + 1}")
            if rid in seen:
                raise MopError(f"{where}: duplicate id '{rid}' in column '{spec.id_column}' "
                               f"(rows {seen[rid] + 1} and {row_no + 1})")
            seen[rid] = row_no
        response = clean(row[spec.response_column])
        n_words = len(response.split())
        if not response:
            dropped["empty"] += 1
            continue
        if n_words < spec.min_words or (spec.max_words is not None and n_words > spec.max_words):
            dropped["words"] += 1
            continue
        records.append(Record(
            id=rid, response=response,
            context={c: clean(row[c]) for c in spec.context_columns},
            label=clean(row[spec.label_column]) or None if spec.label_column else None,
            group=clean(row[spec.group_column]) or None if spec.group_column else None,
        ))
    if not records:
        raise MopError(f"{where}: no records left of {len(df)} row(s) after dropping {dropped['empty']} "
                       f"empty response(s) (column '{spec.response_column}') and {dropped['words']} outside "
                       f"the word filters (min_words={spec.min_words}, max_words={spec.max_words})")
    if counts is not None:
        counts.update(dropped)
    return records


def split_records(records: list[Record], fractions: list[float], seed: int) -> dict[str, list[Record]]:
    """Deterministic split by seed; records sharing a group land in the same split.

    Groups (or single records, when ungrouped) are shuffled with the seed and cut where the cumulative record
    count crosses each fraction, so split sizes follow the fractions to within one group.
    """
    units: dict[str, list[Record]] = {}
    for r in records:
        units.setdefault(r.group if r.group is not None else f"\0{r.id}", []).append(r)
    keys = sorted(units)
    order = np.random.default_rng(seed).permutation(len(keys))
    bounds = np.cumsum(fractions)[:-1] * len(records)
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    count = 0
    for i in order:
        unit = units[keys[i]]
        split = SPLITS[int(np.searchsorted(bounds, count + len(unit) / 2))]
        out[split].extend(unit)
        count += len(unit)
    return out


def load_population(spec: DatasetSpec | dict[str, Any]) -> Population:
    """Load, filter and split a population according to ``spec``."""
    if isinstance(spec, dict):
        spec = DatasetSpec.from_dict(spec)
    if spec.source not in BUNDLED_DATASETS and not Path(str(spec.source)).expanduser().suffix:
        raise MopError(f"dataset source '{spec.source}' is neither a bundled dataset "
                       f"({', '.join(BUNDLED_DATASETS)}) nor a file path")
    spec = resolve_spec(spec)
    validate_spec(spec)
    df, where = load_frame(spec)
    dropped: dict[str, int] = {}
    records = build_records(df, spec, where, dropped)
    check_context_template(spec)  # after the columns: a misspelt column is named as one, not as a field
    if spec.options is not None:  # closed-ended: fix the options and check every answer is one of them
        from mop.survey import resolve_options

        spec.options = resolve_options(spec, records, where)
    splits = split_records(records, spec.split, spec.seed)
    capped = {}
    for split, cap in (spec.max_records or {}).items():
        if len(splits[split]) > cap:
            capped[split] = len(splits[split])
            keep = np.sort(np.random.default_rng(spec.seed + 1).permutation(len(splits[split]))[:cap])
            splits[split] = [splits[split][i] for i in keep]
    return Population(spec=spec, splits=splits, dropped=dropped, rows=len(df), capped=capped)


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file (a train config or a bare dataset YAML), with one-line errors."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise MopError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise MopError(f"config file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(raw, dict):
        raise MopError(f"config file '{path}': expected a mapping at the top level")
    return raw


def config_data_section(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` section of a train config (its ``init_args`` when written as a class spec); {} if none."""
    node = raw.get("data") or {}
    node = node.get("init_args", node) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def load_dataset_config(path: str | Path) -> DatasetSpec:
    """Read the dataset spec out of a train config (``data.dataset``) or a bare dataset YAML."""
    raw = read_config(path)
    node: Any = config_data_section(raw) if "data" in raw else raw
    if isinstance(node, dict) and "dataset" in node:
        node = node["dataset"]
    if not isinstance(node, dict):
        raise MopError(f"config file '{path}': no dataset section (expected data.dataset or top-level keys)")
    return DatasetSpec.from_dict(node, where=f"{path}: dataset")


def show_command(config: str, split: Literal["train", "val", "test"] = "train",
                 examples: NonNegativeInt = 3) -> int:
    """Print the split and label counts of a config's dataset, and example records.

    Args:
        config: a train config (its data.dataset section) or a dataset YAML.
        split: the split to show examples of.
        examples: the number of example records.
    """
    import textwrap

    pop = load_population(load_dataset_config(config))
    summary = pop.summary()
    labels = sorted({lab for s in summary.values() for lab in s["labels"]})
    total = sum(s["records"] for s in summary.values())
    print(f"dataset: {pop.spec.source}  ({pop.rows} rows, {total} records kept, split {pop.spec.split} by "
          f"{'group ' + repr(pop.spec.group_column) if pop.spec.group_column else 'record'}, "
          f"seed {pop.spec.seed})")
    print("| split | records | groups | " + " | ".join(labels) + (" |" if labels else ""))
    print("| --- | --- | --- |" + " --- |" * len(labels))
    for name, s in summary.items():
        counts = " | ".join(str(s["labels"].get(lab, 0)) for lab in labels)
        print(f"| {name} | {s['records']} | {s['groups']} | {counts}" + (" |" if labels else ""))
    if any(pop.dropped.values()):
        print(f"dropped on load: {pop.dropped.get('empty', 0)} row(s) with an empty response, "
              f"{pop.dropped.get('words', 0)} outside min_words={pop.spec.min_words} / "
              f"max_words={pop.spec.max_words}")
    if pop.capped:
        print("capped by max_records: " + ", ".join(f"{split} {len(pop[split])} of {n}"
                                                    for split, n in pop.capped.items()))
    records = pop[split]
    picks = np.random.default_rng(pop.spec.seed).permutation(len(records))[:examples]
    shown = [records[i] for i in sorted(picks)]
    print(f"\n{len(shown)} example record(s) from '{split}':")
    for r in shown:
        print(f"\n[{r.id}] label={r.label} group={r.group}")
        print(textwrap.indent("context: " + pop.render_context(r), "  "))
        print(textwrap.indent("response: " + r.response, "  "))
    return 0
