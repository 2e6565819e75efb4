"""docs/cli.md documents every option of every command, and nothing else.

Each command has a ``## mop COMMAND`` section in docs/cli.md whose option tables (a table whose header's first
cell is ``option`` or ``key``) list one option per row, first cell in backticks: ``--num-samples`` for a
command of mop/cli.py's COMMANDS, ``CHECKPOINT`` for a positional argument, ``model.lm`` for a config key of
``mop train``. The options on the code side come from the parsers the commands really use: ``build_parser``
of each command function, and LightningCLI's ``fit`` parser for ``mop train`` (its model and data keys are the
parameters of the LightningModule's and DataModule's ``__init__``, the dataset / personas sections the fields
of their spec dataclasses). Only Lightning's own ``trainer.*`` keys are not all listed: the doc lists those
the bundled configs set, each of which must be one of the parser's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import re
import typing
from pathlib import Path

import pytest
import yaml

from mop import cli

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")
_SEP = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def doc_sections(text: str) -> dict[str, list[str]]:
    """``## mop NAME`` section -> the first cells of the rows of its option / key tables, in order."""
    sections: dict[str, list[str]] = {}
    current, in_table, lines = None, False, text.splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"^## (.+?)\s*$", line)
        if heading:
            title = heading.group(1)
            current = title[len("mop "):] if title.startswith("mop ") else None
            if current is not None:
                sections.setdefault(current, [])
            in_table = False
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        header = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table and i + 1 < len(lines) and _SEP.match(lines[i + 1]):
            in_table = header[0] in ("option", "key")  # a table header: only option / key tables count
            continue
        if in_table and current is not None and not _SEP.match(line):
            match = _ROW.match(line)
            assert match, f"docs/cli.md: a row of an option table of 'mop {current}' without a `name`: {line}"
            sections[current].append(match.group(1))
    return sections


def leaves(table: dict = cli.COMMANDS, prefix: str = "") -> dict[str, tuple[str, str]]:
    """'data show' -> ('data', 'mop.data:show_command'): every command of the COMMANDS table."""
    out = {}
    for name, entry in table.items():
        path = f"{prefix} {name}".strip()
        top = path.split()[0]
        if isinstance(entry, dict):
            out.update(leaves(entry, path))
        else:
            out[path] = (top, entry)
    return out


COMMANDS = leaves()
PARSED = sorted(p for p, (top, _) in COMMANDS.items() if top not in cli.RAW_ARGV)


@pytest.fixture(scope="module")
def documented() -> dict[str, list[str]]:
    return doc_sections(DOC.read_text(encoding="utf-8"))


def parser_options(path: str) -> set[str]:
    """The options of a command's real parser, as the doc writes them: ``--a-b``, positional ``NAME``."""
    top, target = COMMANDS[path]
    func = cli._load(target)
    parser = cli.build_parser(func, f"mop {path}", positional=top in cli.POSITIONAL)
    out = set()
    for action in parser._actions:
        if "--help" in action.option_strings:
            continue
        if not action.option_strings:
            out.add(action.dest.upper())
        else:
            long = next(o for o in action.option_strings if o.startswith("--"))
            out.add("--" + long[2:].replace("_", "-"))
    # the same options as the ones mop/cli.py's argv handling knows (dashes, --no-flag, aliases)
    from_signature = {o.name.upper() if top in cli.POSITIONAL and o.required else o.flag
                      for o in cli.command_options(func)}
    assert out == from_signature, f"mop {path}: parser and signature disagree"
    return out


def test_every_command_has_a_section(documented):
    assert set(documented) == set(COMMANDS), (
        f"docs/cli.md: sections without a command {sorted(set(documented) - set(COMMANDS))}, "
        f"commands without a section {sorted(set(COMMANDS) - set(documented))}")


@pytest.mark.parametrize("path", PARSED)
def test_command_options_documented(path, documented):
    rows = documented.get(path, [])
    assert len(rows) == len(set(rows)), f"mop {path}: an option documented twice"
    code = parser_options(path)
    assert not set(rows) - code, f"mop {path}: documented but not an option: {sorted(set(rows) - code)}"
    assert not code - set(rows), f"mop {path}: options missing from docs/cli.md: {sorted(code - set(rows))}"


# --------------------------------------------------------------------------------------------- mop train
def _fit_parser_keys() -> set[str]:
    """The keys of the parser ``mop train`` (fit) really parses with: built by train_command itself."""
    from mop.train import MopCLI, train_command

    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
        train_command(["--help"])
    fit = next(p for p in MopCLI.parsers if p.prog.endswith(" fit"))
    return set(fit.get_defaults().keys())


def _dataclass_in(annotation) -> type | None:
    for kind in (annotation, *typing.get_args(annotation)):
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            return kind
    return None


def _init_keys(cls: type, section: str) -> set[str]:
    """``section.param`` for every ``__init__`` parameter, and ``section.param.field`` for a dataclass one."""
    hints = typing.get_type_hints(cls.__init__)
    keys = set()
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self":
            continue
        keys.add(f"{section}.{name}")
        spec = _dataclass_in(hints.get(name))
        if spec is not None:
            keys.update(f"{section}.{name}.{f.name}" for f in dataclasses.fields(spec))
    return keys


def _config_trainer_keys() -> set[str]:
    keys = set()
    for path in (ROOT / "configs").rglob("*.yaml"):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(config, dict) and isinstance(config.get("trainer"), dict):
            keys.update(f"trainer.{k}" for k in config["trainer"])
    return keys


def test_train_keys_documented(documented):
    from mop.datamodule import PopulationDataModule
    from mop.module import MixtureOfPersonas

    rows = documented.get("train", [])
    assert len(rows) == len(set(rows)), "mop train: a key documented twice"
    parser = _fit_parser_keys()
    classes = _init_keys(MixtureOfPersonas, "model") | _init_keys(PopulationDataModule, "data")
    sections = {k for k in classes if k.count(".") == 1}  # the spec fields are nested in data.dataset etc.
    assert sections <= parser, f"not keys of the fit parser: {sorted(sections - parser)}"
    top = {k for k in parser if "." not in k}  # seed_everything, validate_before_fit, ckpt_path...
    trainer = {k for k in parser if k.startswith("trainer.")}
    code = classes | top
    stale = set(rows) - code - trainer
    assert not stale, f"mop train: documented but not a key: {sorted(stale)}"
    used = _config_trainer_keys()
    assert used <= trainer, f"configs set unknown trainer keys: {sorted(used - trainer)}"
    missing = (code | used) - set(rows)
    assert not missing, f"mop train: keys missing from docs/cli.md: {sorted(missing)}"
    for section in ("model", "data", "data.dataset", "data.personas"):
        assert any(r.startswith(section + ".") for r in rows), f"no {section}.* keys documented"


# ------------------------------------------------------------------------------------------ the parser
def test_doc_sections_reads_only_option_tables():
    text = """## mop x
| name | what |
| --- | --- |
| `smollm2-135m` | not an option |

| option | default | what it does |
| --- | --- | --- |
| `--a-b` | 1 | a |
| `POS` | required | b |

## Not a command
| option | default |
| --- | --- |
| `--c` | 2 |

## mop train
### model.*
| key | default | what |
| --- | --- | --- |
| `model.lm` | x | y |
"""
    assert doc_sections(text) == {"x": ["--a-b", "POS"], "train": ["model.lm"]}
