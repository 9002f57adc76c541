"""Batched generation with a KV cache: packed prefill, then one decode step per token.

1. Prefill: one packed forward over all prompts (no padding) that stores keys and
   values in a preallocated `KVCache` and computes the head only at each prompt's
   last token.
2. Decode: every step feeds one token per sequence, appends to the cache and
   attends over it; the prefix is never recomputed. A sequence stops at its first
   EOS (the EOS is part of its output); once a quarter of the decode batch has
   stopped, those rows are dropped from the batch and the cache, so long tails run
   on small batches. The loop ends when all have stopped or after `max_new_tokens`.

Outputs are packed like the inputs: generated tokens only, with their own
cu_seqlens, the log-probability of every generated token under the distribution
sampled from (see sampling.py), a per-sequence no-EOS (truncated) flag and,
on request, the mask of tokens top-k/top-p removed at every step.

Not here: tokenisation, stop strings, beam search.
"""
from __future__ import annotations

from typing import Sequence

import torch

from realflow.api.errors import DataError, ModelError
from realflow.api.generation import GenerationConfig, GenerationResult
from realflow.model.kv_cache import KVCache
from realflow.model.real_model import ReaLModel
from realflow.model.sampling import sample

__all__ = ["GenerationConfig", "GenerationResult", "generate"]


def _eos_tensor(eos_token_id: int | Sequence[int] | None, device: torch.device) -> torch.Tensor:
    if eos_token_id is None:
        ids: list[int] = []
    elif isinstance(eos_token_id, int):
        ids = [eos_token_id]
    else:
        ids = [int(i) for i in eos_token_id]
    return torch.tensor(ids, dtype=torch.long, device=device)


def _check_inputs(model: ReaLModel, prompt_ids: torch.Tensor, prompt_lens: torch.Tensor, max_new: int) -> None:
    config = model.config
    if model.layer_indices != range(config.n_total_layers) or config.is_critic:
        raise ModelError(
            f"generate needs a whole actor model; got layers {model.layer_indices} of "
            f"[0, {config.n_total_layers}), is_critic={config.is_critic}"
        )
    if prompt_ids.dim() != 1 or prompt_lens.numel() == 0:
        raise DataError(f"prompts must be packed 1-D ids with >= 1 sequence, got shape {tuple(prompt_ids.shape)}")
    if int(prompt_lens.min()) < 1:
        raise DataError(f"every prompt needs >= 1 token; prompt lengths {prompt_lens.tolist()}")
    if int(prompt_lens.sum()) != prompt_ids.numel():
        raise DataError(
            f"prompt cu_seqlens cover {int(prompt_lens.sum())} tokens, prompt ids have {prompt_ids.numel()}"
        )
    longest = int(prompt_lens.max()) + max_new
    if config.abs_position_embedding and longest > config.n_positions:
        raise DataError(
            f"longest prompt + max_new_tokens = {longest} exceeds the model's {config.n_positions} positions"
        )


@torch.no_grad()
def generate(
    model: ReaLModel,
    prompt_ids: torch.Tensor,
    prompt_cu_seqlens: torch.Tensor,
    gconfig: GenerationConfig,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Generate continuations of packed prompts (see the module docstring).

    prompt_ids: (total_prompt_tokens,) int64; prompt_cu_seqlens: (n + 1,) int32.
    `pad_token_id` is fed to sequences that already stopped (never returned).
    """
    device = model.device
    prompt_ids = prompt_ids.to(device)
    cu = prompt_cu_seqlens.to(device=device, dtype=torch.long)
    lens = cu[1:] - cu[:-1]  # (B,)
    max_new = gconfig.max_new_tokens
    _check_inputs(model, prompt_ids, lens, max_new)
    batch = lens.numel()
    eos = _eos_tensor(eos_token_id, device)
    vocab = model.config.vocab_size
    if eos.numel() and not bool(((eos >= 0) & (eos < vocab)).all()):
        raise DataError(f"eos_token_id {eos.tolist()} is outside the vocabulary [0, {vocab})")
    pad = 0 if pad_token_id is None else pad_token_id

    cache = KVCache(model.config, lens, max_new, model.dtype, device)
    logits = model(prompt_ids, cu.to(torch.int32), cache=cache, head_rows=cu[1:] - 1).float()  # (B, V)
    cache.column = cache.prompt_width
    positions = lens.clone()  # position of the token fed next

    tokens_out = torch.full((batch, max_new), pad, dtype=torch.long, device=device)
    logprobs_out = torch.zeros((batch, max_new), dtype=torch.float32, device=device)
    gen_lens = torch.zeros(batch, dtype=torch.long, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)  # saw EOS, per original row
    want_masks = gconfig.return_logits_mask and gconfig.filters
    masks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, removed) per step
    # The decode batch shrinks as sequences stop: `rows` maps live rows to original
    # ones, `done` marks live rows that stopped since the last compaction.
    rows = torch.arange(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    steps = 0
    for step in range(max_new):
        if step < gconfig.min_new_tokens and eos.numel():
            logits[:, eos] = float("-inf")
        tokens, logprobs, removed = sample(logits, gconfig, generator)
        tokens = tokens.masked_fill(done, pad)
        tokens_out[rows, step] = tokens
        logprobs_out[rows, step] = logprobs.masked_fill(done, 0.0)
        if want_masks:
            masks.append((rows, removed))
        gen_lens[rows] += (~done).long()
        if eos.numel():
            done |= torch.isin(tokens, eos)
        steps = step + 1
        n_done = int(done.sum())
        if steps == max_new or n_done == rows.numel():
            break
        if 4 * n_done >= rows.numel():  # drop stopped rows once they are a quarter of the batch
            stopped[rows[done]] = True
            alive = (~done).nonzero().squeeze(1)
            rows, tokens, positions = rows[alive], tokens[alive], positions[alive]
            cache.keep_rows(alive)
            done = torch.zeros(rows.numel(), dtype=torch.bool, device=device)
        logits = model.decode_step(tokens, positions, cache).float()
        positions += 1
        cache.column += 1
    stopped[rows[done]] = True

    keep = torch.arange(max_new, device=device)[None, :] < gen_lens[:, None]  # (B, max_new)
    out_cu = torch.zeros(batch + 1, dtype=torch.int32, device=device)
    out_cu[1:] = torch.cumsum(gen_lens, 0)
    logits_mask = None
    if want_masks:
        full = torch.zeros((batch, steps, model.config.vocab_size), dtype=torch.bool, device=device)
        for step, (step_rows, removed) in enumerate(masks):
            full[step_rows, step] = removed
        logits_mask = full[keep[:, :steps]]
    return GenerationResult(
        output_ids=tokens_out[keep],
        output_cu_seqlens=out_cu,
        logprobs=logprobs_out[keep],
        no_eos=~stopped,
        logits_mask=logits_mask,
    )
