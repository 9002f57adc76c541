"""The `realflow` command line.

    realflow demo                     # the quickstart on the bundled arithmetic task
    realflow run <experiment> key=value ...
    realflow graph <experiment> --out graph.png
    realflow list

Subcommands are registered in one table; each is a small function taking the
parsed arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from realflow.api.errors import RealflowError
from realflow.apps import demo, experiments

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "demo": ("run a short demo of realflow on the bundled arithmetic task", demo.add_arguments, demo.main),
    "run": ("run an experiment (in this process, or --workers N processes)", experiments.add_run_arguments, experiments.main_run),
    "graph": ("draw an experiment's graph to PNG or DOT", experiments.add_graph_arguments, experiments.main_graph),
    "list": ("list the registered experiments", experiments.add_list_arguments, experiments.main_list),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key=value) may stand before, between or after options; argparse
    # stops collecting a positional list at the first option, so gather the rest.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if "=" not in x or x.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command][2](args)
    except RealflowError as e:
        # One clear line for bad input; tracebacks are for bugs.
        print(f"realflow: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
