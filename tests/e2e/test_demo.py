"""`realflow demo` (the README's first command) end to end, cut down to a few steps."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from realflow.apps import demo


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--fileroot", str(tmp_path), "--n-test", "12", "--n-val", "10", "--rl-steps", "2"])
    for key, value in kw.items():
        setattr(args, key, value)
    return args


@pytest.mark.timeout(300)
def test_demo_stops_sft_at_the_target_and_runs_grpo_from_its_checkpoint(tmp_path, capsys):
    # A target of 0 is met at the first check: SFT stops after `sft_check_every` steps.
    assert demo.main(_args(tmp_path, sft_steps=50, sft_target=0.0, sft_check_every=3, sft_batch=16)) == 0
    out = capsys.readouterr().out
    assert "stopped after 3 steps" in out
    root = tmp_path / "demo" / "demo"
    assert (root / "sft" / "checkpoints" / "final" / "default" / "config.json").is_file()
    grpo_cfg = (root / "grpo" / "config.yaml").read_text()
    assert str(root / "sft" / "checkpoints" / "final" / "default") in grpo_cfg
    assert re.search(r"held-out exact match: SFT \d+\.\d% -> GRPO \d+\.\d% \([+-]\d+\.\d%\)", out), out


@pytest.mark.timeout(300)
def test_demo_sft_runs_to_its_step_limit_when_the_target_is_not_met(tmp_path, capsys):
    assert demo.main(_args(tmp_path, sft_steps=4, sft_target=1.01, sft_check_every=2, sft_batch=16)) == 0
    out = capsys.readouterr().out
    assert "stopped after 4 steps" in out
    # Validation (for the stop) and held-out problems (reported) are disjoint.
    problems = (tmp_path / "demo" / "data" / "sft_test.jsonl").read_text().splitlines()
    assert len(problems) == 22 and len(set(problems)) == 22


@pytest.mark.parametrize("flag", ["sft_check_every", "sft_steps", "rl_steps", "n_val"])
def test_demo_rejects_a_count_below_one(tmp_path, flag):
    from realflow.api.errors import ConfigError

    with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} must be >= 1, got 0"):
        demo.main(_args(tmp_path, **{flag: 0}))
    assert not (tmp_path / "demo").exists()  # nothing written
