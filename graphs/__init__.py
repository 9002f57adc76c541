"""Built-in algorithm graphs, installed as `realflow.graphs`.

Importing this package registers every built-in experiment
(`realflow.api.experiment.EXPERIMENTS`). A user's own graph lives in their own
file and registers itself the same way.
"""
from realflow.graphs import sft  # noqa: F401
