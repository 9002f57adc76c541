"""Master + ZeroMQ overhead per MFC, with a null interface (realflow.system.master/worker).

    OMP_NUM_THREADS=1 python benchmarks/bench_runtime.py [--steps 200]

Two graphs of null MFCs (the interface copies one key, microseconds of work) run
through the local launcher on the bundled arithmetic data set:

- `one`:   one MFC on worker w0. A step is FETCH_DATA + RUN_MFC + FREE_DATA.
- `chain`: MFC `a` on w0, then `b` on w1 consuming `a`'s output: a TRANSFER over
  gloo (one key, 8 samples) plus RUN_MFC, and FREE_DATA on both.

- `ppo`:   the tiny PPO of the e2e tests (2 layers, hidden 32, 8 prompts, 6 new
  tokens), every role on w0, so MFCs run one after another: the framework's share
  of a step is 1 - (interface seconds / step wall time).

Reported: the median wall time of a step as the master sees it (from one step's
end to the next), minus the interface time the workers report, divided by the
number of MFCs of the step: the framework's overhead per MFC. Startup is excluded
(the first 5 steps are dropped). This file is also the user file that registers the
null interface in the workers (`LaunchConfig.user_files`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
import time

from realflow.api.data import SequenceSample
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.experiment import ExperimentSpec, ModelSpec
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.apps.experiments import load_experiment
from realflow.system.launcher import LaunchConfig, run_local


@register_interface("null_bench", overwrite=True)
class NullInterface(ModelInterface):
    """Inference that returns its (one) input key under another name, and nothing else."""

    def __init__(self, out: str = "null_out") -> None:
        self.out = out

    def inference(self, model: Model, data: SequenceSample, mb_spec) -> SequenceSample:  # noqa: ANN001
        (key,) = data.keys
        out = data.select([key])
        out.remap_keys_({key: self.out})
        return out


def _spec(base: ExperimentSpec, chain: bool) -> tuple[ExperimentSpec, dict[str, int]]:
    n = base.mfcs[0].n_seqs
    a = MFCDef(name="a", model_name="r0", kind=MFCKind.INFERENCE, interface_type="null_bench",
               interface_args={"out": "a_out"}, input_keys=("packed_input_ids",), output_keys=("a_out",), n_seqs=n)
    mfcs = [a]
    models = {"r0": ModelSpec(model_free=True)}
    alloc = {"r0": 0}
    if chain:
        mfcs.append(MFCDef(name="b", model_name="r1", kind=MFCKind.INFERENCE, interface_type="null_bench",
                           interface_args={"out": "b_out"}, input_keys=("a_out",), output_keys=("b_out",), n_seqs=n))
        models["r1"] = ModelSpec(model_free=True)
        alloc["r1"] = 1
    return ExperimentSpec(mfcs=mfcs, models=models, dataset=base.dataset), alloc


def bench(name: str, steps: int, chain: bool, root: str) -> dict[str, float]:
    cfg, base = load_experiment("sft", ["n_seqs=8", "dataset.arithmetic_n_train=256", f"run.n_steps={steps}",
                                        f"run.fileroot={root}", f"run.trial_name={name}", "run.log_jsonl=false"])
    spec, alloc = _spec(base, chain)
    ends: list[float] = []
    inside: list[float] = []

    def on_step(step: int, records) -> None:  # noqa: ANN001
        ends.append(time.perf_counter())
        inside.append(sum(r.seconds for r in records))

    run_local(spec, cfg.run, LaunchConfig(n_workers=2 if chain else 1, allocation=alloc, user_files=(__file__,)),
              on_step=on_step)
    n_mfcs = len(spec.mfcs)
    steps_s = [b - a for a, b in zip(ends[5:], ends[6:])]
    overhead = [(s - i) / n_mfcs for s, i in zip(steps_s, inside[6:])]
    return {"step_ms": 1e3 * statistics.median(steps_s), "overhead_per_mfc_ms": 1e3 * statistics.median(overhead),
            "p90_overhead_per_mfc_ms": 1e3 * statistics.quantiles(overhead, n=10)[-1], "mfcs_per_step": n_mfcs}


TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]


def bench_ppo(steps: int, root: str) -> dict[str, float]:
    cfg, spec = load_experiment("ppo", ["n_seqs=8", "generation.max_new_tokens=6", *("actor." + t for t in TINY),
                                        "dataset.arithmetic_n_train=256", f"run.n_steps={steps}",
                                        f"run.fileroot={root}", "run.trial_name=ppo", "run.log_jsonl=false"])
    ends: list[float] = []
    inside: list[float] = []

    def on_step(step: int, records) -> None:  # noqa: ANN001
        ends.append(time.perf_counter())
        inside.append(sum(r.seconds for r in records))

    alloc = {role: 0 for role in spec.models}
    run_local(spec, cfg.run, LaunchConfig(n_workers=1, allocation=alloc), on_step=on_step)
    steps_s = [b - a for a, b in zip(ends[2:], ends[3:])]
    share = [1 - i / s for s, i in zip(steps_s, inside[3:])]
    return {"step_ms": 1e3 * statistics.median(steps_s), "share": statistics.median(share)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as root:
        for name, chain in (("one", False), ("chain", True)):
            r = bench(name, args.steps, chain, root)
            print(f"{name:>5}: step {r['step_ms']:.2f} ms median, {r['mfcs_per_step']} MFC(s); framework overhead "
                  f"per MFC {r['overhead_per_mfc_ms']:.2f} ms median (p90 {r['p90_overhead_per_mfc_ms']:.2f} ms)")
        r = bench_ppo(max(10, args.steps // 10), root)
        print(f"  ppo: step {r['step_ms']:.1f} ms median; framework share {100 * r['share']:.1f}% (median)")


if __name__ == "__main__":
    main()
