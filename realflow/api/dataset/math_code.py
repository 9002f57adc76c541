"""`math_code`: verifiable math and code prompts, with an eval-score curriculum.

Record format (`qid` is the id):

    {"qid": "m1", "prompt": "864+394=", "task": "math", "solutions": ["1258"]}
    {"qid": "c1", "prompt": "Read two ints, print their sum.", "task": "code",
     "input_output": {"inputs": ["1 2\\n"], "outputs": ["3\\n"]}}

`task` is "math" (needs `solutions`: a non-empty list of strings) or "code"
(needs `input_output`: an object, or a JSON string of one, with `inputs` and
`outputs` lists of equal length). Samples are those of the `prompt` dataset:
`packed_prompts`, and every other field in metadata for the reward.

`filter(eval_scores)` is the curriculum: among the active prompts whose score
exceeds `filter_threshold`, it drops the highest-scoring ones, at most
floor(`max_filter_percentage` x number of active prompts) per call. Prompts
without a score are kept. The defaults (threshold 1e4, percentage 0) never drop.
"""
from __future__ import annotations

import json
import math
from typing import Hashable, Mapping, Sequence

from realflow.api.dataset.builtin import PromptDataset
from realflow.api.dataset.common import logger
from realflow.api.dataset.loaders import Source
from realflow.api.dataset.records import Record
from realflow.api.dataset.registry import DatasetUtility, check_arg, register_dataset
from realflow.api.errors import ConfigError

__all__ = ["MathCodeDataset", "curriculum_drop"]

TASKS = ("math", "code")


def curriculum_drop(
    active_ids: Sequence[Hashable],
    eval_scores: Mapping[Hashable, float],
    threshold: float,
    max_fraction: float,
) -> list[Hashable]:
    """Ids to drop: scored above `threshold`, highest first, at most floor(max_fraction * n).

    `n` is the number of active ids; ids without a score, and scores of ids not
    active here (another rank's), are ignored. Ties keep the order of `active_ids`.
    """
    budget = math.floor(max_fraction * len(active_ids) + 1e-9)  # 0.29 * 100 is 28.999...
    candidates = [
        (-float(eval_scores[i]), pos, i)
        for pos, i in enumerate(active_ids)
        if i in eval_scores and eval_scores[i] > threshold
    ]
    candidates.sort(key=lambda c: (c[0], c[1]))
    return [i for _, _, i in candidates[:budget]]


def _check_input_output(r: Record) -> None:
    value = r.get("input_output")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise r.error(f"invalid JSON string: {e.msg}", "input_output") from None
    if not isinstance(value, dict):
        raise r.error(f"expected an object with 'inputs' and 'outputs', got {type(value).__name__}",
                      "input_output")
    for key in ("inputs", "outputs"):
        if not isinstance(value.get(key), list):
            raise r.error(f"expected a list, got {type(value.get(key)).__name__}", f"input_output.{key}")
    if len(value["inputs"]) != len(value["outputs"]):
        raise r.error(f"{len(value['inputs'])} inputs but {len(value['outputs'])} outputs",
                      "input_output.outputs")


class MathCodeDataset(PromptDataset):
    """Math/code prompts for RL with verifiable rewards, filterable by eval scores."""

    name = "math_code"
    id_field = "qid"

    def __init__(self, util: DatasetUtility, source: Source, max_length: int | None = None,
                 filter_threshold: float = 1e4, max_filter_percentage: float = 0.0) -> None:
        check_arg(self.name, "filter_threshold", filter_threshold, float)
        check_arg(self.name, "max_filter_percentage", max_filter_percentage, float, minimum=0.0)
        if max_filter_percentage >= 1.0:
            raise ConfigError(f"dataset '{self.name}': argument 'max_filter_percentage' must be < 1 "
                              f"(some prompts always stay active), got {max_filter_percentage!r}")
        self.filter_threshold = float(filter_threshold)
        self.max_filter_percentage = float(max_filter_percentage)
        super().__init__(util, source, max_length)

    def _check(self, r: Record) -> None:
        task = r.text("task")
        if task not in TASKS:
            raise r.error(f"must be one of {', '.join(repr(t) for t in TASKS)}, got {task!r}", "task")
        if task == "math":
            if not isinstance(r.get("solutions"), list):
                raise r.error(f"expected a non-empty list of strings, got {type(r.get('solutions')).__name__}",
                              "solutions")
            r.texts("solutions")
        else:
            _check_input_output(r)

    def filter(self, eval_scores: Mapping[Hashable, float]) -> list[Hashable]:
        """Drop well-solved prompts (see module docstring); returns the dropped ids."""
        dropped = curriculum_drop(self.ids, eval_scores, self.filter_threshold, self.max_filter_percentage)
        before = len(self)
        self.drop_ids(dropped)
        logger.info("dataset '%s': filter dropped %d of %d active prompts (threshold %g, at most %g%%)",
                    self.name, len(dropped), before, self.filter_threshold, 100 * self.max_filter_percentage)
        return dropped


register_dataset(MathCodeDataset.name, MathCodeDataset)
