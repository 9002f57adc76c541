"""docs/interfaces.md stays true: its Python blocks run in order, and the key
contract table names every key the built-in interfaces use."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import realflow.interfaces  # noqa: F401
from realflow.api.interface import INTERFACES

DOC = Path(__file__).resolve().parents[3] / "docs" / "interfaces.md"


def test_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 4, "docs/interfaces.md: expected the custom-interface and reward-function examples"
    monkeypatch.chdir(tmp_path)
    # The blocks run as one user module (dataclasses look their module up in sys.modules).
    module = types.ModuleType("docs_interfaces_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), module.__dict__)
    printed = [eval(line) for line in capsys.readouterr().out.splitlines()]
    assert printed[0] == pytest.approx([2.0, -0.3, 1.6])
    assert printed[1] == pytest.approx([1.5, 0.5, 0.0])
    assert "digits_format" in INTERFACES


def test_every_builtin_interface_is_documented():
    text = DOC.read_text()
    builtins = {"sft", "paired_rw", "dpo", "ppo_actor", "ppo_critic", "grpo", "rloo", "remax",
                "reward_fn", "math_verify", "arithmetic", "code_verify", "hf_classifier"}
    assert builtins <= set(INTERFACES.names())
    missing = [name for name in sorted(builtins) if f"`{name}`" not in text]
    assert not missing, f"docs/interfaces.md does not describe {missing}"
