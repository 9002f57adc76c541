"""Tiny random HF models and packed batches shared by the model tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

FAMILIES = ("llama", "qwen2", "gpt2")
VOCAB = 96


def tiny_hf_config(family: str, **overrides) -> transformers.PretrainedConfig:
    """A few-thousand-parameter config; GQA for the rotary families."""
    if family == "gpt2":
        kw = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2,
                  bos_token_id=1, eos_token_id=2)
        kw.update(overrides)
        return transformers.GPT2Config(**kw)
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, bos_token_id=1,
              eos_token_id=2)
    kw.update(overrides)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[family]
    return cls(**kw)


def make_hf_model(config: transformers.PretrainedConfig, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    # Norm weights start at 1 and biases at 0 in HF; perturb every 1-D tensor so the tests see them.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_hf(model: transformers.PreTrainedModel, path: Path) -> Path:
    model.save_pretrained(str(path))
    return path


def packed_batch(lengths: list[int], vocab: int = VOCAB, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (sum(lengths),), generator=g)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return ids, cu


def hf_packed_logits(model: transformers.PreTrainedModel, ids: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """HF logits of each sequence run alone (no padding), concatenated: (T, vocab)."""
    bounds = cu.tolist()
    return torch.cat([model(ids[s:e][None]).logits[0] for s, e in zip(bounds[:-1], bounds[1:])])


# Fixtures shared by the CPU model tests and the GPU tier (each conftest imports them).
@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def hf_checkpoint(family, tmp_path):
    """(family, HF model, directory written by save_pretrained)."""
    model = make_hf_model(tiny_hf_config(family))
    return family, model, save_hf(model, tmp_path / f"hf_{family}")
