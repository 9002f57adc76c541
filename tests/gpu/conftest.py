"""GPU tier: everything here carries the `gpu` marker and is skipped without CUDA
(tests/conftest.py). The model fixtures and helpers are the CPU model tests'
(tests/unit/model/model_testlib.py)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "model"))

from model_testlib import family, hf_checkpoint  # noqa: E402,F401  (fixtures)
