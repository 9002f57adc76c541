"""Fixtures for the ReaLModel tests: one tiny HF checkpoint per family."""
from __future__ import annotations

import pytest
from model_testlib import FAMILIES, make_hf_model, save_hf, tiny_hf_config


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def hf_checkpoint(family, tmp_path):
    """(family, HF model, directory written by save_pretrained)."""
    model = make_hf_model(tiny_hf_config(family))
    return family, model, save_hf(model, tmp_path / f"hf_{family}")
