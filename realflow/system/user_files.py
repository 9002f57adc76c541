"""Import a user's Python file, which registers experiments, interfaces or data sets.

The CLI's `--file` calls it in the launching process; the distributed launcher
passes the same files to every worker (`WorkerSetup.user_files`), so a user's
interfaces exist wherever their MFCs run.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from realflow.api.errors import ConfigError


def import_user_file(path: str) -> None:
    """Import (execute) `path` as module `realflow_user_<stem>`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--file '{path}' does not exist")
    name = f"realflow_user_{p.stem}"
    spec = importlib.util.spec_from_file_location(name, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
