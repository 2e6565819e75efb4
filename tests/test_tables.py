"""The documents' result tables agree with the committed result files (benchmarks/tables.py): a figure changed
on one side only, in a document or in its result file, fails here."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("mop_bench_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_block_agrees_with_its_result_file(tables):
    docs = tables.documents()
    assert any(tables.blocks(p.read_text()) for p in docs), "no table block in README.md or docs/*.md"
    problems = tables.check(docs)
    assert not problems, ("tables differ from their result files; run `python benchmarks/tables.py --write` "
                          "if the result file is right:\n" + "\n".join(problems))


def test_every_table_renders_from_its_sources(tables):
    for name, spec in tables.TABLES.items():
        assert spec.sources and all((tables.RESULTS / s).exists() for s in spec.sources), name
        assert "|" in tables.render(name), name


def _doc_with(tables, tmp_path, name: str) -> Path:
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n\n<!-- table: {name} -->\n{tables.render(name)}<!-- /table -->\n\nafter\n")
    return doc


def test_a_figure_changed_in_the_document_fails(tables, tmp_path):
    doc = _doc_with(tables, tmp_path, "rt_main")
    assert tables.check([doc]) == []
    text = doc.read_text()
    assert "0.1568 [0.1498, 0.1652]" in text
    doc.write_text(text.replace("0.1568 [0.1498, 0.1652]", "0.1567 [0.1498, 0.1652]", 1))
    (problem,) = tables.check([doc])
    assert problem.startswith("rt_main (") and "0.1567" in problem and "0.1568" in problem
    assert tables.write([doc]) == ["rt_main (doc.md)"] and tables.check([doc]) == []
    assert doc.read_text() == text


def test_a_figure_changed_in_the_result_file_fails(tables, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for s in tables.TABLES["paired"].sources:
        shutil.copy(tables.RESULTS / s, results / s)
    doc = _doc_with(tables, tmp_path, "paired")
    assert tables.check([doc], results) == []
    path = results / tables.TABLES["paired"].sources[0]
    data = json.loads(path.read_text())
    data["rows"][0]["fid"]["diff"] -= 0.001
    path.write_text(json.dumps(data))
    (problem,) = tables.check([doc], results)
    assert problem.startswith("paired (") and "first differing line" in problem


def test_unknown_names_missing_sources_and_open_markers_fail(tables, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- table: no_such_table -->\n| a |\n<!-- /table -->\n")
    (problem,) = tables.check([doc])
    assert "unknown table name" in problem
    doc.write_text("<!-- table: rt_main -->\n| a |\n<!-- /table -->\n")
    (problem,) = tables.check([doc], tmp_path / "empty")
    assert "source file(s) missing" in problem and "fidelity_scale.json" in problem
    doc.write_text("<!-- table: rt_main -->\n| a |\n")
    (problem,) = tables.check([doc])
    assert "without a matching" in problem
