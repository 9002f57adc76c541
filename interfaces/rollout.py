"""Rollouts: `group_size` responses per prompt, packed in the key contract's layout.

`GenerationArgs` is the part of an interface's arguments that says how to sample
(`generation`, a `GenerationConfig` or a dict of its fields, and `group_size`);
`generate_rollouts` calls the engine and lays the result out per prompt:

    packed_input_ids   token   prompt + response, group_size sequences per sample
    prompt_mask        token   True on the prompt tokens
    packed_logprobs    action  log-prob of each generated token under the sampled
                               distribution (temperature, top-k/top-p); 0 on prompt actions
    seq_no_eos_mask    sequence  True when the response was cut by max_new_tokens
    packed_logits_mask action  (only when top-k/top-p is active) True = removed token;
                               all False on prompt actions

With `greedy_baseline=True` each sample gets one more sequence at the end: the
greedy response (ReMax's baseline). The prompt's metadata rides along.

Not here: tokenisation, stop strings, rewards.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from realflow.api.data import SequenceSample
from realflow.api.errors import ConfigError, InterfaceError
from realflow.api.generation import GenerationConfig, GenerationResult
from realflow.api.interface import Model
from realflow.interfaces.common import build_sample, require_keys
from realflow.interfaces.functional import seqlens_to_cu_seqlens

PROMPTS = "packed_prompts"


@dataclass
class GenerationArgs:
    """How a policy interface samples: the generation config and responses per prompt."""

    generation: GenerationConfig = field(default_factory=GenerationConfig)
    group_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.generation, Mapping):
            fields = {f.name for f in dataclasses.fields(GenerationConfig)}
            unknown = sorted(set(self.generation) - fields)
            if unknown:
                raise ConfigError(f"generation: unknown field(s) {unknown}; GenerationConfig has {sorted(fields)}")
            self.generation = GenerationConfig(**self.generation)
        if not isinstance(self.generation, GenerationConfig):
            raise ConfigError("generation must be a GenerationConfig or a mapping of its fields, "
                              f"got {type(self.generation).__name__}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ConfigError(f"group_size must be an int >= 1, got {self.group_size!r}")
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()

    @property
    def train_temperature(self) -> float:
        """The temperature log-probs are recomputed with, to match the sampled distribution."""
        return 1.0 if self.generation.greedy else self.generation.temperature


def _run(model: Model, prompts: list[torch.Tensor], gconfig: GenerationConfig) -> GenerationResult:
    tok = model.tokenizer
    ids = torch.cat(prompts)
    cu = seqlens_to_cu_seqlens([p.numel() for p in prompts]).to(torch.int32)
    res = model.engine.generate(ids, cu, gconfig, tok.eos_token_id, tok.pad_token_id)
    # The batch lives on the CPU data plane whatever device generated it.
    mask = None if res.logits_mask is None else res.logits_mask.cpu()
    return GenerationResult(res.output_ids.cpu(), res.output_cu_seqlens.cpu(), res.logprobs.cpu(),
                            res.no_eos.cpu(), mask)


def generate_rollouts(
    model: Model, data: SequenceSample, gen: GenerationArgs, who: str, greedy_baseline: bool = False
) -> SequenceSample:
    """Sample `gen.group_size` responses per prompt of `data[packed_prompts]` (see the module docstring)."""
    require_keys(data, [PROMPTS], who)
    per_sample = [len(s) for s in data.seqlens[PROMPTS]]
    if any(n != 1 for n in per_sample):
        raise InterfaceError(f"{who}: '{PROMPTS}' must hold one prompt per sample, got {per_sample[:8]} sequences")
    k = gen.group_size
    prompts = list(data.data[PROMPTS].split(data.flat_seqlens(PROMPTS)))
    gconfig = dataclasses.replace(gen.generation, return_logits_mask=gen.generation.filters)
    sampled = _run(model, [p for p in prompts for _ in range(k)], gconfig)
    greedy = None
    if greedy_baseline:
        greedy = _run(model, prompts, dataclasses.replace(gen.generation, greedy=True, return_logits_mask=False))
    vocab = sampled.logits_mask.shape[1] if sampled.logits_mask is not None else 0

    ids, pmask, logp, no_eos, lmask, lens = [], [], [], [], [], []
    for i, prompt in enumerate(prompts):
        rows = [(sampled, i * k + j) for j in range(k)] + ([(greedy, i)] if greedy is not None else [])
        lens.append([])
        for res, r in rows:
            a, b = int(res.output_cu_seqlens[r]), int(res.output_cu_seqlens[r + 1])
            p = prompt.numel()
            ids.append(torch.cat([prompt, res.output_ids[a:b].to(prompt.dtype)]))
            pmask.append(torch.arange(p + b - a) < p)
            logp.append(torch.cat([torch.zeros(p - 1), res.logprobs[a:b].float()]))
            no_eos.append(bool(res.no_eos[r]))
            if vocab:
                none = torch.zeros(b - a, vocab, dtype=torch.bool)  # greedy rows: nothing removed
                gen_mask = res.logits_mask[a:b].bool() if res.logits_mask is not None else none
                lmask.append(torch.cat([torch.zeros(p - 1, vocab, dtype=torch.bool), gen_mask]))
            lens[-1].append(p + b - a)
    action = [[n - 1 for n in s] for s in lens]
    tensors: dict[str, Any] = {
        "packed_input_ids": (torch.cat(ids).long(), lens),
        "prompt_mask": (torch.cat(pmask), lens),
        "packed_logprobs": (torch.cat(logp), action),
        "seq_no_eos_mask": (torch.tensor(no_eos, dtype=torch.bool), [[1] * len(s) for s in lens]),
    }
    if vocab:
        tensors["packed_logits_mask"] = (torch.cat(lmask), action)
    return build_sample(data.ids, tensors, metadata=data.metadata)
