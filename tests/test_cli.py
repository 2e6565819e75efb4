"""The CLI as a user runs it: one-line errors, non-zero exits, and `mop data show` output."""

from __future__ import annotations

from helpers import assert_one_line_error, run_cli


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
    assert "(90 rows, 90 records kept" in out and "capped" not in out
    assert "| train | 72 | 0 |" in out and "| val | 9 |" in out and "| test | 9 |" in out
    assert out.count("response: words") == 3 and "context: label:" in out
    # a cap is shown as one, not as a smaller dataset
    proc = run_cli("data", "show", "-c", str(_config(tmp_path, write_csv(rows), max_records="{train: 10}")))
    assert proc.returncode == 0, proc.stderr
    assert "(90 rows, 28 records kept" in proc.stdout and "| train | 10 | 0 |" in proc.stdout
    assert "capped by max_records: train 10 of 72\n" in proc.stdout


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
    assert_one_line_error(run_cli("data", "show", "-c", str(_config(tmp_path, bad))), "not valid UTF-8",
                          "byte 21")


# ------------------------------------------------------------------------------- one declaration per command
def test_every_command_is_in_the_table_and_listed(capsys):
    from mop.cli import COMMANDS, main

    assert set(COMMANDS) == {"train", "generate", "export", "evaluate", "personas", "data", "assets"}
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in listing
    assert "Generate a synthetic population" in listing  # the first docstring line of generate_command


def test_help_comes_from_the_signature_and_docstring(capsys):
    """Every parameter of a command function is an option whose help is its docstring entry, and nothing else
    is (so no argument is declared twice)."""
    import inspect

    import docstring_parser
    import pytest

    from mop.cli import COMMANDS, RAW_ARGV, _load, command_options, main

    leaves = [(f"{n} {a}".split(), t) for n, e in COMMANDS.items() if n not in RAW_ARGV
              for a, t in (e.items() if isinstance(e, dict) else [("", e)])]
    assert len(leaves) == 8  # mop export CKPT OUT_DIR and mop export verify DIR are two
    for words, target in leaves:
        func = _load(target)
        with pytest.raises(SystemExit):
            main([*words, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        docs = {p.arg_name: " ".join(p.description.split()) for p in docstring_parser.parse(
            inspect.getdoc(func)).params}
        for option in command_options(func):
            if option.group is None:
                assert option.name in docs, (target, option.name)  # documented in the function's docstring
                assert docs[option.name][:40] in text, (target, option.name)
            assert f"--{option.name}" in text or option.name in text, (target, option.name)


def test_dashes_underscores_booleans_lists_and_aliases():
    from mop.cli import parse_command
    from mop.evaluate import evaluate_command
    from mop.generate import generate_command

    base = ["--gating", "g", "--model", "m", "--output", "o.jsonl"]
    a = parse_command(generate_command,
                      [*base, "--num-samples", "3", "--no-progress", "--shuffle", "-c", "x"],
                      "mop generate")
    b = parse_command(generate_command, [*base, "--num_samples=3", "--progress", "false", "--shuffle=true",
                                         "--data", "x"], "mop generate")
    assert a == b
    assert (a["num_samples"], a["progress"], a["shuffle"], a["config"]) == (3, False, True, "x")
    assert parse_command(generate_command, [*base, "--num-samples", "3"], "g")["shuffle"] is False
    ev = parse_command(evaluate_command, ["--synthetic", "a.jsonl", "b.jsonl", "--output", "r.json",
                                          "--names", "A", "B", "-c", "x.yaml"], "mop evaluate")
    assert (ev["synthetic"] == ["a.jsonl", "b.jsonl"] and ev["names"] == ["A", "B"]
            and ev["config"] == "x.yaml")


def test_usage_errors_are_one_line_with_hints(capsys):
    from mop.cli import main

    base = ["generate", "--gating", "g", "--model", "m", "--output", "o.jsonl"]
    cases = [([*base, "--num-samples", "0"], "--num-samples: must be positive, got 0"),
             ([*base, "--num-samples", "2", "--top-p", "1.5"], "--top-p: must be in (0, 1], got 1.5"),
             ([*base, "--num-samples", "2", "--method", "gpt"], "--method: expected one of"),
             ([*base, "--num-samplez", "2"], "did you mean '--num-samples'?"),
             (base[:-2] + ["--num-samples", "2"], "the following arguments are required: --output"),
             (["genrate"], "unknown command 'genrate' (did you mean 'generate'?)"),
             (["assets", "chek"], "unknown command 'chek'; expected one of install, check")]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1 and fragment in lines[0] and "(see mop" in lines[0], (argv, lines)


def test_personas_settings_default_to_the_config(tmp_path, write_csv, monkeypatch):
    """mop personas reads data.personas from the config, so it writes the personas mop train would."""
    import mop.personas as personas

    rows = [{"text": f"review {i} of a film", "label": "x"} for i in range(20)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  dataset:\n    source: {write_csv(rows)}\n    response_column: text\n"
                   "  personas:\n    num_personas: 3\n    synthesizer: keywords\n"
                   "    text_kind: movie reviews\n"
                   "    role: critic\n  embedder: my-embedder\n")
    seen = {}

    class FakeEmbedder:
        def __init__(self, name):
            seen["embedder"] = name

        def encode(self, texts, desc=""):
            import numpy as np

            return np.eye(len(texts), 4, dtype=np.float32)

    def fake_synthesize(texts, ids, emb, k, **kw):
        seen.update(k=k, **kw)
        return [personas.Persona(id=f"p{i:03d}", text=f"You are critic {i}.") for i in range(k)]

    monkeypatch.setattr("mop.embed.Embedder", FakeEmbedder)
    monkeypatch.setattr(personas, "synthesize_personas", fake_synthesize)
    assert personas.personas_command(str(cfg), str(tmp_path / "out")) == 0
    assert (seen["k"], seen["synthesizer"], seen["text_kind"], seen["role"], seen["embedder"]) == (
        3, "keywords", "movie reviews", "critic", "my-embedder")
    assert personas.personas_command(str(cfg), str(tmp_path / "out"), num_personas=2, role="writer") == 0
    assert (seen["k"], seen["role"], seen["text_kind"]) == (2, "writer", "movie reviews")


def test_run_closes_the_process_group_a_command_leaves(tmp_path):
    """A DDP fit leaves its process group alive (Lightning does not destroy it); mop.cli.run destroys it, so
    the rank's exit is not aborted by the backend's threads."""
    import torch.distributed as dist

    from mop.cli import run

    def command():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        assert dist.is_initialized()
        return 0

    try:
        assert run(command) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
