"""The single-process train / inference engine of one model.

`TrainEngine.train_batch` splits a `SequenceSample` into micro-batches, runs
forward and backward on each, accumulates gradients so that the result equals one
step on the whole batch with the loss averaged over *loss tokens* (not over
micro-batches), clips the gradient norm, steps AdamW and the LR schedule, and
returns statistics. `forward` runs inference micro-batch by micro-batch and gives
the outputs back in the original sample order.

Data parallelism: a `TrainEngine` with a `dp_group` (set by the model worker when
a role is placed on several workers) trains on its shard of the batch and makes
the step equal to one step on the union of the shards: the loss-token total is
summed over the group first (so every micro-batch is weighted by its share of the
*global* loss tokens), the flat gradient buffer is all-reduced (summed) before
clipping, and the statistics are summed the same way. Every replica then takes the
same optimizer step, so the replicas stay identical without broadcasting weights.

Deliberately not here: the megatron-core backend (it wraps this same contract),
and any loss: the interface passes `loss_fn`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.distributed as dist

from realflow.api.config import OptimizerConfig
from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import DataError
from realflow.api.generation import GenerationConfig, GenerationResult
from realflow.engine.optim import make_lr_scheduler, make_optimizer
from realflow.model import save_hf_checkpoint
from realflow.model.generate import generate as model_generate

# loss_fn(model_output, micro_batch) -> (loss averaged over the mb's loss tokens, stats)
LossFn = Callable[[torch.Tensor, SequenceSample], "tuple[torch.Tensor, dict[str, float]]"]
# loss_weight_fn(micro_batch) -> number of loss tokens (the weight of its mean loss)
WeightFn = Callable[[SequenceSample], float]
# post_fn(model_output, micro_batch) -> a per-token tensor to keep (e.g. logprobs)
PostFn = Callable[[torch.Tensor, SequenceSample], torch.Tensor]


OUTPUT_LAYOUTS = ("token", "action", "sequence")


def _rows_per_sample(mb: SequenceSample, key: str, layout: str) -> list[int]:
    lens = [mb.seqlens_of(key, i) for i in range(mb.bs)]
    if layout == "token":
        return [sum(x) for x in lens]
    if layout == "action":
        return [sum(x) - len(x) for x in lens]
    if layout == "sequence":
        return [len(x) for x in lens]
    raise DataError(f"output_layout '{layout}' is not one of {list(OUTPUT_LAYOUTS)}")


class InferenceEngine:
    """Forward passes without gradients, micro-batched, outputs in sample order."""

    def __init__(self, module: torch.nn.Module, seed: int = 0) -> None:
        self.module = module
        self.version = 0  # train steps taken (see TrainEngine.end_step): the parameter version
        # The data-parallel replicas of this model (None: alone). The model worker sets it.
        self.dp_group: dist.ProcessGroup | None = None
        # Sampling draws from its own generator so runs are reproducible by seed
        # whatever else consumes torch's global RNG.
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_cu_seqlens: torch.Tensor,
        gconfig: GenerationConfig,
        eos_token_id: int | None,
        pad_token_id: int | None = None,
    ) -> GenerationResult:
        """Continuations of packed prompts (see realflow.model.generate)."""
        was_training = self.module.training
        self.module.eval()
        try:
            return model_generate(
                self.module, prompt_ids, prompt_cu_seqlens, gconfig, eos_token_id, pad_token_id, self.generator
            )
        finally:
            self.module.train(was_training)

    def dp_sum(self, x: torch.Tensor) -> torch.Tensor:
        """`x` summed over the data-parallel replicas (`x` itself when alone).

        For batch-level statistics an interface needs over the whole batch, not its
        shard: sums and counts (a mean is their ratio). Every replica must call it.
        """
        if self.dp_group is None:
            return x
        out = x.detach().clone()
        dist.all_reduce(out, group=self.dp_group)
        return out

    def dp_any(self, flag: bool) -> bool:
        """True if `flag` is true on any data-parallel replica (just `flag` alone).

        For decisions that change how many collective steps follow (early stop,
        skipping a mini-batch): every replica must take the same branch.
        """
        return self._dp_sum(float(bool(flag))) > 0

    def _dp_sum(self, x: float) -> float:
        return float(self.dp_sum(torch.tensor([x], dtype=torch.float64)))

    def save_hf(self, save_dir: str) -> None:
        """Write the model as a Hugging Face checkpoint directory."""
        save_hf_checkpoint(self.module, save_dir)

    @torch.no_grad()
    def forward(
        self,
        sample: SequenceSample,
        mb_spec: MicroBatchSpec,
        post_fn: PostFn | None = None,
        input_key: str = "packed_input_ids",
        output_layout: str = "token",
    ) -> torch.Tensor:
        """Outputs of the model on `input_key`, packed in the original sample order.

        `post_fn` reduces the model output of one micro-batch to what is kept. Its
        rows follow `output_layout`: "token" (one per input token, the default),
        "action" (one per predicted token: L - 1 per sequence, see
        realflow.interfaces.functional.packing) or "sequence" (one per sequence).
        """
        was_training = self.module.training
        self.module.eval()
        try:
            mbs, _, backward = sample.split_mbs(mb_spec, key=input_key)
            pieces: list[torch.Tensor] = []
            for mb in mbs:
                out = self.module(mb.data[input_key], mb.cu_seqlens(input_key))
                out = out if post_fn is None else post_fn(out, mb)
                rows = _rows_per_sample(mb, input_key, output_layout)
                if out.shape[0] != sum(rows):
                    raise DataError(
                        f"post_fn returned {out.shape[0]} rows for a micro-batch that needs {sum(rows)} "
                        f"in the '{output_layout}' layout of '{input_key}'"
                    )
                pieces.extend(out.split(rows))  # one piece per sample, in micro-batch order
        finally:
            self.module.train(was_training)
        return torch.cat([pieces[i] for i in backward], dim=0)


class TrainEngine(InferenceEngine):
    """AdamW training of one module with gradient accumulation over micro-batches."""

    def __init__(self, module: torch.nn.Module, cfg: OptimizerConfig, total_steps: int, seed: int = 0) -> None:
        super().__init__(module, seed)
        if total_steps < 1:
            raise DataError(f"TrainEngine needs total_steps >= 1 for its LR schedule, got {total_steps}")
        self.cfg = cfg
        self.total_steps = total_steps
        enable = getattr(module, "enable_flat_grads", None)
        if enable is not None:
            enable()
        self.optimizer = make_optimizer(module.named_parameters(), cfg)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, cfg, total_steps)
        self.skipped_steps = 0

    def train_batch(
        self,
        sample: SequenceSample,
        mb_spec: MicroBatchSpec,
        loss_fn: LossFn,
        loss_weight_fn: WeightFn,
        input_key: str = "packed_input_ids",
    ) -> dict[str, float]:
        """One optimizer step on `sample`; returns loss, grad_norm, lr and loss stats.

        The learning rate and `version` move in `end_step`, not here.

        Statistics returned by `loss_fn` are averaged over micro-batches with the
        same weights as the loss.
        """
        self.module.train()
        mbs, _, _ = sample.split_mbs(mb_spec, key=input_key)
        weights = [float(loss_weight_fn(mb)) for mb in mbs]
        total = self._dp_sum(sum(weights))
        if not total > 0:
            where = "" if self.dp_group is None else " summed over the data-parallel group"
            raise DataError(f"train_batch: the batch has no loss tokens{where} (weights per micro-batch: {weights})")
        self.module.zero_grad(set_to_none=False)
        stats: dict[str, float] = {}
        loss_sum = 0.0
        for mb, w in zip(mbs, weights):
            if w == 0:
                continue
            out = self.module(mb.data[input_key], mb.cu_seqlens(input_key))
            loss, mb_stats = loss_fn(out, mb)
            (loss * (w / total)).backward()
            loss_sum += float(loss.detach()) * w / total
            for k, v in mb_stats.items():
                stats[k] = stats.get(k, 0.0) + float(v) * w / total
        if self.dp_group is not None:
            self._all_reduce_grads()
            stats, loss_sum = self._sum_stats(stats, loss_sum)
        grad_norm = self._clip_and_step()
        stats.update(loss=loss_sum, grad_norm=grad_norm, lr=self.optimizer.param_groups[0]["lr"])
        return stats

    def _all_reduce_grads(self) -> None:
        """Sum the gradients over the data-parallel group: one call on the flat buffer."""
        flat = getattr(self.module, "flat_grads", None)
        if flat is not None:
            dist.all_reduce(flat, group=self.dp_group)
            return
        for p in self.module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, group=self.dp_group)

    def _sum_stats(self, stats: dict[str, float], loss_sum: float) -> tuple[dict[str, float], float]:
        """Each replica's share of the weighted means, summed over the group.

        A replica whose micro-batches had no loss tokens reports no keys, so the
        keys are merged by name (`all_gather_object`), not by position.
        """
        gathered: list[Any] = [None] * dist.get_world_size(self.dp_group)
        dist.all_gather_object(gathered, (loss_sum, stats), group=self.dp_group)
        merged: dict[str, float] = {}
        for _, part in gathered:
            for k, v in part.items():
                merged[k] = merged.get(k, 0.0) + v
        return merged, sum(part_loss for part_loss, _ in gathered)

    def _clip_and_step(self) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.cfg.gradient_clipping if self.cfg.gradient_clipping > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            # A non-finite gradient would poison AdamW's moments: skip the update but
            # keep the schedule moving so resumed runs stay aligned.
            self.skipped_steps += 1
        else:
            self.optimizer.step()
        return grad_norm

    def end_step(self) -> None:
        """Close one train step of the algorithm: bump the version, advance the LR.

        An interface may call `train_batch` several times in one step (PPO
        mini-batches); they share the step's learning rate. The runner calls this
        once the train MFC of the step has finished.
        """
        self.lr_scheduler.step()
        self.version += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "version": self.version,
            "skipped_steps": self.skipped_steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.version = int(state["version"])
        self.skipped_steps = int(state["skipped_steps"])
        self.generator.set_state(state["generator"])
