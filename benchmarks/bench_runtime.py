"""Master + ZeroMQ overhead per MFC, with a null interface (realflow.system.master/worker).

    OMP_NUM_THREADS=1 python benchmarks/bench_runtime.py [--steps 200]

Graphs of null MFCs (the interface copies one key, microseconds of work) run
through the local launcher on the bundled arithmetic data set:

- `one`:    one MFC on worker w0. A step is FETCH_DATA + RUN_MFC (the step's samples
  are freed by the next request, no FREE_DATA round trip).
- `eight`:  eight MFCs on w0, each consuming the previous one's output. The
  difference to `one`, over 7, is the marginal cost of one MFC (a RUN_MFC round
  trip, the master's dispatch, the worker's store); what `one` costs beyond it is
  the per-step cost (FETCH_DATA, the step's log line).
- `chain`:  MFC `a` on w0, then `b` on w1 consuming `a`'s output: a TRANSFER over
  gloo (one key, 8 samples) plus RUN_MFC.
- `ppo`:    the tiny PPO of the e2e tests (2 layers, hidden 32, 8 prompts, 6 new
  tokens), every role on w0, so MFCs run one after another: the framework's share
  of a step is 1 - (interface seconds / step wall time). Measured with the default
  TensorBoard logging and without it (`run.tensorboard=false`), and the same for
  the in-process runner, one after another under the same load.

Reported: the median wall time of a step as the master sees it (from one step's
end to the next), minus the interface time the workers report, divided by the
number of MFCs of the step: the framework's overhead per MFC. Startup is excluded
(the first 5 steps are dropped). This file is also the user file that registers the
null interface in the workers (`LaunchConfig.user_files`).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from realflow.api.data import SequenceSample
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.experiment import ExperimentSpec, ModelSpec
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.apps.experiments import load_experiment
from realflow.system.inprocess import run_inprocess
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


def _spec(base: ExperimentSpec, n_mfcs: int, two_workers: bool) -> tuple[ExperimentSpec, dict[str, int]]:
    """`n_mfcs` null MFCs in a chain (each reads the previous one's output), all on w0;
    with `two_workers`, two MFCs: the second on w1."""
    n = base.mfcs[0].n_seqs
    mfcs, models, alloc = [], {}, {}
    key = "packed_input_ids"
    for i in range(2 if two_workers else n_mfcs):
        name, role = chr(ord("a") + i), f"r{i}"
        mfcs.append(MFCDef(name=name, model_name=role, kind=MFCKind.INFERENCE, interface_type="null_bench",
                           interface_args={"out": f"{name}_out"}, input_keys=(key,), output_keys=(f"{name}_out",),
                           n_seqs=n))
        models[role] = ModelSpec(model_free=True)
        alloc[role] = i if two_workers else 0
        key = f"{name}_out"
    return ExperimentSpec(mfcs=mfcs, models=models, dataset=base.dataset), alloc


def _timed(run, steps_dropped: int) -> tuple[list[float], list[float]]:  # noqa: ANN001
    """(step wall times, interface seconds per step) of `run(on_step)`, the first steps dropped."""
    ends: list[float] = []
    inside: list[float] = []

    def on_step(step: int, records) -> None:  # noqa: ANN001
        ends.append(time.perf_counter())
        inside.append(sum(r.seconds for r in records))

    run(on_step)
    return [b - a for a, b in zip(ends[steps_dropped:], ends[steps_dropped + 1:])], inside[steps_dropped + 1:]


def bench(name: str, steps: int, n_mfcs: int, two_workers: bool, root: str) -> dict[str, float]:
    cfg, base = load_experiment("sft", ["n_seqs=8", "dataset.arithmetic_n_train=256", f"run.n_steps={steps}",
                                        f"run.fileroot={root}", f"run.trial_name={name}", "run.log_jsonl=false"])
    spec, alloc = _spec(base, n_mfcs, two_workers)
    launch = LaunchConfig(n_workers=2 if two_workers else 1, allocation=alloc, user_files=(__file__,))
    steps_s, inside = _timed(lambda on_step: run_local(spec, cfg.run, launch, on_step=on_step), 5)
    n = len(spec.mfcs)
    overhead = [(s - i) / n for s, i in zip(steps_s, inside)]
    return {"step_ms": 1e3 * statistics.median(steps_s), "overhead_per_mfc_ms": 1e3 * statistics.median(overhead),
            "p90_overhead_per_mfc_ms": 1e3 * statistics.quantiles(overhead, n=10)[-1], "mfcs_per_step": n}


TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]


def bench_ppo(steps: int, root: str, distributed: bool, tensorboard: bool, preset: bool = False) -> dict[str, float]:
    """The micro PPO of the e2e tests, or (`preset`) PPO with the defaults: the tiny preset model
    (realflow.api.experiment.ModelArch, 1.2M parameters), 32 prompts, 8 new tokens."""
    trial = f"ppo_{'preset' if preset else 'micro'}_{'dist' if distributed else 'inproc'}_{'tb' if tensorboard else 'notb'}"
    size = [] if preset else ["n_seqs=8", "generation.max_new_tokens=6", *("actor." + t for t in TINY)]
    cfg, spec = load_experiment("ppo", [*size, "dataset.arithmetic_n_train=512", f"run.n_steps={steps}",
                                        f"run.fileroot={root}", f"run.trial_name={trial}", "run.log_jsonl=false",
                                        f"run.tensorboard={str(tensorboard).lower()}"])
    if distributed:
        launch = LaunchConfig(n_workers=1, allocation={role: 0 for role in spec.models})
        steps_s, inside = _timed(lambda on_step: run_local(spec, cfg.run, launch, on_step=on_step), 2)
    else:
        steps_s, inside = _timed(lambda on_step: run_inprocess(spec, cfg.run, on_step=on_step), 2)
    share = [1 - i / s for s, i in zip(steps_s, inside)]
    return {"step_ms": 1e3 * statistics.median(steps_s), "share": statistics.median(share),
            "framework_ms": 1e3 * statistics.median([s - i for s, i in zip(steps_s, inside)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as root:
        got = {}
        for name, n_mfcs, two in (("one", 1, False), ("eight", 8, False), ("chain", 2, True)):
            r = got[name] = bench(name, args.steps, n_mfcs, two, root)
            print(f"{name:>5}: step {r['step_ms']:.2f} ms median, {r['mfcs_per_step']} MFC(s); framework overhead "
                  f"per MFC {r['overhead_per_mfc_ms']:.2f} ms median (p90 {r['p90_overhead_per_mfc_ms']:.2f} ms)")
        marginal = (got["eight"]["step_ms"] - got["one"]["step_ms"]) / 7
        print(f"       marginal cost of one more MFC {marginal:.2f} ms; per-step cost beyond one MFC "
              f"{got['one']['step_ms'] - marginal:.2f} ms")
        for preset in (False, True):
            for distributed in (True, False):
                for tb in (True, False):
                    if preset and not tb:
                        continue
                    r = bench_ppo(max(10, args.steps // (20 if preset else 10)), root, distributed, tb, preset)
                    where = "master+w0 " if distributed else "in-process"
                    print(f"  ppo {'preset' if preset else 'micro '} {where} tensorboard={'on ' if tb else 'off'}: "
                          f"step {r['step_ms']:.1f} ms median; framework {r['framework_ms']:.1f} ms = "
                          f"{100 * r['share']:.1f}% of the step (medians)")


if __name__ == "__main__":
    main()
