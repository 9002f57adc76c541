"""Helpers of the interface tests: tiny models, batches in the key contract's layout."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from realflow.api.config import OptimizerConfig
from realflow.api.data import SequenceSample
from realflow.api.dataset import DatasetUtility, make_dataset
from realflow.api.dfg import ModelName
from realflow.api.interface import Model
from realflow.engine.train import InferenceEngine, TrainEngine
from realflow.model.builder import random_model
from realflow.model.config import ReaLModelConfig
from realflow.tasks.arithmetic import write_arithmetic_task


def tiny_config(vocab: int, critic: bool = False) -> ReaLModelConfig:
    """~0.1M parameters: 2 layers, hidden 32, GQA."""
    return ReaLModelConfig(n_layers=2, hidden_dim=32, n_q_heads=4, n_kv_heads=2, head_dim=8, intermediate_dim=64,
                           vocab_size=vocab, n_positions=128, is_critic=critic)


def make_model(tokenizer, role: str = "actor", critic: bool = False, seed: int = 0, lr: float = 1e-2,
               train: bool = True, init_std: float = 0.02) -> Model:
    module = random_model(tiny_config(len(tokenizer), critic), seed=seed, init_std=init_std)
    if train:
        engine = TrainEngine(module, OptimizerConfig(lr=lr, lr_scheduler_type="constant"), total_steps=1000, seed=seed)
    else:
        module.requires_grad_(False)
        engine = InferenceEngine(module, seed=seed)
    return Model(ModelName(role), module, tokenizer, engine)


def frozen_copy(model: Model, role: str = "ref") -> Model:
    module = copy.deepcopy(model.module)
    module.requires_grad_(False)
    return Model(ModelName(role), module, model.tokenizer, InferenceEngine(module))


def params(model: Model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.module.parameters()])


def task_files(root: Path) -> dict[str, str]:
    return write_arithmetic_task(root, n_train=16, n_test=4, seed=1, difficulty="easy")


def batch(tokenizer, task: dict[str, str], name: str, n: int = 4, **args) -> SequenceSample:
    """The first `n` samples of built-in dataset `name` on the arithmetic task."""
    files = {"prompt_answer": "sft_train", "prompt": "prompt_train", "rw_paired": "rw_train"}
    ds = make_dataset(name, DatasetUtility(tokenizer), source=task[files[name]], **args)
    return SequenceSample.gather([ds[i] for i in range(n)])


def rollout_batch(tokenizer, prompts: list[str], completions: list[list[str]], eos: bool = True,
                  metadata: dict | None = None) -> SequenceSample:
    """A batch in the rollout layout from texts: one sample per prompt, its completions as sequences."""
    ids, pmask, lens = [], [], []
    for p, comps in zip(prompts, completions):
        p_ids = tokenizer.encode(p)
        lens.append([])
        for c in comps:
            c_ids = tokenizer.encode(c) + ([tokenizer.eos_token_id] if eos else [])
            ids += p_ids + c_ids
            pmask += [True] * len(p_ids) + [False] * len(c_ids)
            lens[-1].append(len(p_ids) + len(c_ids))
    return SequenceSample(
        keys={"packed_input_ids", "prompt_mask"},
        ids=[f"s{i}" for i in range(len(prompts))],
        seqlens={"packed_input_ids": lens, "prompt_mask": lens},
        trailing_shapes={"packed_input_ids": (), "prompt_mask": ()},
        dtypes={"packed_input_ids": torch.long, "prompt_mask": torch.bool},
        data={"packed_input_ids": torch.tensor(ids), "prompt_mask": torch.tensor(pmask)},
        metadata=metadata or {},
    )


def add_key(sample: SequenceSample, key: str, tensor: torch.Tensor, layout: str) -> None:
    """Add `key` in `layout` (token / action / sequence) over packed_input_ids."""
    lens = sample.seqlens["packed_input_ids"]
    seqlens = {"token": lens, "action": [[n - 1 for n in s] for s in lens], "sequence": [[1] * len(s) for s in lens]}
    sample.update_(SequenceSample(
        keys={key}, ids=sample.ids, seqlens={key: seqlens[layout]}, trailing_shapes={key: tuple(tensor.shape[1:])},
        dtypes={key: tensor.dtype}, data={key: tensor},
    ))
