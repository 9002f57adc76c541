"""The keys under which the processes of one trial publish themselves.

Every key of a trial lives under `trial_root(experiment, trial)`, so that
`NameResolver.reset(experiment, trial)` removes everything an earlier run of the
same trial left behind (a crashed run never deletes its entries). Keys are
'/'-separated segments; each segment is validated here so that a file backend can
map them onto directories safely.

What this module is not: a resolver. It only spells keys; see
realflow.system.name_resolve for where their values live.
"""
from __future__ import annotations

import re

from realflow.api.errors import ConfigError

ROOT = "realflow"
_SEGMENT = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


def check_segment(segment: str, what: str = "name segment") -> str:
    """`segment` if it can be one segment of a key; ConfigError otherwise."""
    if not isinstance(segment, str) or not _SEGMENT.match(segment):
        raise ConfigError(
            f"{what} {segment!r} cannot be used in a name-resolution key: use letters, digits, "
            "'_', '-' and '.', not starting with '.'"
        )
    return segment


def check_key(key: str) -> str:
    """`key` if every '/'-separated segment is valid; ConfigError naming the bad one."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"name-resolution key must be a non-empty string, got {key!r}")
    for seg in key.split("/"):
        check_segment(seg, what=f"segment of key {key!r}:")
    return key


def trial_root(experiment: str, trial: str) -> str:
    """The prefix of every key of one trial."""
    return f"{ROOT}/{check_segment(experiment, 'experiment name')}/{check_segment(trial, 'trial name')}"


def worker(experiment: str, trial: str, idx: int) -> str:
    """Where model worker `idx` publishes its `ServerAddress` (request + heartbeat ports)."""
    return f"{trial_root(experiment, trial)}/worker/{_index(idx)}"


def workers(experiment: str, trial: str) -> str:
    """The prefix under which all workers of a trial publish (for `get_subtree`)."""
    return f"{trial_root(experiment, trial)}/worker"


def master(experiment: str, trial: str) -> str:
    """Where the master publishes whatever workers need to reach it."""
    return f"{trial_root(experiment, trial)}/master"


def distributed_init(experiment: str, trial: str) -> str:
    """The torch.distributed rendezvous address (`tcp://host:port`) of the trial."""
    return f"{trial_root(experiment, trial)}/distributed_init"


def _index(idx: int) -> str:
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        raise ConfigError(f"worker index must be an int >= 0, got {idx!r}")
    return str(idx)
