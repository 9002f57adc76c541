"""GPU tier: everything here carries the `gpu` marker and is skipped without CUDA
(tests/conftest.py). The model helpers are the CPU model tests' (tests/unit/model)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "model"))

from model_testlib import FAMILIES, make_hf_model, save_hf, tiny_hf_config  # noqa: E402


@pytest.fixture(params=FAMILIES)
def hf_checkpoint(request, tmp_path):
    """(family, HF model on CPU, directory written by save_pretrained), one per family."""
    model = make_hf_model(tiny_hf_config(request.param))
    return request.param, model, save_hf(model, tmp_path / f"hf_{request.param}")
