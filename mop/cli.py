"""The ``mop`` command: one table of commands, each a typed function whose docstring is its ``--help``.

    mop train | generate | export [verify] | evaluate | personas | data show | assets install | assets check

Every command is declared once, as the signature of the function that runs it (see :data:`COMMANDS`):
jsonargparse turns the parameters into options (types, ``Literal`` choices and the self-checking numbers of
:mod:`mop.types` are validated while parsing) and the docstring's ``Args:`` into their help. ``mop train`` is
LightningCLI (also jsonargparse) over the model and data classes, and gets its argv unchanged. In every other
command an option may be spelled with dashes or underscores (``--num-samples`` = ``--num_samples``), a boolean
option takes ``--flag``, ``--no-flag`` or ``--flag true|false``, and ``-c`` (or the old name ``--data``) is
``--config`` where the command takes a config. ``mop train`` takes what LightningCLI takes: keys with
underscores and their section (``--model.num_candidates 8``), a boolean with its value (``--model.learn_tau
false``), ``-c/--config`` (repeatable) and ``--print_config``; there ``--data`` is the data section.
docs/cli.md documents every option of every command (tests/test_cli_docs.py checks it).

Every user error (:class:`mop.errors.MopError`, or a bad argument) becomes one line on stderr and exit status
2; set ``MOP_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import itertools
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence

from mop.errors import MopError

# name -> "module:function" (a leaf) or a table of sub-commands, whose "" entry (if any) runs when the first
# argument names none of them (``mop export CKPT OUT_DIR`` beside ``mop export verify DIR``). ``mop train``
# hands its argv to LightningCLI.
COMMANDS: dict[str, str | dict[str, str]] = {
    "train": "mop.train:train_command",
    "generate": "mop.generate:generate_command",
    "export": {"": "mop.export:export_command", "verify": "mop.export:verify_command"},  # "": CKPT OUT_DIR
    "evaluate": "mop.evaluate:evaluate_command",
    "personas": "mop.personas:personas_command",
    "data": {"show": "mop.data:show_command"},
    "assets": {"install": "mop.assets:install_command", "check": "mop.assets:check_command"},
}
RAW_ARGV = {"train"}  # commands that parse their own argv (LightningCLI)
POSITIONAL = {"export"}  # commands whose required parameters are positional
ALIASES = {"-c": "--config", "--data": "--config", "-k": "--num_personas"}  # --data: the old name of --config


class UsageError(MopError):
    """A bad command line: printed as ``PROG: error: ... (see PROG --help)``."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _summary(target: str) -> str:
    """The first line of a command function's docstring, read from its source: ``mop --help`` imports no
    command module (``mop train``'s imports Lightning)."""
    import ast
    import importlib.util

    module, _, name = target.partition(":")
    tree = ast.parse(open(importlib.util.find_spec(module).origin, encoding="utf-8").read())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return (ast.get_docstring(func) or "").strip().split("\n", 1)[0]


# ------------------------------------------------------------------------------------------ one declaration
@dataclasses.dataclass
class Option:
    """A command-line option: a parameter of the command function, or a field of a dataclass parameter."""

    name: str  # the parameter's name, e.g. num_samples
    annotation: object
    required: bool
    group: str | None = None  # the dataclass parameter it belongs to

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_bool(self) -> bool:
        return self.annotation is bool

    @property
    def is_list(self) -> bool:
        """list[...] or list[...] | None: takes several values (``--synthetic a.jsonl b.jsonl``)."""
        kinds = typing.get_args(self.annotation) if typing.get_origin(self.annotation) in (typing.Union,
                                                                                            types.UnionType) \
            else (self.annotation,)
        return any(typing.get_origin(k) is list for k in kinds)


def _dataclass_of(annotation) -> type | None:
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def command_options(func: Callable) -> list[Option]:
    """The options of a command function: its parameters, with dataclass parameters flattened into theirs."""
    hints = typing.get_type_hints(func)
    out = []
    for p in inspect.signature(func).parameters.values():
        hint = hints.get(p.name, str)
        dc = _dataclass_of(hint)
        if dc is None:
            out.append(Option(p.name, hint, p.default is inspect.Parameter.empty))
            continue
        dc_hints = typing.get_type_hints(dc)
        for f in dataclasses.fields(dc):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out.append(Option(f.name, dc_hints[f.name], required, group=p.name))
    return out


def build_parser(func: Callable, prog: str, positional: bool = False):
    """The jsonargparse parser of one command, from its function's signature and docstring alone."""
    from jsonargparse import ArgumentParser

    from mop.types import register

    register()
    import docstring_parser

    doc = docstring_parser.parse(inspect.getdoc(func) or "")
    description = "\n\n".join(d for d in (doc.short_description, doc.long_description) if d)
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    groups = {o.group for o in command_options(func) if o.group}
    parser.add_function_arguments(func, nested_key=None, as_positional=positional, skip=groups)
    for name in groups:
        parser.add_class_arguments(typing.get_type_hints(func)[name], nested_key=None)
    return parser


def call_command(func: Callable, values: dict) -> object:
    """Call a command function with parsed values, rebuilding its dataclass parameters."""
    values = dict(values)
    kwargs = {}
    for p in inspect.signature(func).parameters.values():
        dc = _dataclass_of(typing.get_type_hints(func).get(p.name))
        if dc is None:
            if p.name in values:
                kwargs[p.name] = values.pop(p.name)
        else:
            kwargs[p.name] = dc(**{f.name: values.pop(f.name) for f in dataclasses.fields(dc)
                                   if f.name in values})
    return func(**kwargs)


# ------------------------------------------------------------------------------------------------- argv
def normalise_argv(argv: Sequence[str], options: list[Option]) -> list[str]:
    """Accept ``--a-b`` for ``--a_b``, ``--flag`` / ``--no-flag`` for booleans, and the short aliases."""
    names = {o.name for o in options}
    booleans = {o.name for o in options if o.is_bool}
    lists = {o.name for o in options if o.is_list}
    out: list[str] = []
    argv = list(argv)
    skip = 0
    for i, token in enumerate(argv):
        if skip:
            skip -= 1
            continue
        if not token.startswith("-") or token in ("-h", "--help") or token.startswith("--print_config"):
            out.append(token)
            continue
        flag, eq, value = token.partition("=")
        name = _resolve(flag, options)
        if name is None:
            out.append(token)
            continue
        if name not in names:  # --no-flag
            out.append(f"--{name[3:]}=false")
        elif name in lists and not eq:  # --files a b c -> --files=["a", "b", "c"]
            values = list(itertools.takewhile(lambda t: not t.startswith("-"), argv[i + 1:]))
            skip = len(values)
            out.append(f"--{name}={json.dumps(values)}")
        elif name in booleans and not eq and (i + 1 == len(argv) or argv[i + 1].startswith("-")
                                              or argv[i + 1].lower() not in ("true", "false")):
            out.append(f"--{name}=true")
        else:
            out.append(f"--{name}" + (f"={value}" if eq else ""))
    return out


def _resolve(token: str, options: list[Option]) -> str | None:
    """The option an argv token names (``--num-samples``, ``--num_samples``, ``--no-progress``, ``-c``), or
    None; a ``--no-`` prefix is kept (``no_progress``) for :func:`normalise_argv`."""
    flag = ALIASES.get(token.partition("=")[0], token.partition("=")[0])
    if not flag.startswith("--"):
        return None
    name = flag[2:].replace("-", "_")
    if any(o.name == name for o in options):
        return name
    if name.startswith("no_") and any(o.name == name[3:] and o.is_bool for o in options):
        return name
    return None


_KEY = 'Parser key "'
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "Problem with given class_path")


def _schema_keys(class_path: str | None) -> list[str]:
    """The keys a config section of class ``class_path`` (e.g. ``mop.data.DatasetSpec``) accepts."""
    if not class_path:
        return []
    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]


def _key_error(lines: list[str], key_form: Callable[[str], str]) -> str:
    """'Parser key "K": ...' and its indented details as ``KEY: reason``. A Union's report lists every
    subtype's failure: the real one is kept, the rest dropped. A key the section's class does not have is
    named with a "did you mean" from that class's keys, and the section's whole value is not repeated."""
    from mop.errors import did_you_mean

    key, reasons, given, class_path, unknown = "", [], None, None, []
    for ln in lines:
        if ln.startswith(_KEY):  # 'Parser key "data.personas":' then, nested, 'Parser key "num_personas":'
            name, _, ln = ln[len(_KEY):].partition('"')
            key = f"{key}.{name}" if key and not name.startswith(key) else name
            ln = ln.lstrip(":").strip()
        if ln.startswith("Given value:"):
            given = ln.partition(":")[2].strip()
        if ln.startswith("Problem with given class_path '"):
            class_path = ln.split("'")[1]
        if ln.startswith("Option '") and ln.endswith("' is not accepted"):
            option = ln.split("'")[1]
            unknown.append(f"unknown key '{option}'{did_you_mean([option], _schema_keys(class_path))}")
            continue
        if not ln or ln.startswith(_NOISE):
            continue
        if ln.startswith("Not of type "):  # 'Not of type PositiveInt: must be positive, got 0'
            ln = ln.partition(": ")[2]
        reasons.append(ln.replace("Expected a typing.Literal", "expected one of ")
                       .replace(". Got value: ", ", got "))
    if unknown:  # the other lines are the other ways jsonargparse tried to read the section (a path...)
        reasons = unknown
    elif given is not None and not any("got" in r.lower() for r in reasons):
        reasons.append(f"got {given!r}")
    return f"{key_form(key)}: {'; '.join(reasons)}"


def error_line(message: str, options: list[Option], argv: Sequence[str],
               key_form: Callable[[str], str]) -> str:
    """A jsonargparse error (often several indented lines) as one line, with a "did you mean" for a typo."""
    lines = [ln.strip().removeprefix("- ") for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return "invalid arguments"
    line = "; ".join(lines) if not lines[0].startswith(_KEY) else _key_error(lines, key_form)
    for o in options:  # the names of missing options as the user types them
        line = line.replace(f"required: {o.name}", f"required: {o.flag}")
    known = [o.flag for o in options]
    unknown = [t.partition("=")[0] for t in argv if t.startswith("--") and _resolve(t, options) is None]
    hints = [m[0] for t in unknown
             for m in [difflib.get_close_matches(t.replace("_", "-"), known, n=1, cutoff=0.75)] if m]
    return line + (f" (did you mean {', '.join(repr(h) for h in hints)}?)" if hints else "")


def parse_command(func: Callable, argv: Sequence[str], prog: str, positional: bool = False) -> dict:
    """Parse ``argv`` for one command; a bad argument raises :class:`UsageError` with one line."""
    from jsonargparse import ArgumentError

    options = command_options(func)
    parser = build_parser(func, prog, positional)
    try:
        ns = parser.parse_args(normalise_argv(argv, options))
    except ArgumentError as err:
        raise UsageError(prog, error_line(str(err), options, argv, lambda k: "--" + k.replace("_", "-"))) \
            from None
    return ns.as_dict()


def run_command(name: str, argv: Sequence[str], prog: str | None = None) -> int:
    """``mop NAME ARGV`` (or ``mop NAME ACTION ARGV`` for a table of sub-commands)."""
    prog = prog or f"mop {name}"
    entry = COMMANDS[name]
    if isinstance(entry, dict) and "" in entry and not (argv and argv[0] in entry):
        entry = entry[""]  # the table's default action
    if isinstance(entry, dict):
        if not argv or argv[0] in ("-h", "--help"):
            print(_listing(prog, entry))
            return 0 if argv else 2
        if argv[0] not in entry:
            raise UsageError(prog, f"unknown command '{argv[0]}'; expected one of {', '.join(entry)}")
        prog, entry, argv = f"{prog} {argv[0]}", entry[argv[0]], argv[1:]
    func = _load(entry)
    if name in RAW_ARGV:
        return func(list(argv))
    values = parse_command(func, argv, prog, positional=name in POSITIONAL)
    result = call_command(func, values)
    return int(result or 0)


def _listing(prog: str, table: dict) -> str:
    rows = []
    for name, entry in table.items():
        summary = (_summary(entry) if isinstance(entry, str)
                   else _summary(entry[""]) + f" (also: {', '.join(k for k in entry if k)})" if "" in entry
                   else ", ".join(entry))
        rows.append(f"  {name:<10} {summary}")
    return (f"usage: {prog} COMMAND [ARGS] (see {prog} COMMAND --help)\n\ncommands:\n" + "\n".join(rows))


def run(func: Callable[[], int]) -> int:
    """Run a command body, turning user errors into one line and a non-zero exit."""
    try:
        return func()
    except UsageError as err:
        if os.environ.get("MOP_DEBUG"):
            raise
        print(f"{err.prog}: error: {err} (see {err.prog} --help)", file=sys.stderr)
        return 2
    except MopError as err:
        if os.environ.get("MOP_DEBUG"):
            raise
        print(f"mop: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mop: interrupted", file=sys.stderr)
        return 130
    finally:
        close_process_group()


def close_process_group() -> None:
    """Destroy the torch.distributed process group a multi-process command leaves behind (Lightning does not),
    so that a rank exits cleanly instead of being aborted at interpreter exit by the backend's threads
    ("terminate called without an active exception", seen with gloo after a finished DDP fit)."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for a command that did not
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``mop ARGS``; ``prog`` names a script that runs one command (``generate.py``) in its messages."""
    from mop.assets import offline_defaults

    argv = list(sys.argv[1:] if argv is None else argv)
    offline_defaults()
    if not argv or argv[0] in ("-h", "--help"):
        print("Mixture of Personas: population simulation with a frozen LM and a learned persona/exemplar "
              "gate.\n")
        print(_listing("mop", COMMANDS))
        return 0 if argv else 2

    def dispatch() -> int:
        if argv[0] not in COMMANDS:
            hint = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
            raise UsageError("mop", f"unknown command '{argv[0]}'"
                             + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        return run_command(argv[0], argv[1:], prog=prog)

    return run(dispatch)


if __name__ == "__main__":
    sys.exit(main())
