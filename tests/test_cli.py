"""The CLI as a user runs it: one-line errors, non-zero exits, and `mop data show` output."""

from __future__ import annotations

from conftest import assert_one_line_error, run_cli


def _config(tmp_path, csv_path, **extra):
    lines = [f"data:\n  dataset:\n    source: {csv_path}\n    response_column: text\n    label_column: label"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_data_show_prints_counts_and_examples(tmp_path, write_csv):
    rows = [{"text": f"words {i} of a review", "label": ["fresh", "rotten"][i % 3 == 0]} for i in range(90)]
    proc = run_cli("data", "show", "-c", str(_config(tmp_path, write_csv(rows))))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "(90 records" in out
    assert "| train | 72 | 0 |" in out and "| val | 9 |" in out and "| test | 9 |" in out
    assert out.count("response: words") == 3 and "context: label:" in out


def test_missing_column_is_one_line(tmp_path, write_csv):
    cfg = _config(tmp_path, write_csv([{"review": "a b c", "label": "x"}]))
    assert_one_line_error(run_cli("data", "show", "-c", str(cfg)), "'text' not found", "available: review")


def test_empty_csv_is_one_line(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_one_line_error(run_cli("data", "show", "-c", str(_config(tmp_path, empty))), "is empty")


def test_header_only_and_missing_config(tmp_path):
    header = tmp_path / "h.csv"
    header.write_text("text,label\n")
    assert_one_line_error(run_cli("data", "show", "-c", str(_config(tmp_path, header))), "no rows")
    assert_one_line_error(run_cli("data", "show", "-c", str(tmp_path / "nope.yaml")), "does not exist")


def test_bad_split_fraction_is_one_line(tmp_path, write_csv):
    cfg = _config(tmp_path, write_csv([{"text": "a b", "label": "x"}] * 5), split="[0.9, 0.1, 0.0]")
    assert_one_line_error(run_cli("data", "show", "-c", str(cfg)), "(0, 1)")


def test_undecodable_bytes_is_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\nok text,x\n\xc3\x28 broken,y\n")
    assert_one_line_error(run_cli("data", "show", "-c", str(_config(tmp_path, bad))), "not valid UTF-8", "byte 21")
