"""Hugging Face model families: one small file each, registered on import.

Adding a family (e.g. mistral) is a new file here that calls `register_hf_family`
and an import line below; see docs/model.md.
"""
from __future__ import annotations

from realflow.model.families import gpt2, llama, mistral, qwen2  # noqa: F401  (register built-ins)
from realflow.model.families.registry import (
    HF_FAMILIES,
    HFFamily,
    TensorRule,
    family_for_architecture,
    get_hf_family,
    register_hf_family,
    state_dict_from_hf,
    state_dict_to_hf,
)

__all__ = [
    "HF_FAMILIES",
    "HFFamily",
    "TensorRule",
    "family_for_architecture",
    "get_hf_family",
    "register_hf_family",
    "state_dict_from_hf",
    "state_dict_to_hf",
]
