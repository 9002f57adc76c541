"""The registry of Hugging Face model families and the generic tensor conversion.

A family says three things:
- how its HF config maps to a `ReaLModelConfig` and back;
- for each ReaLModel layer, which HF tensors it needs and how they map
  (`TensorRule`s: a rename, a fusion of several HF tensors along dim 0 in order, and
  optionally a transpose for GPT-2's Conv1D (in, out) weights);
- its HF architecture names (causal LM, and sequence classification for critics).

Everything else (state dict conversion both ways, shape checks, per-stage loading)
is generic and lives here, so adding a family is a small file of tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from realflow.api.errors import ModelError, RegistryError
from realflow.api.registry import Registry
from realflow.model.config import ReaLModelConfig
from realflow.model.sharding import join_fused, split_fused


@dataclass(frozen=True)
class TensorRule:
    """One ReaLModel tensor made from one or more HF tensors.

    `hf` with several names: fused along dim 0 in that order, with `sections` the
    size of each part along dim 0 (in ReaLModel orientation). `transpose`: HF stores
    the weight as (in, out) (GPT-2 Conv1D); applied to each part.
    """

    ours: str
    hf: tuple[str, ...]
    sections: tuple[int, ...] | None = None
    transpose: bool = False

    def __post_init__(self) -> None:
        if len(self.hf) > 1 and (self.sections is None or len(self.sections) != len(self.hf)):
            raise ModelError(f"rule for '{self.ours}' fuses {len(self.hf)} HF tensors but has sections {self.sections}")


LayerRules = Callable[[ReaLModelConfig, int], list[TensorRule]]


@dataclass(frozen=True)
class HFFamily:
    """Everything realflow needs to read and write one HF model family."""

    name: str
    model_type: str
    causal_lm_architecture: str
    critic_architecture: str | None
    config_from_hf: Callable[[Any], ReaLModelConfig]
    config_to_hf: Callable[[ReaLModelConfig], Any]
    layer_rules: LayerRules

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(a for a in (self.causal_lm_architecture, self.critic_architecture) if a)


HF_FAMILIES: Registry[HFFamily] = Registry("HF model family")


def register_hf_family(
    name: str,
    *,
    model_type: str,
    causal_lm_architecture: str,
    config_from_hf: Callable[[Any], ReaLModelConfig],
    config_to_hf: Callable[[ReaLModelConfig], Any],
    layer_rules: LayerRules,
    critic_architecture: str | None = None,
    overwrite: bool = False,
) -> HFFamily:
    """Register a family under `name` (e.g. 'llama'); returns the entry."""
    family = HFFamily(name, model_type, causal_lm_architecture, critic_architecture,
                      config_from_hf, config_to_hf, layer_rules)
    for other in HF_FAMILIES.names():
        clash = set(HF_FAMILIES.get(other).architectures) & set(family.architectures)
        if clash and other != name:
            raise RegistryError(f"architectures {sorted(clash)} are already handled by family '{other}'")
    HF_FAMILIES.register(name, family, overwrite=overwrite)
    return family


def get_hf_family(name: str) -> HFFamily:
    return HF_FAMILIES.get(name)


def family_for_architecture(architecture: str) -> HFFamily:
    """The family handling an HF architecture name such as 'LlamaForCausalLM'."""
    known = []
    for name in HF_FAMILIES.names():
        family = HF_FAMILIES.get(name)
        if architecture in family.architectures:
            return family
        known.extend(family.architectures)
    raise ModelError(
        f"unknown HF architecture '{architecture}'; registered: {', '.join(sorted(known)) or '(none)'} "
        "(add one with realflow.model.register_hf_family)"
    )


def _expected_hf_shape(rule: TensorRule, ours_shape: tuple[int, ...], part: int) -> tuple[int, ...]:
    shape = ours_shape if rule.sections is None else (rule.sections[part], *ours_shape[1:])
    return tuple(reversed(shape)) if rule.transpose else tuple(shape)


def state_dict_from_hf(
    family: HFFamily,
    config: ReaLModelConfig,
    layer_indices: Iterable[int],
    get: Callable[[str], torch.Tensor],
    expected_shapes: Mapping[str, tuple[int, ...]],
    skip: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """ReaLModel tensors for `layer_indices`, fetched from HF tensors with `get`.

    Only keys in `expected_shapes` (ReaLModel key -> shape) are loaded; the shape is
    checked for every HF tensor, so a mismatch names the HF tensor and both shapes.
    Keys in `skip` are not loaded.
    """
    skip = set(skip)
    out: dict[str, torch.Tensor] = {}
    for index in layer_indices:
        for rule in family.layer_rules(config, index):
            if rule.ours in skip or rule.ours not in expected_shapes:
                continue
            ours_shape = tuple(expected_shapes[rule.ours])
            parts = []
            for j, hf_name in enumerate(rule.hf):
                tensor = get(hf_name)
                want = _expected_hf_shape(rule, ours_shape, j)
                if tuple(tensor.shape) != want:
                    raise ModelError(
                        f"shape mismatch for HF tensor '{hf_name}' (-> '{rule.ours}'): "
                        f"checkpoint has {tuple(tensor.shape)}, the config expects {want}"
                    )
                parts.append(tensor.t() if rule.transpose else tensor)
            out[rule.ours] = parts[0] if len(parts) == 1 else join_fused(parts, dim=0)
    return out


def state_dict_to_hf(
    family: HFFamily, config: ReaLModelConfig, layer_indices: Iterable[int], state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """HF tensors (contiguous, own storage) for the keys of `state` in `layer_indices`."""
    out: dict[str, torch.Tensor] = {}
    for index in layer_indices:
        for rule in family.layer_rules(config, index):
            if rule.ours not in state:
                continue
            tensor = state[rule.ours].detach()
            parts = [tensor] if rule.sections is None else split_fused(tensor, rule.sections, dim=0)
            for hf_name, part in zip(rule.hf, parts):
                out[hf_name] = (part.t() if rule.transpose else part).clone(memory_format=torch.contiguous_format)
    return out
