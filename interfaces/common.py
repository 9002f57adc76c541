"""Helpers shared by the built-in interfaces: key checks, packed layouts, output samples.

Every interface takes a `SequenceSample` in and gives one back (see the key
contract in docs/interfaces.md). The keys follow three layouts, all relative to
the sequences of `packed_input_ids`:

    token     one row per token, L per sequence            (prompt_mask, values)
    action    one row per predicted token, L - 1 per seq.  (packed_logprobs, loss masks)
    sequence  one row per sequence                          (rewards, seq_no_eos_mask)

This module builds samples in those layouts, turns `prompt_mask` into the
action-aligned loss mask, computes log-probs from logits the way generation
sampled them, and loops PPO-style mini-batches over a train engine. The math
itself lives in `realflow.interfaces.functional`; nothing here owns a model.
"""
from __future__ import annotations

from typing import Callable, Hashable, Iterable

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import InterfaceError
from realflow.api.interface import Engine
from realflow.interfaces.functional import drop_last_token, gather_packed_logprobs

IDS = "packed_input_ids"
LAYOUTS = ("token", "action", "sequence")


def require_keys(data: SequenceSample, keys: Iterable[str], who: str) -> None:
    """Raise InterfaceError naming the keys `who` needs that `data` lacks."""
    keys = list(keys)
    missing = sorted(set(keys) - data.keys)
    if missing:
        raise InterfaceError(f"{who}: input lacks key(s) {missing}; it has {sorted(data.keys)}")
    if data.data is None or any(data.data[k] is None for k in keys):
        raise InterfaceError(f"{who}: input keys {sorted(keys)} must carry tensors, got metadata only")


def layout_seqlens(data: SequenceSample, layout: str, key: str = IDS) -> list[list[int]]:
    """Per sample, the lengths a `layout` tensor over the sequences of `key` has."""
    if layout == "token":
        return [list(s) for s in data.seqlens[key]]
    if layout == "action":
        return [[n - 1 for n in s] for s in data.seqlens[key]]
    if layout == "sequence":
        return [[1] * len(s) for s in data.seqlens[key]]
    raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")


def build_sample(
    ids: list[Hashable],
    tensors: dict[str, tuple[torch.Tensor, list[list[int]]]],
    metadata: dict[str, list] | None = None,
) -> SequenceSample:
    """A validated SequenceSample from {key: (packed tensor, per-sample seqlens)}."""
    return SequenceSample(
        keys=set(tensors),
        ids=list(ids),
        seqlens={k: [list(s) for s in lens] for k, (_, lens) in tensors.items()},
        trailing_shapes={k: tuple(t.shape[1:]) for k, (t, _) in tensors.items()},
        dtypes={k: t.dtype for k, (t, _) in tensors.items()},
        data={k: t for k, (t, _) in tensors.items()},
        metadata={} if metadata is None else {k: list(v) for k, v in metadata.items()},
    )


def output_like(data: SequenceSample, tensors: dict[str, tuple[torch.Tensor, str]], key: str = IDS) -> SequenceSample:
    """An output sample with `data`'s ids; each tensor in a layout over the sequences of `key`."""
    return build_sample(data.ids, {k: (t, layout_seqlens(data, layout, key)) for k, (t, layout) in tensors.items()})


def action_loss_mask(prompt_mask: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Token-aligned `prompt_mask` -> action-aligned mask, True where the predicted token is a response token.

    Action i of a sequence predicts token i + 1, so it counts when token i + 1 is not
    a prompt token. (total,) bool -> (total - n_seqs,) bool.
    """
    response = ~prompt_mask.bool()
    return drop_last_token(torch.roll(response, -1), cu_seqlens)  # the wrapped entries are dropped


def prompt_mask_from_lens(seqlens: list[list[int]], prompt_lens: list[int]) -> torch.Tensor:
    """Token-aligned prompt mask when every sequence of sample i starts with `prompt_lens[i]` prompt tokens."""
    parts = [torch.arange(n) < p for lens, p in zip(seqlens, prompt_lens) for n in lens]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def token_mask_from_actions(action_mask: torch.Tensor, cu_seqlens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Action-aligned rows (total - n, ...) -> token-aligned (total, ...), False on each last token."""
    out = action_mask.new_zeros((n_tokens, *action_mask.shape[1:]))
    keep = torch.ones(n_tokens, dtype=torch.bool, device=action_mask.device)
    keep[cu_seqlens[1:].long() - 1] = False
    out[keep] = action_mask
    return out


def action_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    temperature: float = 1.0,
    logits_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probs of each next token under the distribution generation sampled from.

    logits (total, V) token-aligned; `logits_mask` (total - n, V) action-aligned, True
    where top-k/top-p removed the token. Returns (total - n,) action-aligned float32.
    """
    logits = logits.float()
    if logits_mask is not None:
        logits = logits.masked_fill(token_mask_from_actions(logits_mask, cu_seqlens, logits.shape[0]), float("-inf"))
    return gather_packed_logprobs(logits, input_ids, cu_seqlens, temperature)


def action_entropy(
    logits: torch.Tensor, cu_seqlens: torch.Tensor, temperature: float = 1.0, logits_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Entropy of each action's (tempered, masked) distribution, (total - n,), without gradient."""
    with torch.no_grad():
        x = drop_last_token(logits.float(), cu_seqlens) / temperature
        if logits_mask is not None:
            x = x.masked_fill(logits_mask, float("-inf"))
        logp = x.log_softmax(-1)
        p = logp.exp()
        return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)


PostFn = Callable[[torch.Tensor, SequenceSample], torch.Tensor]


def logprobs_post_fn(temperature: float, mask_key: str | None) -> PostFn:
    """A `post_fn` for `Engine.forward(..., output_layout="action")` giving next-token log-probs."""

    def post(logits: torch.Tensor, mb: SequenceSample) -> torch.Tensor:
        mask = mb.data[mask_key] if mask_key is not None and mask_key in mb.keys else None
        return action_logprobs(logits, mb.data[IDS], mb.cu_seqlens(IDS), temperature, mask)

    return post


def fit_mb_spec(mb_spec: MicroBatchSpec, bs: int) -> MicroBatchSpec:
    """`mb_spec` with at most `bs` micro-batches (a PPO mini-batch may hold fewer samples)."""
    return MicroBatchSpec(min(mb_spec.n_mbs, bs), mb_spec.max_tokens_per_mb)


def minibatches(sample: SequenceSample, n: int, who: str) -> list[SequenceSample]:
    """`n` mini-batches of `sample` with balanced token counts."""
    if n > sample.bs:
        raise InterfaceError(f"{who}: ppo_n_minibatches={n} exceeds the {sample.bs} samples of the batch")
    if n == 1:
        return [sample]
    mbs, _, _ = sample.split_mbs(MicroBatchSpec(n_mbs=n), key=IDS)
    return mbs


def run_minibatches(
    engine: Engine,
    sample: SequenceSample,
    mb_spec: MicroBatchSpec,
    *,
    n_minibatches: int,
    n_epochs: int,
    loss_fn: Callable,
    weight_fn: Callable[[SequenceSample], float],
    who: str,
    stop_before: Callable[[SequenceSample], dict[str, float] | None] | None = None,
) -> dict[str, float]:
    """`n_epochs` passes over `n_minibatches` mini-batches, one optimizer step each.

    Returns the statistics averaged over the updates taken, plus `n_updates`.
    `stop_before(minibatch)` may return statistics to end the loop before that
    update (PPO's early stop); they are reported with `early_stopped=1`.
    """
    parts = minibatches(sample, n_minibatches, who)
    totals: dict[str, float] = {}
    n_updates = 0
    stopped: dict[str, float] | None = None
    for epoch in range(n_epochs):
        for j, mb in enumerate(parts):
            # Data-parallel replicas decide together (`dp_any`): a replica that left the
            # loop alone would leave the others waiting in the gradient all-reduce.
            if stop_before is not None and (epoch, j) != (0, 0):
                stopped = stop_before(mb)
                if engine.dp_any(stopped is not None):
                    stopped = stopped or {}
                    break
            if not engine.dp_any(weight_fn(mb) > 0):
                continue  # e.g. only greedy baselines in this mini-batch (on every replica)
            stats = engine.train_batch(mb, fit_mb_spec(mb_spec, mb.bs), loss_fn, weight_fn)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            n_updates += 1
        if stopped is not None:
            break
    out = {k: v / max(n_updates, 1) for k, v in totals.items()}
    out["n_updates"] = float(n_updates)
    out["early_stopped"] = float(stopped is not None)
    if stopped is not None:
        out.update({f"early_stop_{k}": v for k, v in stopped.items()})
    return out


def per_sequence(data: SequenceSample, key: str, who: str) -> torch.Tensor:
    """The one-per-sequence tensor `key`, checked against the sequences of packed_input_ids."""
    got, want = data.flat_seqlens(key), [1] * len(data.flat_seqlens(IDS))
    if got != want:
        raise InterfaceError(
            f"{who}: '{key}' must hold one value per sequence of '{IDS}' "
            f"({len(want)} sequences), got seqlens {data.seqlens[key][:4]}..."
        )
    return data.data[key]


def check_layout(data: SequenceSample, key: str, layout: str, who: str) -> None:
    """Raise InterfaceError if `key` is not in `layout` over the sequences of packed_input_ids."""
    want = layout_seqlens(data, layout)
    if data.seqlens[key] != want:
        i = next(i for i, (a, b) in enumerate(zip(data.seqlens[key], want)) if a != b)
        raise InterfaceError(
            f"{who}: '{key}' must be {layout}-aligned with '{IDS}' (sample {data.ids[i]!r}: "
            f"expected lengths {want[i]}, got {data.seqlens[key][i]})"
        )


def logprobs_inference(
    engine: Engine, data: SequenceSample, mb_spec: MicroBatchSpec, temperature: float, output_key: str, who: str
) -> SequenceSample:
    """`output_key`: action-aligned log-probs of packed_input_ids under the model.

    Applies `packed_logits_mask` when the input has it (recomputing the sampling
    policy's log-probs); a reference model is normally given none.
    """
    require_keys(data, [IDS], who)
    mask_key = "packed_logits_mask" if "packed_logits_mask" in data.keys else None
    post = logprobs_post_fn(temperature, mask_key)
    logp = engine.forward(data, fit_mb_spec(mb_spec, data.bs), post_fn=post, output_layout="action")
    return output_like(data, {output_key: (logp.float(), "action")})
