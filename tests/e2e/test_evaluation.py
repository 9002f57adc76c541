"""Evaluation during a run: `run.eval_freq_*` runs the `evaluate` of SFT's train MFC
over the held-out split, in-process and on a worker, and the figure equals a second
implementation (the saved checkpoint in transformers, token by token)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import transformers

from realflow.api.errors import ConfigError
from realflow.apps.experiments import load_experiment
from realflow.system.execution import build_eval_dataset, load_run_tokenizer
from realflow.system.inprocess import run_inprocess
from realflow.system.launcher import LaunchConfig, run_local
from realflow.system.request_client import HeartbeatPolicy

TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]
SFT = ["n_seqs=16", *("model." + t for t in TINY), "dataset.arithmetic_n_train=64", "dataset.arithmetic_difficulty=easy",
       "run.n_steps=4", "run.eval_freq_steps=2"]


def _hf_answer_nll(ckpt: Path, dataset) -> float:  # noqa: ANN001
    """Mean NLL of the answer tokens of every held-out sample, by transformers."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(dataset)):
            s = dataset[i]
            ids, prompt = s.data["packed_input_ids"], s.data["prompt_mask"].bool()
            logp = model(ids[None]).logits[0].float().log_softmax(-1)
            target = ids[1:]
            nll = -logp[:-1].gather(-1, target[:, None])[:, 0]
            answer = ~prompt[1:]
            total += float(nll[answer].sum())
            count += int(answer.sum())
    return total / count


@pytest.mark.timeout(240)
def test_sft_evaluates_every_two_steps_in_process_and_distributed(tmp_path: Path) -> None:
    cfg, spec = load_experiment("sft", [*SFT, f"run.fileroot={tmp_path}", "run.trial_name=inproc"])
    ref = run_inprocess(spec, cfg.run)
    name = spec.mfcs[0].name + ":eval"
    evals = [r for r in ref.records if r.mfc == name]
    assert [r.step for r in evals] == [1, 3]  # after steps 2 and 4
    tok = load_run_tokenizer(cfg.run)
    held_out = build_eval_dataset(spec.dataset, tok, cfg.run, ref.run_dir)
    assert all(r.n_seqs == len(held_out) == 200 for r in evals)
    assert evals[1].stats["loss"] < evals[0].stats["loss"]  # it trains
    # A second implementation: the final checkpoint in transformers (eval at step 4 = final weights).
    want = _hf_answer_nll(ref.run_dir / "checkpoints" / "final" / "default", held_out)
    assert evals[1].stats["loss"] == pytest.approx(want, rel=1e-4)
    assert evals[1].stats["n_tokens"] == sum(int((~held_out[i].data["prompt_mask"].bool()[1:]).sum())
                                           for i in range(len(held_out)))
    jsonl = (ref.run_dir / "stats.jsonl").read_text()
    assert jsonl.count(f'"mfc": "{name}"') == 2

    cfg, spec = load_experiment("sft", [*SFT, f"run.fileroot={tmp_path}", "run.trial_name=dist"])
    dist = run_local(spec, cfg.run, LaunchConfig(n_workers=2, allocation={"default": 1},
                                                 heartbeat=HeartbeatPolicy(interval_s=0.5, timeout_s=3.0)))
    got = [r for r in dist.records if r.mfc == name]
    assert [r.step for r in got] == [1, 3]
    for a, b in zip(got, evals):
        assert a.stats == pytest.approx(b.stats, rel=1e-6)


def test_evaluation_needs_a_held_out_file_when_the_data_set_has_a_path(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(f'{{"id": "q{i}", "prompt": "1+{i}=", "answer": "{1 + i}"}}\n' for i in range(20)))
    cfg, spec = load_experiment("sft", [*SFT, f"run.fileroot={tmp_path}", f"dataset.path={data}"])
    with pytest.raises(ConfigError, match="run.eval_path is not"):
        run_inprocess(spec, cfg.run)


def test_evaluation_of_a_graph_without_data_set_train_inputs_warns(tmp_path: Path, caplog) -> None:
    cfg, spec = load_experiment("ppo", ["n_seqs=4", "generation.max_new_tokens=2", *("actor." + t for t in TINY),
                                        "dataset.arithmetic_n_train=16", "run.n_steps=1", "run.eval_freq_steps=1",
                                        f"run.fileroot={tmp_path}"])
    with caplog.at_level(logging.WARNING):
        result = run_inprocess(spec, cfg.run)
    assert "nothing to evaluate" in caplog.text
    assert not [r for r in result.records if r.mfc.endswith(":eval")]
