"""Datasets: the registry, the loaders and the built-in formats.

    util = DatasetUtility(tokenizer, seed=1, dp_rank=0, world_size=1)
    ds = make_dataset("prompt", util, source="train.jsonl", max_length=512)
    sample = ds[0]          # a SequenceSample holding one sample

Built-ins (registered on import): `prompt_answer` (SFT), `prompt` (RL),
`rw_paired` (preference pairs), `math_code` (verifiable math/code prompts with an
eval-score curriculum). docs/datasets.md describes the formats and shows a
custom dataset.
"""
from __future__ import annotations

from realflow.api.dataset.builtin import PairedRewardDataset, PromptAnswerDataset, PromptDataset, render_prompts
from realflow.api.dataset.common import TokenizedDataset, encode, prepare, require_tokenizer
from realflow.api.dataset.loaders import Source, load_records, read_records, shard_records
from realflow.api.dataset.math_code import MathCodeDataset, curriculum_drop
from realflow.api.dataset.records import Record
from realflow.api.dataset.registry import (
    DatasetUtility,
    check_arg,
    dataset_names,
    make_dataset,
    register_dataset,
)

__all__ = [
    "DatasetUtility",
    "MathCodeDataset",
    "PairedRewardDataset",
    "PromptAnswerDataset",
    "PromptDataset",
    "Record",
    "Source",
    "TokenizedDataset",
    "check_arg",
    "curriculum_drop",
    "dataset_names",
    "encode",
    "load_records",
    "make_dataset",
    "prepare",
    "read_records",
    "register_dataset",
    "render_prompts",
    "require_tokenizer",
    "shard_records",
]
