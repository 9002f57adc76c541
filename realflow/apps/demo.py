"""`realflow demo`: a short tour of what exists (placeholder until the quickstart)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="random seed")


def main(args: argparse.Namespace) -> int:
    print(f"realflow demo (seed={args.seed})")
    return 0
