"""GPU tier: the CUDA paths (flash-attn varlen when installed, else per-sequence SDPA).

Skipped without CUDA (tests/conftest.py skips the `gpu` marker).
"""
from __future__ import annotations

import pytest
import torch
from model_testlib import hf_packed_logits, packed_batch

from realflow.model import attention, load_hf_checkpoint
from realflow.model.generate import GenerationConfig, generate

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_forward_matches_hf(hf_checkpoint, dtype):
    _, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path, dtype=dtype, device="cuda")
    ids, cu = packed_batch([7, 1, 12, 3, 64])
    with torch.no_grad():
        ours = model(ids.cuda(), cu.cuda()).float().cpu()
        ref = hf_packed_logits(hf, ids, cu)
    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(ours, ref, atol=tol, rtol=0)


def test_flash_attn_is_used_for_half_dtypes_when_installed():
    q = torch.zeros(4, 2, 8, device="cuda", dtype=torch.bfloat16)
    assert attention._use_flash(q) == (attention.flash_attn_varlen_func is not None)


def test_cuda_greedy_generation_matches_cpu(hf_checkpoint):
    path = hf_checkpoint[2]
    ids, cu = packed_batch([5, 1, 9])
    g = GenerationConfig(max_new_tokens=16, greedy=True)
    cpu = generate(load_hf_checkpoint(path), ids, cu, g, eos_token_id=7)
    gpu = generate(load_hf_checkpoint(path, device="cuda"), ids.cuda(), cu.cuda(), g, eos_token_id=7)
    assert torch.equal(gpu.output_ids.cpu(), cpu.output_ids)
    torch.testing.assert_close(gpu.logprobs.cpu(), cpu.logprobs, atol=1e-4, rtol=0)
