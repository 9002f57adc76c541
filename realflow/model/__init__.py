"""ReaLModel: realflow's packed transformer, its flat parameter buffer, HF
conversion and KV-cache generation. See docs/model.md.
"""
from __future__ import annotations

from realflow.model.attention import PackedSeqs
from realflow.model.config import ReaLModelConfig, RotaryScaling
from realflow.model.families import (
    HFFamily,
    TensorRule,
    family_for_architecture,
    get_hf_family,
    register_hf_family,
)
from realflow.model.flat_buffer import FlatLayout, param_intervals
from realflow.model.generate import generate
from realflow.model.hf_io import hf_state_dict, load_hf_checkpoint, read_hf_config, save_hf_checkpoint
from realflow.model.real_model import ReaLModel, packed_position_ids
from realflow.model.sharding import ShardSpec, join_fused, shard_fused, split_fused, tp_shard_spec, unshard_fused

__all__ = [
    "FlatLayout",
    "HFFamily",
    "PackedSeqs",
    "ReaLModel",
    "ReaLModelConfig",
    "RotaryScaling",
    "ShardSpec",
    "TensorRule",
    "family_for_architecture",
    "generate",
    "get_hf_family",
    "hf_state_dict",
    "join_fused",
    "load_hf_checkpoint",
    "packed_position_ids",
    "param_intervals",
    "read_hf_config",
    "register_hf_family",
    "save_hf_checkpoint",
    "shard_fused",
    "split_fused",
    "tp_shard_spec",
    "unshard_fused",
]
