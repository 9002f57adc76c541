"""Load a ReaLModel from a local Hugging Face directory and save one back.

Reads `config.json` plus weights in any of: `model.safetensors`, sharded
safetensors with `model.safetensors.index.json`, `pytorch_model.bin` (optionally
sharded with its index). Tensors are read lazily, only those the requested layers
need, so a pipeline stage loads only its part. Writes safetensors (sharded with an
index past `max_shard_bytes`) and a config that
`transformers.AutoModelForCausalLM.from_pretrained` (or
`AutoModelForSequenceClassification` for critics) accepts.

Not here: tokenizers and generation configs (save them with HF's own
`save_pretrained`), downloading from the Hub (directories only).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from realflow.api.errors import ModelError
from realflow.model.config import ReaLModelConfig
from realflow.model.families import HFFamily, family_for_architecture, get_hf_family
from realflow.model.families import state_dict_from_hf, state_dict_to_hf
from realflow.model.families.registry import HF_FAMILIES
from realflow.model.real_model import ReaLModel

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


class HFTensorSource:
    """Lazy access to the tensors of an HF checkpoint directory by name."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._files: dict[str, Path] = {}  # tensor name -> file
        self._open: dict[Path, Any] = {}
        if (self.path / SAFE_INDEX).exists() or (self.path / BIN_INDEX).exists():
            index = self.path / (SAFE_INDEX if (self.path / SAFE_INDEX).exists() else BIN_INDEX)
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {name: self.path / f for name, f in weight_map.items()}
        elif (self.path / SAFE_SINGLE).exists():
            with safe_open(self.path / SAFE_SINGLE, framework="pt") as f:
                self._files = {name: self.path / SAFE_SINGLE for name in f.keys()}
        elif (self.path / BIN_SINGLE).exists():
            for name in self._load_bin(self.path / BIN_SINGLE):
                self._files[name] = self.path / BIN_SINGLE
        else:
            present = sorted(p.name for p in self.path.iterdir())
            raise ModelError(
                f"{self.path}: no weights found (looked for {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE}, "
                f"{BIN_INDEX}); the directory holds {present}"
            )

    def _load_bin(self, file: Path) -> dict[str, torch.Tensor]:
        if file not in self._open:
            self._open[file] = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        return self._open[file]

    def names(self) -> list[str]:
        return sorted(self._files)

    def _resolve(self, name: str) -> str:
        if name in self._files:
            return name
        # Some checkpoints (e.g. the original gpt2) omit the base-model prefix.
        short = name.partition(".")[2]
        if short in self._files:
            return short
        close = [n for n in self._files if n.rsplit(".", 2)[-2:] == name.rsplit(".", 2)[-2:]][:3]
        raise ModelError(
            f"{self.path}: missing tensor '{name}' in the checkpoint "
            f"({len(self._files)} tensors; similar: {close or 'none'})"
        )

    def get(self, name: str) -> torch.Tensor:
        name = self._resolve(name)
        file = self._files[name]
        if file.suffix == ".bin":
            return self._load_bin(file)[name]
        if file not in self._open:
            self._open[file] = safe_open(file, framework="pt")
        return self._open[file].get_tensor(name)


def read_hf_config(path: str | os.PathLike, is_critic: bool | None = None) -> tuple[HFFamily, ReaLModelConfig, bool]:
    """(family, ReaLModel config, whether the checkpoint itself is a critic) of an HF dir.

    is_critic None: a critic iff the checkpoint is one. True on a causal-LM
    checkpoint: the config describes a critic whose value head is new.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not an HF model directory (no config.json)")
    try:
        hf = transformers.AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError) as e:
        raise ModelError(f"{path}/config.json: transformers cannot read it: {e}") from e
    architectures = list(getattr(hf, "architectures", None) or [])
    if architectures:
        family = family_for_architecture(architectures[0])
    else:
        by_type = [HF_FAMILIES.get(n) for n in HF_FAMILIES.names() if HF_FAMILIES.get(n).model_type == hf.model_type]
        if not by_type:
            family_for_architecture(f"<none; model_type '{hf.model_type}'>")  # raises with the list
        family = by_type[0]
    ckpt_is_critic = bool(architectures) and architectures[0] == family.critic_architecture
    if is_critic is None:
        is_critic = ckpt_is_critic
    if ckpt_is_critic and not is_critic:
        raise ModelError(f"{path}: checkpoint is a critic ({architectures[0]}); it has no LM head to load an actor")
    config = family.config_from_hf(hf)
    config = dataclasses.replace(
        config, is_critic=is_critic, tied_embedding=config.tied_embedding and not is_critic, hf_family=family.name
    )
    return family, config, ckpt_is_critic


def load_hf_checkpoint(
    path: str | os.PathLike,
    *,
    is_critic: bool | None = None,
    layer_range: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    init_std: float = 0.02,
) -> ReaLModel:
    """A ReaLModel (or the stage `layer_range` of it) with the weights of an HF directory.

    A critic loaded from a causal-LM checkpoint keeps the trunk and gets a new value
    head drawn from N(0, init_std).
    """
    family, config, ckpt_is_critic = read_hf_config(path, is_critic)
    source = HFTensorSource(path)
    model = ReaLModel(config, layer_range, dtype=dtype, device=device, init_std=None)
    layout = model.layout
    new_head = f"{config.head_index}.head.weight" if config.is_critic and not ckpt_is_critic else None
    shapes = {k: layout.shape(k) for k in layout.keys}
    skip = [new_head] if new_head else []
    loaded: set[str] = set()
    with torch.no_grad():
        for index in model.held_layers():  # one layer at a time: peak memory = model + one layer
            for key, tensor in state_dict_from_hf(family, config, [index], source.get, shapes, skip).items():
                layout.view(model.flat_params, key).copy_(tensor)
                loaded.add(key)
        if new_head is not None and new_head in shapes:
            layout.view(model.flat_params, new_head).normal_(0.0, init_std)
            loaded.add(new_head)
    missing = [k for k in layout.keys if k not in loaded]
    if missing:
        raise ModelError(f"family '{family.name}' maps no HF tensor to {missing}")
    return model


def hf_state_dict(
    model: ReaLModel, tensors: dict[str, torch.Tensor] | None = None, *, family: str | None = None
) -> dict[str, torch.Tensor]:
    """`tensors` keyed by ReaLModel keys (default: the model's parameters) renamed,
    split and transposed into HF tensors, for the layers this model holds.

    Works for anything shaped like the parameters, e.g. gradients.
    """
    fam = _family_of(model, family)
    state = dict(model.named_parameters()) if tensors is None else tensors
    return state_dict_to_hf(fam, model.config, model.held_layers(), state)


def _family_of(model: ReaLModel, family: str | None) -> HFFamily:
    name = family or model.config.hf_family
    if name is None:
        raise ModelError("name the HF family (family=...): the model was not loaded from HF")
    return get_hf_family(name)


def _hf_config_for(model: ReaLModel, family: HFFamily) -> Any:
    if model.config.is_critic and family.critic_architecture is None:
        raise ModelError(f"family '{family.name}' has no critic (sequence classification) architecture")
    hf = family.config_to_hf(model.config)
    hf.architectures = [family.critic_architecture if model.config.is_critic else family.causal_lm_architecture]
    if model.config.is_critic:
        hf.num_labels = 1
    hf.dtype = model.dtype
    return hf


def save_hf_checkpoint(
    model: ReaLModel,
    path: str | os.PathLike,
    *,
    family: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Write `model` (all layers) as an HF directory (config.json + safetensors).

    `family` defaults to the one the model was loaded from (`config.hf_family`).
    Existing weight files in `path` are replaced.
    """
    fam = _family_of(model, family)
    config = model.config
    if model.layer_indices != range(config.n_total_layers):
        raise ModelError(
            f"save_hf_checkpoint needs the whole model; this one holds layers {model.layer_indices} "
            f"of [0, {config.n_total_layers})"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("model*.safetensors")) + list(out.glob("pytorch_model*.bin")):
        old.unlink()
    for old in (SAFE_INDEX, BIN_INDEX):
        (out / old).unlink(missing_ok=True)
    _hf_config_for(model, fam).save_pretrained(str(out))

    # Group whole layers into shards, then convert and write one shard at a time.
    itemsize = model.flat_params.element_size()
    groups: list[list[int]] = [[]]
    size = 0
    for index in model.layer_indices:
        layer_bytes = sum(p.numel() for p in model.layer(index).parameters()) * itemsize
        if groups[-1] and size + layer_bytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(index)
        size += layer_bytes
    state = {k: p for k, p in model.named_parameters()}
    weight_map: dict[str, str] = {}
    total = 0
    for n, group in enumerate(groups):
        file = SAFE_SINGLE if len(groups) == 1 else f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: t.cpu() for k, t in state_dict_to_hf(fam, config, group, state).items()}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / SAFE_INDEX).write_text(json.dumps(index, indent=2))
