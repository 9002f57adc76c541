"""docs/datasets.md stays runnable: its Python blocks are executed in order."""
from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"


def test_custom_dataset_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/datasets.md has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_datasets_example"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert len(namespace["ds"]) == 3
    assert "reference" in capsys.readouterr().out
