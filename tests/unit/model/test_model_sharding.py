"""The fused-weight helper: split/join, shard/unshard with whole heads."""
from __future__ import annotations

import pytest
import torch

from realflow.api.errors import ModelError
from realflow.model import ReaLModelConfig, join_fused, shard_fused, split_fused, tp_shard_spec, unshard_fused
from realflow.model.sharding import shard_shape


def _qkv(n_q: int, n_kv: int, head_dim: int, cols: int = 3) -> tuple[torch.Tensor, tuple[int, int, int]]:
    sections = (n_q * head_dim, n_kv * head_dim, n_kv * head_dim)
    return torch.arange(sum(sections) * cols, dtype=torch.float32).view(sum(sections), cols), sections


def test_split_and_join_are_inverse():
    w, sections = _qkv(4, 2, 2)
    q, k, v = split_fused(w, sections)
    assert (q.shape[0], k.shape[0], v.shape[0]) == sections
    assert torch.equal(join_fused([q, k, v]), w)


def test_shard_takes_whole_heads_of_each_section():
    w, sections = _qkv(n_q=4, n_kv=2, head_dim=2)  # q rows 0..7, k 8..11, v 12..15
    rank1 = shard_fused(w, sections, rank=1, world_size=2, unit=2)
    expected_rows = [4, 5, 6, 7, 10, 11, 14, 15]  # q heads 2,3; k head 1; v head 1
    assert torch.equal(rank1, w[expected_rows])


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("dim", [0, 1])
def test_unshard_inverts_shard(world_size, dim):
    w, sections = _qkv(4, 2, 2)
    w = w if dim == 0 else w.t().contiguous()
    shards = [shard_fused(w, sections, r, world_size, dim=dim) for r in range(world_size)]
    assert torch.equal(unshard_fused(shards, sections, dim=dim), w)


def test_indivisible_sections_name_the_numbers():
    w, sections = _qkv(n_q=4, n_kv=1, head_dim=2)
    with pytest.raises(ModelError, match=r"section 1 of size 2 \(= 1 units of 2\) cannot be split evenly across 2"):
        shard_fused(w, sections, 0, 2, unit=2)
    with pytest.raises(ModelError, match="sections .* sum to"):
        split_fused(w, (1, 2))
    with pytest.raises(ModelError, match=r"rank 2 is outside \[0, 2\)"):
        shard_fused(w, sections, 2, 2)


def test_tp_specs_and_shard_shapes():
    cfg = ReaLModelConfig(n_layers=1, hidden_dim=16, n_q_heads=4, n_kv_heads=2, head_dim=4, intermediate_dim=32,
                          vocab_size=64)
    qkv = tp_shard_spec(cfg, "1.attn.qkv.weight")
    assert qkv.dim == 0 and qkv.sections == (16, 8, 8) and qkv.unit == 4
    assert shard_shape((32, 16), qkv, 2) == (16, 16)
    assert tp_shard_spec(cfg, "1.attn.o.weight").dim == 1
    assert tp_shard_spec(cfg, "1.mlp.down.weight").dim == 1
    assert tp_shard_spec(cfg, "1.attn.ln.weight").dim is None
    assert tp_shard_spec(cfg, "2.head.weight").dim == 0
