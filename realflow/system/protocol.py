"""The payloads of the master <-> model-worker requests (realflow.system.messages kinds).

Plain frozen dataclasses in their own module, so that pickles name
`realflow.system.protocol` whichever process (or `python -m` entry point) made them.
Tensors never appear here: samples travel as `SequenceSample.meta()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from realflow.api.data import SequenceSample
from realflow.api.experiment import ExperimentSpec, RunConfig
from realflow.system.transfer_plan import TransferPlan


def worker_name(index: int) -> str:
    """The name worker `index` serves under (and the master calls it by)."""
    return f"w{index}"


@dataclass(frozen=True)
class WorkerSetup:
    """CONFIGURE: what to build, and where the torch.distributed world meets."""

    spec: ExperimentSpec
    run: RunConfig
    roles: tuple[str, ...]
    rank: int
    world_size: int
    dist_init: str  # tcp://127.0.0.1:port
    load_data: bool
    user_files: tuple[str, ...] = ()  # imported first: they register the user's interfaces / data sets
    resume_dir: str | None = None  # a checkpoint with worker state (`SaveRoles.state_dir`) to continue from
    # The workers of every role (the whole allocation, the same on every worker): a
    # role on several workers is data parallel over them.
    role_workers: dict[str, tuple[int, ...]] | None = None


@dataclass(frozen=True)
class DataInfo:
    """The data worker's answer to CONFIGURE (None from the others)."""

    n_samples: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class FetchData:
    step: int
    indices: tuple[int, ...]
    free: tuple[Hashable, ...] = ()  # ids of finished steps to drop first (instead of a FREE_DATA)


@dataclass(frozen=True)
class TransferData:
    """Run this rank's part of `plan`; `meta` describes every (id, key) in it."""

    plan: TransferPlan
    meta: SequenceSample


@dataclass(frozen=True)
class RunMFC:
    step: int
    mfc: str
    ids: tuple[Hashable, ...]
    transfer: TransferData | None  # received before the call
    free: tuple[Hashable, ...] = ()  # ids of finished steps to drop first (instead of a FREE_DATA)


@dataclass(frozen=True)
class MFCResult:
    meta: SequenceSample | None  # outputs (graph key names); None for a train step
    stats: dict[str, float]
    seconds: float  # the interface call alone (transfers excluded)
    summed: tuple[str, ...] = ()  # stats that are totals, not means (`ModelInterface.summed_stats`)


@dataclass(frozen=True)
class EvaluateMFCs:
    """EVALUATE: the `evaluate` of these train MFCs over the whole held-out set,
    after `step`; the reply is one `MFCRecord` (`<mfc>:eval`) per MFC."""

    step: int
    mfcs: tuple[str, ...]


@dataclass(frozen=True)
class SaveRoles:
    root: str
    roles: dict[str, str]  # role -> the MFC whose interface saves it (HF checkpoints under root/role)
    state_dir: str | None = None  # also write this worker's resume state here (<state_dir>/<worker>.pt)
