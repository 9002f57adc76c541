"""GPU tier: the model benchmark runs on CUDA (issue 3: "where a GPU is available, run
the same benchmark on it"), cut down to the tiny size and one repeat."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_model_benchmark_runs_on_cuda(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_model.py"), "--sizes", "tiny", "--device", "cuda",
                    "--repeats", "1", "--new-tokens", "16", "--out", str(out)], check=True, timeout=580)
    result = json.loads(out.read_text())
    assert result["device"] == "cuda"
    size = result["sizes"][0]
    for part in ("train", "generate"):
        assert size[part]["ours_tokens_per_s"] > 0 and size[part]["hf_tokens_per_s"] > 0
