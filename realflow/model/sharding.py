"""The one place that knows how fused weights are laid out and sharded.

A fused weight stacks several logical tensors (sections) along one dimension:
qkv = [q; k; v] and gate_up = [gate; up] along the output dimension. Sharding it
for tensor parallelism means: split into sections, shard each section into
`world_size` equal pieces (whole heads for attention), take piece `rank` of every
section, join. HF converters use `split_fused`/`join_fused`; the tensor-parallel
loader, the flat-buffer interval map and reallocation use `shard_fused` /
`shard_slices` / `unshard_fused` (CONVENTIONS.md item 5).

`tp_shard_spec` is the tensor-parallel contract of every ReaLModel parameter key:
which dimension it is split along (None: replicated) and its sections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from realflow.api.errors import ModelError
from realflow.model.config import ReaLModelConfig


@dataclass(frozen=True)
class ShardSpec:
    """How one parameter is split across tensor-parallel ranks.

    `dim`: dimension split (0: column-parallel / vocab-parallel, 1: row-parallel),
    None when every rank holds the whole tensor. `sections`: sizes of the fused parts
    along `dim` (one entry for an unfused weight). `unit`: pieces must be whole
    multiples of it (head_dim for attention: shards hold whole heads).
    """

    dim: int | None
    sections: tuple[int, ...] = ()
    unit: int = 1


REPLICATED = ShardSpec(dim=None)


def split_fused(tensor: torch.Tensor, sections: Sequence[int], dim: int = 0) -> list[torch.Tensor]:
    """Views of the sections of a fused tensor along `dim`."""
    if sum(sections) != tensor.shape[dim]:
        raise ModelError(
            f"fused tensor of shape {tuple(tensor.shape)} has {tensor.shape[dim]} entries along dim {dim}, "
            f"sections {tuple(sections)} sum to {sum(sections)}"
        )
    return list(torch.split(tensor, list(sections), dim=dim))


def join_fused(parts: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """Concatenate sections into one fused tensor (the inverse of split_fused)."""
    return torch.cat(list(parts), dim=dim)


def shard_slices(sections: Sequence[int], rank: int, world_size: int, unit: int = 1) -> list[tuple[int, int]]:
    """[start, end) ranges along the split dim that make up shard `rank`, in order."""
    if not 0 <= rank < world_size:
        raise ModelError(f"tensor-parallel rank {rank} is outside [0, {world_size})")
    ranges = []
    offset = 0
    for i, size in enumerate(sections):
        if size % (unit * world_size) != 0:
            raise ModelError(
                f"section {i} of size {size} (= {size / unit:g} units of {unit}) cannot be split "
                f"evenly across {world_size} tensor-parallel ranks"
            )
        piece = size // world_size
        ranges.append((offset + rank * piece, offset + (rank + 1) * piece))
        offset += size
    return ranges


def shard_fused(
    tensor: torch.Tensor, sections: Sequence[int], rank: int, world_size: int, dim: int = 0, unit: int = 1
) -> torch.Tensor:
    """Shard `rank` of a fused tensor: every section split into `world_size` pieces."""
    if sum(sections) != tensor.shape[dim]:
        raise ModelError(
            f"tensor of shape {tuple(tensor.shape)} has {tensor.shape[dim]} entries along dim {dim}, "
            f"sections {tuple(sections)} sum to {sum(sections)}"
        )
    pieces = [tensor.narrow(dim, s, e - s) for s, e in shard_slices(sections, rank, world_size, unit)]
    return pieces[0] if len(pieces) == 1 else join_fused(pieces, dim)


def unshard_fused(shards: Sequence[torch.Tensor], sections: Sequence[int], dim: int = 0) -> torch.Tensor:
    """Rebuild the full fused tensor from all ranks' shards (inverse of shard_fused)."""
    world_size = len(shards)
    local = [s // world_size for s in sections]
    per_rank = [split_fused(shard, local, dim) for shard in shards]
    return join_fused([per_rank[r][i] for i in range(len(sections)) for r in range(world_size)], dim)


def tp_shard_spec(config: ReaLModelConfig, key: str) -> ShardSpec:
    """Tensor-parallel split of the parameter `key` (e.g. '3.attn.qkv.weight')."""
    _, _, name = key.partition(".")
    hd = config.head_dim
    specs = {
        "wte.weight": ShardSpec(0, (config.vocab_size,)),
        "attn.qkv.weight": ShardSpec(0, config.qkv_sections, hd),
        "attn.qkv.bias": ShardSpec(0, config.qkv_sections, hd),
        "attn.o.weight": ShardSpec(1, (config.q_dim,), hd),
        "mlp.gate_up.weight": ShardSpec(0, (config.intermediate_dim,) * 2),
        "mlp.gate_up.bias": ShardSpec(0, (config.intermediate_dim,) * 2),
        "mlp.up.weight": ShardSpec(0, (config.intermediate_dim,)),
        "mlp.up.bias": ShardSpec(0, (config.intermediate_dim,)),
        "mlp.down.weight": ShardSpec(1, (config.intermediate_dim,)),
        "head.weight": REPLICATED if config.is_critic else ShardSpec(0, (config.vocab_size,)),
    }
    return specs.get(name, REPLICATED)


def shard_shape(shape: Sequence[int], spec: ShardSpec, world_size: int) -> tuple[int, ...]:
    """Shape of one rank's shard of a tensor of `shape`."""
    out = list(shape)
    if spec.dim is not None:
        shard_slices(spec.sections, 0, world_size, spec.unit)  # validates divisibility
        out[spec.dim] //= world_size
    return tuple(out)
