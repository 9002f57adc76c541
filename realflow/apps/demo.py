"""`realflow demo`: the quickstart on the bundled arithmetic task, on a CPU.

1. SFT a tiny Qwen2-shaped model (random init, the bundled tokenizer) on
   arithmetic problems ("864+394=" -> "1258") until it answers `--sft-target` of a
   validation set exactly (checked every `--sft-check-every` steps; at most
   `--sft-steps` steps). The accuracy of such a model jumps from a few percent to
   nearly all within a few hundred steps, at a step that moves with every change of
   seed or float rounding, so a fixed step count would hand GRPO a model anywhere
   between 5% and 95%; stopping at a target hands it a model that is partly right;
2. measure exact-match accuracy on held-out problems (greedy decoding);
3. GRPO from the SFT checkpoint with the exact-answer reward;
4. measure again, and print both numbers with the reward curve.

Everything runs in this process through the same experiments `realflow run sft`
and `realflow run grpo` use; the two stages' logs and checkpoints land in
`<fileroot>/demo/`. The validation problems (for the SFT stop) and the held-out
ones (reported) are disjoint, and neither is trained on.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from realflow.api.errors import ConfigError
from realflow.api.generation import GenerationConfig
from realflow.api.interface import Model
from realflow.apps.experiments import prepare_run, run_experiment
from realflow.system.inprocess import InProcessRunner
from realflow.tasks.arithmetic import check_answer, write_arithmetic_task

ARCH = ["arch.n_layers=4", "arch.hidden_dim=128", "arch.n_q_heads=4", "arch.n_kv_heads=4", "arch.intermediate_dim=512"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--sft-steps", type=int, default=3000,
                        help="at most this many SFT steps (batch of --sft-batch problems)")
    parser.add_argument("--sft-target", type=float, default=0.25,
                        help="stop SFT once this fraction of the validation problems is answered exactly")
    parser.add_argument("--sft-check-every", type=int, default=50, help="SFT steps between validation checks")
    parser.add_argument("--sft-batch", type=int, default=128)
    parser.add_argument("--rl-steps", type=int, default=300, help="GRPO steps")
    parser.add_argument("--difficulty", default="easy", help="arithmetic difficulty (easy, default, hard, add=3,mul=2)")
    parser.add_argument("--n-test", type=int, default=1000,
                        help="held-out problems for the reported accuracy (1000: +-1.5 points of sampling noise)")
    parser.add_argument("--n-val", type=int, default=200, help="validation problems for the SFT stop")
    parser.add_argument("--fileroot", default="runs", help="where logs and checkpoints go")


def held_out_accuracy(model: Model, records: list[dict[str, Any]]) -> float:
    """Exact-match accuracy of greedy answers (at most 8 new tokens) on `records`."""
    tok = model.tokenizer
    prompts = [torch.tensor(tok.encode(r["prompt"])) for r in records]
    lens = torch.tensor([len(p) for p in prompts])
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    out = model.engine.generate(
        torch.cat(prompts), cu, GenerationConfig(max_new_tokens=8, greedy=True), tok.eos_token_id, tok.pad_token_id
    )
    answers = out.output_ids.split(out.output_lens.tolist())
    hits = [check_answer(tok.decode(a.tolist(), skip_special_tokens=True), r["answer"]) for a, r in zip(answers, records)]
    return sum(hits) / len(hits)


def main(args: argparse.Namespace) -> int:
    for name in ("sft_steps", "sft_check_every", "sft_batch", "rl_steps", "n_test", "n_val"):
        if getattr(args, name) < 1:
            raise ConfigError(f"demo: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    root = Path(args.fileroot) / "demo"
    # Held-out problems first, validation problems after them (disjoint; the train
    # split is drawn apart from both).
    data = write_arithmetic_task(root / "data", n_train=20000, n_test=args.n_test + args.n_val, seed=args.seed,
                                 difficulty=args.difficulty)
    problems = [json.loads(line) for line in Path(data["sft_test"]).read_text().splitlines()]
    test, validation = problems[: args.n_test], problems[args.n_test :]
    # A console line every 100 steps (all of them are in each stage's stats.jsonl and TensorBoard).
    common = [f"run.seed={args.seed}", f"run.fileroot={root}", "run.experiment_name=demo", "run.log_freq_steps=100"]

    print(f"[1/2] SFT ({args.difficulty} arithmetic, batches of {args.sft_batch}) until {args.sft_target:.0%} of "
          f"{len(validation)} validation problems are right, at most {args.sft_steps} steps")
    t0 = time.perf_counter()
    cfg, spec = prepare_run("sft", [
        *common, "run.trial_name=sft", f"run.n_steps={args.sft_steps}", f"n_seqs={args.sft_batch}",
        f"dataset.path={data['sft_train']}", "model.optimizer.lr=1e-3", "model.optimizer.lr_scheduler_type=constant",
        *("model." + a for a in ARCH),
    ])
    runner = InProcessRunner(spec, cfg.run)
    model = runner.roles.models["default"]
    val_acc = float("nan")  # at the last check

    def reached_target(step: int, records: list) -> bool:
        nonlocal val_acc
        if (step + 1) % args.sft_check_every:
            return False
        val_acc = held_out_accuracy(model, validation)
        return val_acc >= args.sft_target

    sft = runner.run_all(reached_target)
    sft_time = time.perf_counter() - t0
    steps = 1 + max(r.step for r in sft.records)
    acc_sft = held_out_accuracy(sft.models["default"], test)
    print(f"      stopped after {steps} steps ({sft_time:.0f} s), last validation accuracy {val_acc:.1%}")
    print(f"      held-out accuracy after SFT: {acc_sft:.1%}")

    print(f"[2/2] GRPO from the SFT checkpoint: {args.rl_steps} steps")
    t0 = time.perf_counter()
    rl = run_experiment("grpo", [
        *common, "run.trial_name=grpo", f"run.n_steps={args.rl_steps}", "n_seqs=8", "group_size=8",
        f"dataset.path={data['prompt_train']}", f"actor.path={sft.run_dir / 'checkpoints' / 'final' / 'default'}",
        "actor.optimizer.lr=3e-5", "actor.optimizer.lr_scheduler_type=constant", "generation.max_new_tokens=6",
    ])
    rl_time = time.perf_counter() - t0
    acc_rl = held_out_accuracy(rl.models["actor"], test)
    rewards = rl.stats("actor_train", "task_reward")
    print(f"      held-out accuracy after GRPO: {acc_rl:.1%}  ({rl_time:.0f} s)")
    if rewards:
        k = max(1, len(rewards) // 5)
        first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
        print(f"      mean reward, first {k} steps: {first:.3f}; last {k} steps: {last:.3f}")
    print(f"\nheld-out exact match: SFT {acc_sft:.1%} -> GRPO {acc_rl:.1%} ({acc_rl - acc_sft:+.1%}); logs in {root}")
    return 0
