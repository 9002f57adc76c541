"""Every built-in graph runs 3 steps in-process on a tiny model and the bundled task."""
from __future__ import annotations

import math

import pytest

from realflow.apps.experiments import run_experiment

TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]
DATA = ["dataset.arithmetic_n_train=64", "dataset.arithmetic_difficulty=easy"]

CASES = {
    "sft": (["n_seqs=8", *("model." + t for t in TINY)], "trainDefault", "loss"),
    "rw": (["n_seqs=8", *("model." + t for t in TINY)], "trainRW", "loss"),
    "dpo": (["n_seqs=8", *("actor." + t for t in TINY)], "actor_train", "loss"),
    "ppo": (["n_seqs=8", "generation.max_new_tokens=6", *("actor." + t for t in TINY)], "actor_train", "loss"),
    "grpo": (["n_seqs=4", "group_size=4", "beta=0.04", "generation.max_new_tokens=6", *("actor." + t for t in TINY)],
             "actor_train", "loss"),
    "rloo": (["n_seqs=4", "group_size=4", "generation.max_new_tokens=6", *("actor." + t for t in TINY)],
             "actor_train", "loss"),
    "remax": (["n_seqs=4", "kl_ctl=0.05", "generation.max_new_tokens=6", *("actor." + t for t in TINY)],
              "actor_train", "loss"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_graph_runs_three_steps(name, tmp_path):
    overrides, train_mfc, stat = CASES[name]
    result = run_experiment(name, [*overrides, *DATA, "run.n_steps=3", f"run.fileroot={tmp_path}"])
    steps = sorted({r.step for r in result.records})
    assert steps == [0, 1, 2]
    values = result.stats(train_mfc, stat)
    assert len(values) == 3 and all(math.isfinite(v) for v in values), values
    trained = [m for m in result.models.values() if m.engine is not None and hasattr(m.engine, "optimizer")]
    assert trained and all(m.version == 3 for m in trained)
    assert (result.run_dir / "checkpoints" / "final").is_dir()


def test_filtered_sampling_trains_on_the_sampled_distribution(tmp_path):
    """With top-k/top-p the logits mask reaches training, so the first update's
    importance ratio is 1 (old and new log-probs come from the same distribution)."""
    overrides, train_mfc, _ = CASES["grpo"]
    result = run_experiment(
        "grpo",
        [*overrides, *DATA, "generation.top_k=5", "generation.top_p=0.9", "run.n_steps=1", f"run.fileroot={tmp_path}"],
    )
    assert result.stats(train_mfc, "importance_ratio")[0] == pytest.approx(1.0, abs=1e-4)
