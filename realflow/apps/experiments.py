"""`realflow run`, `realflow graph`, `realflow list`: experiments from the command line.

    realflow run sft run.n_steps=20 n_seqs=64 model.optimizer.lr=3e-4
    realflow run ppo --workers 3 --place actor=0,1 --place critic=2   # actor data parallel on w0 and w1
    realflow graph ppo --out ppo.png        # or ppo.dot
    realflow list

Overrides are `key=value` on the experiment's typed config (unknown keys are
rejected with the list of valid ones). `--file my_graph.py` imports a user file
first, so experiments it registers can be run by name.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import realflow.graphs  # noqa: F401  (registers the built-in experiments)
from realflow.api.config import apply_overrides, to_yaml
from realflow.api.dfg import build_graph
from realflow.api.errors import ConfigError
from realflow.api.experiment import EXPERIMENTS, ExperimentSpec
from realflow.api.render import render_graph
from realflow.system.inprocess import RunResult, run_inprocess
from realflow.system.launcher import DistributedResult, LaunchConfig, run_local
from realflow.system.master import default_allocation
from realflow.system.step_log import OnStep
from realflow.system.user_files import import_user_file  # noqa: F401  (re-exported for the CLI)


def load_experiment(name: str, overrides: list[str]) -> tuple[Any, ExperimentSpec]:
    """(typed config, experiment spec) of a registered experiment with overrides."""
    exp = EXPERIMENTS.get(name)
    cfg = apply_overrides(exp.default_config(), overrides)
    return cfg, exp.build(cfg)


def parse_placements(items: list[str]) -> dict[str, list[int]]:
    """`--place ROLE=W[,W...]` options as {role: worker indices}; ConfigError on bad syntax."""
    out: dict[str, list[int]] = {}
    for item in items:
        role, sep, ws = item.partition("=")
        try:
            indices = [int(w) for w in ws.split(",")] if sep and role else None
        except ValueError:
            indices = None
        if not indices:
            raise ConfigError(f"--place '{item}': expected ROLE=W[,W...] with worker indices, e.g. actor=0,1")
        if role in out:
            raise ConfigError(f"--place: role '{role}' is placed twice")
        out[role] = indices
    return out


def prepare_run(name: str, overrides: list[str]) -> tuple[Any, ExperimentSpec]:
    """`load_experiment`, then the run directory with the full config in
    <run dir>/config.yaml; for callers that drive a runner themselves."""
    cfg, spec = load_experiment(name, overrides)
    run_dir = cfg.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"# realflow run {name}\n" + to_yaml(cfg))
    logging.getLogger(__name__).info("experiment %s: config in %s", name, run_dir / "config.yaml")
    return cfg, spec


def run_experiment(
    name: str, overrides: list[str], workers: int = 0, user_files: list[str] | None = None,
    placements: dict[str, list[int]] | None = None, on_step: OnStep = None,
) -> RunResult | DistributedResult:
    """Run a registered experiment; its full config goes to <run dir>/config.yaml.

    `workers=0` runs in this process; N > 0 runs this process as the master plus N
    model-worker processes (realflow.system.launcher; roles round-robin over them).
    `on_step(step, records)` is called after every step; returning True ends the run
    there (the final checkpoint is still written).
    """
    cfg, spec = prepare_run(name, overrides)
    if placements and not workers:
        raise ConfigError(f"--place {placements} needs --workers N (placements are of model workers)")
    if workers:
        allocation: dict[str, Any] | None = None
        if placements:
            # Roles not placed explicitly keep the default round-robin worker.
            allocation = {**{r: ws for r, ws in default_allocation(spec, workers).items()}, **placements}
        return run_local(spec, cfg.run, LaunchConfig(n_workers=workers, allocation=allocation,
                                                     user_files=tuple(user_files or ())), on_step=on_step)
    return run_inprocess(spec, cfg.run, on_step)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="registered experiment name (see `realflow list`)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--file", action="append", default=[], help="a Python file to import first")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--workers", type=int, default=0,
                        help="run as a master plus N model-worker processes (default 0: in this process)")
    parser.add_argument("--place", action="append", default=[], metavar="ROLE=W[,W...]",
                        help="put a model role on these workers (several: data parallel); default round-robin")


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--out", required=True, help="output file: .png or .dot")


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", action="append", default=[], help="a Python file to import first")


def main_run(args: argparse.Namespace) -> int:
    for f in args.file:
        import_user_file(f)
    result = run_experiment(args.experiment, args.overrides, workers=args.workers, user_files=args.file,
                            placements=parse_placements(args.place))
    print(f"finished {len({r.step for r in result.records})} steps; logs and checkpoints in {result.run_dir}")
    return 0


def main_graph(args: argparse.Namespace) -> int:
    for f in args.file:
        import_user_file(f)
    _, spec = load_experiment(args.experiment, args.overrides)
    out = render_graph(build_graph(spec.mfcs), args.out)
    print(f"wrote {out}")
    return 0


def main_list(args: argparse.Namespace) -> int:
    for f in args.file:
        import_user_file(f)
    for name in EXPERIMENTS.names():
        doc = (EXPERIMENTS.get(name).build.__module__ or "")
        first = (sys.modules[doc].__doc__ or "").strip().splitlines()
        print(f"{name:<12} {first[0] if first else ''}")
    return 0
