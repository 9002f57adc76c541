"""Fixtures for the interface tests: a tiny ReaLModel behind a real engine, the
bundled tokenizer, and batches from the built-in datasets on the arithmetic task."""
from __future__ import annotations

import pytest
import torch
from interfaces_testlib import make_model, task_files

from realflow.assets import load_tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a shared 2-core
    machine spin against other processes and make each small matmul ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    """Paths of the arithmetic task files (easy difficulty, 16 train problems)."""
    return task_files(tmp_path_factory.mktemp("arith"))


@pytest.fixture
def actor(tokenizer):
    return make_model(tokenizer, role="actor")


@pytest.fixture
def critic(tokenizer):
    return make_model(tokenizer, role="critic", critic=True)
