from __future__ import annotations

import json
from collections import Counter

import pytest

from mop.data import (
    DatasetSpec,
    load_dataset_config,
    load_population,
    render_template,
    split_records,
    title_from_slug,
)
from mop.errors import MopError


def _rows(n=60, groups=6):
    return [{"text": f"review number {i} is here", "item": f"movie {i % groups}",
             "label": ["pos", "neg"][i % 2], "grp": f"g{i % groups}", "uid": f"u{i}"} for i in range(n)]


def _spec(path, **kw):
    base = dict(source=str(path), response_column="text", context_columns=["item"], label_column="label")
    return DatasetSpec(**{**base, **kw})


def test_title_from_slug():
    assert title_from_slug("laramie_project_the") == "The Laramie Project"
    assert title_from_slug("return_to_never_land") == "Return to Never Land"
    assert title_from_slug("equilibrium") == "Equilibrium"


def test_render_template_drops_lines_whose_fields_are_empty():
    t = "a {label} review of {movie}\nPlot: {plot}"
    assert render_template(t, {"label": "fresh", "movie": "Heat", "plot": ""}) == "a fresh review of Heat"
    assert render_template(t, {"label": "fresh", "movie": "Heat", "plot": "Cops."}).endswith("Plot: Cops.")


def test_split_is_deterministic_and_covers_every_record_once(write_csv):
    path = write_csv(_rows(200, groups=200))
    a = load_population(_spec(path, seed=3))
    b = load_population(_spec(path, seed=3))
    c = load_population(_spec(path, seed=4))
    ids = lambda p: {s: [r.id for r in p[s]] for s in ("train", "val", "test")}  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    every = [i for s in ids(a).values() for i in s]
    assert len(every) == len(set(every)) == 200
    assert [len(a[s]) for s in ("train", "val", "test")] == [160, 20, 20]


def test_grouped_split_never_spans_two_splits(write_csv):
    path = write_csv(_rows(300, groups=30))
    pop = load_population(_spec(path, group_column="grp", split=[0.6, 0.2, 0.2]))
    owner = {}
    for split in ("train", "val", "test"):
        for r in pop[split]:
            assert owner.setdefault(r.group, split) == split
    assert len({s for s in owner.values()}) == 3


def test_stable_ids_and_filters(write_csv):
    rows = _rows(10)
    rows[3]["text"] = ""
    rows[4]["text"] = "two words"
    path = write_csv(rows)
    pop = load_population(_spec(path, min_words=3, split=[0.5, 0.25, 0.25]))
    ids = sorted(r.id for s in ("train", "val", "test") for r in pop[s])
    assert "r000003" not in ids and "r000004" not in ids and "r000005" in ids and len(ids) == 8
    pop = load_population(_spec(path, id_column="uid", min_words=1, split=[0.5, 0.25, 0.25]))
    assert {r.id for s in ("train", "val", "test") for r in pop[s]} == {f"u{i}" for i in range(10) if i != 3}


def test_jsonl_and_parquet_sources(tmp_path):
    rows = _rows(20)
    jl = tmp_path / "pop.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq = tmp_path / "pop.parquet"
    import pandas as pd

    pd.DataFrame(rows).to_parquet(pq)
    for path in (jl, pq):
        pop = load_population(_spec(path))
        assert sum(len(pop[s]) for s in ("train", "val", "test")) == 20
        r = pop["train"][0]
        assert pop.render_context(r) == f"item: {r.context['item']}\nlabel: {r.label}"


def test_max_records_caps_a_split(write_csv):
    pop = load_population(_spec(write_csv(_rows(100)), max_records={"train": 7}))
    assert len(pop["train"]) == 7 and len(pop["test"]) == 10


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(response_column="nope"), "'nope' not found"),
        (dict(context_columns=["item", "year"]), "'year' not found"),
        (dict(split=[0.8, 0.2, 0.0]), "must be in (0, 1)"),
        (dict(split=[1.2, -0.1, -0.1]), "must be in (0, 1)"),
        (dict(split=[0.5, 0.2, 0.2]), "sum to 1"),
        (dict(min_words=50), "no records left"),
        (dict(id_column="label"), "duplicate id"),
        (dict(context_template="{item} in {year}"), "year"),
        (dict(max_records={"train": 0}), "positive integer"),
    ],
)
def test_bad_specs_raise_one_clear_error(write_csv, kw, fragment):
    with pytest.raises(MopError, match=None) as info:
        load_population(_spec(write_csv(_rows()), **kw))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "is empty"),
        (b"text,item,label\n", "no rows"),
        (b"text,item,label\n\xff\xfe bad,x,pos\n", "not valid UTF-8"),
    ],
)
def test_bad_files(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(MopError) as info:
        load_population(_spec(path))
    assert fragment in str(info.value)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(MopError, match="does not exist"):
        load_population(_spec(tmp_path / "none.csv"))
    (tmp_path / "pop.xlsx").write_text("x")
    with pytest.raises(MopError, match="unsupported type"):
        load_population(_spec(tmp_path / "pop.xlsx"))


def test_dataset_config_reads_train_config_and_rejects_unknown_keys(tmp_path, write_csv):
    path = write_csv(_rows())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  dataset:\n    source: {path}\n    response_column: text\n    min_words: 2\n")
    assert load_dataset_config(cfg).min_words == 2
    cfg.write_text(f"data:\n  dataset:\n    source: {path}\n    respnse_column: text\n")
    with pytest.raises(MopError, match="unknown key.*respnse_column"):
        load_dataset_config(cfg)


def test_grouped_split_fractions_are_close(write_csv):
    recs = load_population(_spec(write_csv(_rows(1000, groups=100)), group_column="grp"))
    sizes = Counter({s: len(recs[s]) for s in ("train", "val", "test")})
    assert abs(sizes["train"] - 800) <= 10 and abs(sizes["test"] - 100) <= 10


def test_split_records_unit():
    from mop.data import Record

    recs = [Record(id=str(i), response="x", context={}, group=str(i // 2)) for i in range(10)]
    out = split_records(recs, [0.6, 0.2, 0.2], seed=0)
    assert sum(map(len, out.values())) == 10
    for s in out.values():
        assert all(any(r2.group == r.group for r2 in s if r2 is not r) for r in s)


def test_compressed_jsonl_reads_like_the_plain_file(tmp_path):
    import bz2
    import gzip
    import json

    from mop.data import read_table

    text = "".join(json.dumps({"text": f"review {i}", "label": "fresh"}) + "\n" for i in range(3))
    (tmp_path / "a.jsonl").write_text(text)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "a.jsonl.bz2").write_bytes(bz2.compress(text.encode()))
    plain = read_table(tmp_path / "a.jsonl")
    assert list(plain["text"]) == ["review 0", "review 1", "review 2"]
    for name in ("a.jsonl.gz", "a.jsonl.bz2"):
        assert read_table(tmp_path / name).equals(plain)


def test_a_context_template_with_attribute_access_is_refused_before_anything_is_embedded():
    """The loader of an export refuses such a template; the data spec refuses it first, not after training."""
    from mop.data import DatasetSpec, check_context_template
    from mop.errors import MopError

    spec = DatasetSpec(source="rotten-tomatoes", context_columns=["movie"], label_column="label",
                       context_template="a {label} review of {movie.__class__}")
    with pytest.raises(MopError, match=r"\{movie.__class__\}.*only plain fields"):
        check_context_template(spec)
    check_context_template(DatasetSpec(source="rotten-tomatoes", context_columns=["movie"],
                                       label_column="label", context_template="a {label} review of {movie}"))
