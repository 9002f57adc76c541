"""Fixtures for the ReaLModel tests: one tiny HF checkpoint per family (model_testlib)."""
from __future__ import annotations

from model_testlib import family, hf_checkpoint  # noqa: F401  (fixtures)
