"""The `realflow` command line.

    realflow demo                  # what exists so far, on the bundled arithmetic task
    realflow <subcommand> --help

Subcommands are registered in one table; each is a small function taking the
parsed arguments.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from realflow.apps import demo

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "demo": ("run a short demo of realflow on the bundled arithmetic task", demo.add_arguments, demo.main),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
