"""The in-process runner on a user-defined graph with test interfaces.

Checks the runner's own mechanics, independent of the built-in algorithms: data
set keys reach MFCs, key remaps apply in both directions, a model-free role runs,
trained roles advance their version once per step, statistics are logged to
JSONL, and the final checkpoint loads in transformers with the same logits.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import transformers

from realflow.api.config import OptimizerConfig
from realflow.api.data import SequenceSample
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.errors import ConfigError, GraphError
from realflow.api.experiment import DatasetSpec, ExperimentSpec, ModelArch, ModelSpec, RunConfig
from realflow.api.interface import ModelInterface, register_interface
from realflow.system.inprocess import run_inprocess

SEEN: list[tuple[int, list[float]]] = []


@register_interface("test_seq_len", overwrite=True)
class SeqLen(ModelInterface):
    """Model-free inference: one float per sequence, its length."""

    def inference(self, model, data, mb_spec):
        assert model.module is None
        lens = [float(n) for n in data.flat_seqlens("ids")]
        return SequenceSample(
            keys={"n"},
            ids=data.ids,
            seqlens={"n": [[1] * len(data.seqlens_of("ids", i)) for i in range(data.bs)]},
            trailing_shapes={"n": ()},
            dtypes={"n": torch.float32},
            data={"n": torch.tensor(lens)},
        )


@register_interface("test_lm", overwrite=True)
class NextToken(ModelInterface):
    """Next-token loss on every token; checks the lengths computed upstream."""

    def train_step(self, model, data, mb_spec):
        assert data.data["lengths"].tolist() == [float(n) for n in data.flat_seqlens("packed_input_ids")]
        SEEN.append((model.version, data.data["lengths"].tolist()))

        def loss_fn(logits, mb):
            ids = mb.data["packed_input_ids"]
            cu = mb.cu_seqlens("packed_input_ids").tolist()
            losses = [F.cross_entropy(logits[a : b - 1], ids[a + 1 : b], reduction="sum") for a, b in zip(cu, cu[1:])]
            return torch.stack(losses).sum() / weight(mb), {}

        def weight(mb):
            return float(sum(n - 1 for n in mb.flat_seqlens("packed_input_ids")))

        return model.engine.train_batch(data, mb_spec, loss_fn, weight)


def _spec(n_seqs: int = 8) -> ExperimentSpec:
    lengths = MFCDef(
        name="lengths",
        model_name="rule",
        kind=MFCKind.INFERENCE,
        interface_type="test_seq_len",
        input_keys=("packed_input_ids",),
        input_key_remap={"packed_input_ids": "ids"},
        output_keys=("lengths",),
        output_key_remap={"n": "lengths"},
        n_seqs=n_seqs,
    )
    train = MFCDef(
        name="train",
        model_name="default",
        kind=MFCKind.TRAIN_STEP,
        interface_type="test_lm",
        input_keys=("packed_input_ids", "lengths"),
        n_seqs=n_seqs,
    )
    arch = ModelArch(n_layers=2, hidden_dim=32, n_q_heads=4, n_kv_heads=2, intermediate_dim=64)
    return ExperimentSpec(
        mfcs=[lengths, train],
        models={
            "default": ModelSpec(arch=arch, optimizer=OptimizerConfig(lr=1e-2)),
            "rule": ModelSpec(model_free=True),
        },
        dataset=DatasetSpec(name="prompt_answer", arithmetic_n_train=64, arithmetic_difficulty="easy"),
    )


def test_runner_steps_a_user_graph(tmp_path):
    SEEN.clear()
    run = RunConfig(n_steps=4, fileroot=str(tmp_path), seed=3)
    result = run_inprocess(_spec(), run)

    assert [v for v, _ in SEEN] == [0, 1, 2, 3]  # version advances once per step
    assert result.models["default"].version == 4
    losses = result.stats("train", "loss")
    assert len(losses) == 4 and losses[-1] < losses[0]

    lines = [json.loads(x) for x in (result.run_dir / "stats.jsonl").read_text().splitlines()]
    assert [(r["step"], r["mfc"]) for r in lines] == [(s, m) for s in range(4) for m in ("lengths", "train")]
    assert all(r["n_seqs"] == 8 and r["n_tokens"] > 0 for r in lines)
    assert [r["stats"]["loss"] for r in lines if r["mfc"] == "train"] == losses

    ckpt = result.run_dir / "checkpoints" / "final" / "default"
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt)
    ours = result.models["default"].module.eval()
    ids = torch.tensor([5, 9, 3, 7, 11, 2])
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
        got = ours(ids, torch.tensor([0, 6], dtype=torch.int32))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert transformers.AutoTokenizer.from_pretrained(ckpt).eos_token == "<|endoftext|>"


def test_same_seed_same_run(tmp_path):
    a = run_inprocess(_spec(), RunConfig(n_steps=2, fileroot=str(tmp_path / "a"), seed=5))
    b = run_inprocess(_spec(), RunConfig(n_steps=2, fileroot=str(tmp_path / "b"), seed=5))
    assert a.stats("train", "loss") == b.stats("train", "loss")
    assert torch.equal(a.models["default"].module.flat_params, b.models["default"].module.flat_params)


def test_missing_dataset_key_is_a_graph_error(tmp_path):
    spec = _spec()
    bad = MFCDef(name="train", model_name="default", kind=MFCKind.TRAIN_STEP, interface_type="test_lm",
                 input_keys=("packed_input_ids", "lengths", "nowhere"), n_seqs=8)
    spec = ExperimentSpec(mfcs=[spec.mfcs[0], bad], models=spec.models, dataset=spec.dataset)
    with pytest.raises(GraphError, match="nowhere"):
        run_inprocess(spec, RunConfig(n_steps=1, fileroot=str(tmp_path)))


def test_trained_role_needs_an_optimizer(tmp_path):
    spec = _spec()
    spec.models["default"].optimizer = None
    with pytest.raises(ConfigError, match="no optimizer"):
        run_inprocess(spec, RunConfig(n_steps=1, fileroot=str(tmp_path)))


def test_batch_larger_than_dataset(tmp_path):
    with pytest.raises(ConfigError, match="fewer than one batch"):
        run_inprocess(_spec(n_seqs=128), RunConfig(n_steps=1, fileroot=str(tmp_path)))
