"""One contiguous 1-D buffer behind all parameters (and one behind all gradients).

`FlatLayout` records, in the documented key order, where each parameter lives in
the buffer. `bind_parameters` turns a module's parameters into views of a buffer;
`param_intervals` maps (keys, tensor-parallel slice) to [start, end) element
intervals of the *unsharded* layout, so that reallocation and gradient all-reduce
are a few large copies instead of one per tensor.

Not here: moving data between processes (realflow.parallel) or deciding who sends
what (realloc plans). This module only answers "which elements".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from realflow.api.errors import ModelError
from realflow.model.config import ReaLModelConfig
from realflow.model.sharding import shard_slices, tp_shard_spec


@dataclass(frozen=True)
class FlatLayout:
    """Keys, shapes and offsets of parameters packed back to back in one buffer."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int

    @classmethod
    def from_shapes(cls, named_shapes: Iterable[tuple[str, Sequence[int]]]) -> "FlatLayout":
        keys, shapes, offsets = [], [], []
        offset = 0
        for key, shape in named_shapes:
            keys.append(key)
            shapes.append(tuple(int(s) for s in shape))
            offsets.append(offset)
            offset += math.prod(shape)
        if len(set(keys)) != len(keys):
            raise ModelError(f"duplicate parameter keys in layout: {sorted(k for k in keys if keys.count(k) > 1)}")
        return cls(tuple(keys), tuple(shapes), tuple(offsets), offset)

    @classmethod
    def from_module(cls, module: nn.Module) -> "FlatLayout":
        return cls.from_shapes((k, p.shape) for k, p in module.named_parameters())

    def _index(self, key: str) -> int:
        try:
            return self._positions[key]
        except KeyError:
            raise ModelError(
                f"parameter '{key}' is not in this layout ({len(self.keys)} keys, "
                f"from '{self.keys[0]}' to '{self.keys[-1]}')"
            ) from None

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def shape(self, key: str) -> tuple[int, ...]:
        return self.shapes[self._index(key)]

    def interval(self, key: str) -> tuple[int, int]:
        """[start, end) of the whole parameter `key` in the buffer."""
        i = self._index(key)
        return self.offsets[i], self.offsets[i] + math.prod(self.shapes[i])

    def view(self, buffer: torch.Tensor, key: str) -> torch.Tensor:
        start, end = self.interval(key)
        return buffer[start:end].view(self.shape(key))


def bind_parameters(module: nn.Module, buffer: torch.Tensor, layout: FlatLayout, replace: bool) -> None:
    """Make every parameter of `module` a view of `buffer` as laid out by `layout`.

    replace=True creates new Parameter objects (used once, when materialising a
    module built on the meta device); replace=False re-points the existing ones
    (`.data = view`) so optimizers keep their references.
    """
    assert buffer.dim() == 1 and buffer.numel() == layout.numel, (buffer.shape, layout.numel)
    for key, param in list(module.named_parameters()):
        view = layout.view(buffer, key)
        if replace:
            owner_name, _, attr = key.rpartition(".")
            owner = module.get_submodule(owner_name)
            owner._parameters[attr] = nn.Parameter(view, requires_grad=param.requires_grad)
        else:
            param.data = view


def bind_gradients(module: nn.Module, grad_buffer: torch.Tensor, layout: FlatLayout) -> None:
    """Make every parameter's `.grad` a view of `grad_buffer`.

    Autograd accumulates into an existing `.grad` in place, so backward writes
    straight into the buffer.
    """
    for key, param in module.named_parameters():
        param.grad = layout.view(grad_buffer, key)


def _merge(intervals: np.ndarray) -> np.ndarray:
    """Merge touching consecutive intervals; keeps order."""
    if len(intervals) <= 1:
        return intervals
    starts, ends = intervals[:, 0], intervals[:, 1]
    breaks = np.nonzero(starts[1:] != ends[:-1])[0] + 1
    first = np.concatenate(([0], breaks))
    last = np.concatenate((breaks - 1, [len(intervals) - 1]))
    return np.stack([starts[first], ends[last]], axis=1)


def param_intervals(
    layout: FlatLayout,
    config: ReaLModelConfig,
    keys: Iterable[str],
    tp_rank: int = 0,
    tp_size: int = 1,
) -> np.ndarray:
    """Element intervals of the tensor-parallel shard `tp_rank` of `keys`.

    Returns an (n, 2) int64 array of [start, end) offsets into a buffer laid out by
    `layout` (the unsharded model or stage). Concatenating buffer[start:end] over the
    rows, in order, gives the flattened shards of `keys` one after another in the
    order given. With tp_size=1 each key maps to exactly its own interval.
    """
    out: list[np.ndarray] = []
    for key in keys:
        start, end = layout.interval(key)
        shape = layout.shape(key)
        spec = tp_shard_spec(config, key) if tp_size > 1 else None
        if spec is None or spec.dim is None:
            out.append(np.array([[start, end]], dtype=np.int64))
            continue
        ranges = np.array(shard_slices(spec.sections, tp_rank, tp_size, spec.unit), dtype=np.int64)
        if spec.dim == 0:
            row = math.prod(shape[1:])
            out.append(start + ranges * row)
        else:
            assert spec.dim == 1 and len(shape) == 2, (key, shape, spec)
            rows = start + np.arange(shape[0], dtype=np.int64)[:, None, None] * shape[1]
            out.append((rows + ranges[None, :, :]).reshape(-1, 2))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return _merge(np.concatenate(out, axis=0))
