"""Batched generation with a KV cache: packed prefill, then one decode step per token.

1. Prefill: one packed forward over all prompts (no padding) that stores keys and
   values in a preallocated `KVCache` and computes the head only at each prompt's
   last token.
2. Decode: every step feeds one token per sequence through a `Decoder` (decoder.py:
   the model's weights prepared once per call for small-batch GEMMs), appends to the
   cache and attends over it; the prefix is never recomputed. A sequence stops at
   its first EOS (the EOS is part of its output). Every few steps the host reads
   which rows have stopped (a device sync, hence not every step): once a quarter of
   the decode batch has, those rows are dropped from the batch and the cache, so
   long tails run on small batches; the loop ends when all have stopped or after
   `max_new_tokens`. Stopped rows still in the batch are fed padding and their
   outputs discarded.

The decode loop is built to issue few small ops per step (on CPU each costs
micro-seconds, as much as the arithmetic of a small model): rotary angles come from
a table, the per-step outputs are collected in lists and written once per segment,
EOS checks start at `min_new_tokens`, and everything runs under `inference_mode`
(the results are cloned out of it, so trainers can use them in autograd).

Outputs are packed like the inputs: generated tokens only, with their own
cu_seqlens, the log-probability of every generated token under the distribution
sampled from (see sampling.py), a per-sequence no-EOS (truncated) flag and,
on request, the mask of tokens top-k/top-p removed at every step.

Not here: tokenisation, stop strings, beam search.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from realflow.api.errors import DataError, ModelError
from realflow.api.generation import GenerationConfig, GenerationResult
from realflow.model.decoder import Decoder
from realflow.model.kv_cache import KVCache
from realflow.model.real_model import ReaLModel
from realflow.model.sampling import sample

__all__ = ["GenerationConfig", "GenerationResult", "generate"]

_CHECK_EVERY = 4  # decode steps between host reads of which rows have stopped


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
    _check_inputs(model, prompt_ids, lens, gconfig.max_new_tokens)
    eos = _eos_tensor(eos_token_id, device)
    vocab = model.config.vocab_size
    if eos.numel() and not bool(((eos >= 0) & (eos < vocab)).all()):
        raise DataError(f"eos_token_id {eos.tolist()} is outside the vocabulary [0, {vocab})")
    pad = 0 if pad_token_id is None else pad_token_id
    # inference_mode drops autograd bookkeeping from every op of the loop; its tensors
    # cannot enter autograd later (a trainer uses logprobs in a loss), so the results
    # are cloned outside it.
    with torch.inference_mode():
        result = _generate(model, prompt_ids, cu, lens, gconfig, eos, pad, generator)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return GenerationResult(**{name: None if t is None else t.clone() for name, t in fields.items()})


def _generate(
    model: ReaLModel,
    prompt_ids: torch.Tensor,
    cu: torch.Tensor,
    lens: torch.Tensor,
    gconfig: GenerationConfig,
    eos: torch.Tensor,
    pad: int,
    generator: torch.Generator | None,
) -> GenerationResult:
    device = model.device
    batch, max_new = lens.numel(), gconfig.max_new_tokens
    cache = KVCache(model.config, lens, max_new, model.dtype, device)
    logits = model(prompt_ids, cu.to(torch.int32), cache=cache, head_rows=cu[1:] - 1).float()  # (B, V)
    cache.column = cache.prompt_width
    # Weights prepared for the decode GEMMs, once per call (not when no step follows).
    decoder = Decoder(model, batch) if max_new > 1 else None
    positions = lens.clone()  # position of the token fed next

    # Per step the loop only appends to lists; outputs are assembled per segment
    # (the steps between two compactions of the batch) into (B, max_new) buffers.
    tokens_out = torch.full((batch, max_new), pad, dtype=torch.long, device=device)
    logprobs_out = torch.zeros((batch, max_new), dtype=torch.float32, device=device)
    want_masks = gconfig.return_logits_mask and gconfig.filters
    masks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, removed) per step
    seg_tokens: list[torch.Tensor] = []
    seg_logprobs: list[torch.Tensor] = []
    seg_start = 0
    # The decode batch shrinks as sequences stop: `rows` maps live rows to original
    # ones, `done` marks live rows that stopped since the last compaction.
    rows = torch.arange(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    can_stop = eos.numel() > 0

    def flush(rows: torch.Tensor, start: int, end: int) -> None:
        """Write the steps [start, end) of the live `rows` into the outputs."""
        if seg_tokens:
            tokens_out[rows, start:end] = torch.stack(seg_tokens, dim=1)
            logprobs_out[rows, start:end] = torch.stack(seg_logprobs, dim=1)
            seg_tokens.clear()
            seg_logprobs.clear()

    steps = 0
    for step in range(max_new):
        # Before min_new_tokens the EOS logits are -inf, so no row can stop.
        banned = can_stop and step < gconfig.min_new_tokens
        if banned:
            logits.index_fill_(1, eos, float("-inf"))
        tokens, logprobs, removed = sample(logits, gconfig, generator)
        stopping = can_stop and not banned
        if stopping:
            tokens.masked_fill_(done, pad)  # rows that stopped emit padding (dropped below)
            logprobs.masked_fill_(done, 0.0)
            done |= torch.isin(tokens, eos)
        seg_tokens.append(tokens)
        seg_logprobs.append(logprobs)
        if want_masks:
            masks.append((rows, removed))
        steps = step + 1
        if steps == max_new:
            break
        # Reading `done` on the host is a device sync: do it every few steps only;
        # stopped rows idle in the batch until then.
        if stopping and steps % _CHECK_EVERY == 0:
            n_done = int(done.sum())
            if n_done == rows.numel():
                break
            if 4 * n_done >= rows.numel():  # drop stopped rows once they are a quarter of the batch
                flush(rows, seg_start, steps)
                seg_start = steps
                alive = (~done).nonzero().squeeze(1)
                rows, tokens, positions = rows[alive], tokens[alive], positions[alive]
                cache.keep_rows(alive)
                done = torch.zeros(rows.numel(), dtype=torch.bool, device=device)
        logits = decoder(tokens, positions, cache).float()
        positions += 1
        cache.column += 1
    flush(rows, seg_start, steps)

    # A sequence's output ends at its first EOS (inclusive); stopped rows emitted
    # padding after it, which may itself be an EOS id: only the first one counts.
    is_eos = torch.isin(tokens_out[:, :steps], eos)  # (B, steps)
    stopped = is_eos.any(dim=1)
    first_eos = is_eos.to(torch.uint8).argmax(dim=1)  # the first maximal index
    gen_lens = torch.where(stopped, first_eos + 1, steps)
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
