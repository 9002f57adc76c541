"""GPU tier: ReaLModel's CUDA paths (flash-attn varlen when installed and the dtype
is half, else per-sequence SDPA) against Hugging Face and against the CPU path.

Skipped without CUDA (tests/conftest.py skips the `gpu` marker).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from model_testlib import hf_packed_logits, packed_batch

from realflow.model import attention, load_hf_checkpoint
from realflow.model.generate import GenerationConfig, generate

pytestmark = pytest.mark.gpu


def test_cuda_forward_matches_hf_float32(hf_checkpoint):
    _, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path, device="cuda")
    ids, cu = packed_batch([7, 1, 12, 3, 64])
    with torch.no_grad():
        ours = model(ids.cuda(), cu.cuda()).cpu()
        ref = hf_packed_logits(hf, ids, cu)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_cuda_bfloat16_is_as_accurate_as_hf_bfloat16(hf_checkpoint):
    """In bf16 (flash-attn when installed) our logits stray from the float32 reference
    no more than HF's own bf16 model on the same device does (on CPU both stray by
    ~4% of the largest logit, within 10% of each other)."""
    _, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path, dtype=torch.bfloat16, device="cuda")
    ids, cu = packed_batch([7, 1, 12, 3, 64])
    with torch.no_grad():
        ref = hf_packed_logits(hf, ids, cu)
        ours = model(ids.cuda(), cu.cuda()).float().cpu()
        hf_bf16 = hf_packed_logits(copy.deepcopy(hf).to("cuda", torch.bfloat16), ids.cuda(), cu.cuda()).float().cpu()
    ours_err, hf_err = (ours - ref).abs(), (hf_bf16 - ref).abs()
    assert ours_err.max() <= 1.5 * hf_err.max() + 1e-3, (ours_err.max(), hf_err.max())
    assert ours_err.mean() <= 1.5 * hf_err.mean() + 1e-4, (ours_err.mean(), hf_err.mean())


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backward_matches_cpu(hf_checkpoint, dtype):
    """Gradients of a packed batch on CUDA (flash-attn in bf16 when installed) equal
    the CPU float32 gradients, parameter by parameter, in the flat gradient buffer."""
    path = hf_checkpoint[2]
    ids, cu = packed_batch([7, 1, 12, 3, 64])
    labels = ids.roll(-1)
    labels[(cu[1:] - 1).long()] = -100
    grads = {}
    for device, dt in (("cpu", torch.float32), ("cuda", dtype)):
        model = load_hf_checkpoint(path, dtype=dt, device=device)
        model.enable_flat_grads()
        logits = model(ids.to(device), cu.to(device)).float()
        F.cross_entropy(logits, labels.to(device)).backward()
        grads[device] = model.flat_grads.float().cpu()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    scale = grads["cpu"].abs().max()
    torch.testing.assert_close(grads["cuda"] / scale, grads["cpu"] / scale, atol=tol, rtol=0)
