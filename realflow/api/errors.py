"""The exceptions realflow raises for bad input.

Every error says *what* is wrong and *where* (file, line, field, node, key) and,
where numbers are involved, the numbers. Internal invariants use `assert`; anything
a user can cause raises one of these.
"""
from __future__ import annotations


class RealflowError(Exception):
    """Base class of every error realflow raises on purpose."""


class ConfigError(RealflowError, ValueError):
    """An experiment, model or engine configuration is invalid."""


class DataError(RealflowError, ValueError):
    """A SequenceSample, batch or micro-batch spec is inconsistent."""


class DatasetError(RealflowError, ValueError):
    """A dataset file or record is malformed.

    Carries the location so that callers (and tests) can read it back.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.path = path
        self.line = line
        self.field = field


class GraphError(RealflowError, ValueError):
    """An algorithm graph (MFC definitions) is invalid."""


class AllocationError(RealflowError, ValueError):
    """A device/parallelism allocation is invalid."""


class ModelError(RealflowError, ValueError):
    """A model config or checkpoint is invalid or does not match."""


class RegistryError(RealflowError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class InterfaceError(RealflowError, RuntimeError):
    """A model interface failed while running an MFC."""


class WorkerError(RealflowError, RuntimeError):
    """A worker process died, hung or reported a failure."""


class DeadlineError(RealflowError, TimeoutError):
    """A wait passed its deadline."""
