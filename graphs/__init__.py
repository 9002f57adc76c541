"""Built-in algorithm graphs, installed as `realflow.graphs`.

Importing this package registers every built-in experiment
(`realflow.api.experiment.EXPERIMENTS`). A user's own graph lives in their own
file and registers itself the same way (see docs/algorithms.md).
"""
from realflow.graphs import dpo, grpo, ppo, remax, rloo, rw, sft  # noqa: F401
