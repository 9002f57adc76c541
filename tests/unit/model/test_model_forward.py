"""Packed forward and backward of ReaLModel against Hugging Face on the same weights."""
from __future__ import annotations

import pytest
import torch
from model_testlib import VOCAB, hf_packed_logits, make_hf_model, packed_batch, save_hf, tiny_hf_config

from realflow.api.errors import DataError, ModelError
from realflow.model import ReaLModel, hf_state_dict, load_hf_checkpoint, packed_position_ids

LENGTHS = {
    "mixed": [7, 1, 12, 3],
    "single_len1": [1],
    "equal_runs": [4, 4, 4, 2, 2],
    # Many runs of few lengths: the CPU path gathers equal lengths into one call each.
    "many_short": [3, 5, 3, 5, 1, 3, 5, 3, 5, 3, 1, 5],
    # Both CPU kernels in one batch: written out up to SHORT_SEQ tokens, fused beyond.
    "long_and_short": [70, 5, 100, 5],
}


@pytest.mark.parametrize("batch", list(LENGTHS))
def test_logits_match_hf(hf_checkpoint, batch):
    _, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path)
    ids, cu = packed_batch(LENGTHS[batch])
    with torch.no_grad():
        ours = model(ids, cu)
        ref = hf_packed_logits(hf, ids, cu)
    assert ours.shape == (ids.numel(), VOCAB)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    ],
    ids=["linear", "llama3"],
)
def test_rope_scaling_matches_hf(tmp_path, rope):
    hf = make_hf_model(tiny_hf_config("llama", rope_parameters=rope))
    model = load_hf_checkpoint(save_hf(hf, tmp_path / "m"))
    assert model.config.rotary_scaling is not None and model.config.rotary_scaling.type == rope["rope_type"]
    ids, cu = packed_batch([40, 90])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, cu), hf_packed_logits(hf, ids, cu), atol=1e-5, rtol=0)


def test_sequences_do_not_see_each_other(hf_checkpoint):
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch([5, 6, 4])
    changed = ids.clone()
    changed[5:11] = (changed[5:11] + 1) % VOCAB  # only the middle sequence
    with torch.no_grad():
        a, b = model(ids, cu), model(changed, cu)
    torch.testing.assert_close(a[:5], b[:5], atol=0, rtol=0)
    torch.testing.assert_close(a[11:], b[11:], atol=0, rtol=0)
    assert not torch.allclose(a[5:11], b[5:11])


def test_packed_position_ids():
    cu = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    assert packed_position_ids(cu, 8).tolist() == [0, 1, 2, 0, 0, 1, 2, 3]


def test_explicit_position_ids_equal_default(hf_checkpoint):
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch([6, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, cu), model(ids, cu, packed_position_ids(cu, ids.numel())))


def test_pipeline_stages_compose_to_the_full_model(hf_checkpoint):
    path = hf_checkpoint[2]
    full = load_hf_checkpoint(path)
    n = full.config.n_total_layers
    first, second = load_hf_checkpoint(path, layer_range=(0, 2)), load_hf_checkpoint(path, layer_range=(2, n))
    assert set(first.layout.keys) | set(second.layout.keys) == set(full.layout.keys)
    assert all(k.split(".")[0] in ("0", "1") for k in first.layout.keys)
    # A tied head keeps its own copy of the embedding under the same key.
    assert ("0.wte.weight" in second.layout.keys) == full.config.tied_embedding
    ids, cu = packed_batch([5, 1, 3])
    with torch.no_grad():
        hidden = first(ids, cu)
        assert hidden.shape == (9, full.config.hidden_dim)
        torch.testing.assert_close(second(hidden, cu), full(ids, cu), atol=0, rtol=0)


def _loss_weights(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(3))


def test_test_batches_cover_both_cpu_attention_kernels():
    from realflow.model.attention import SHORT_SEQ

    lengths = LENGTHS["long_and_short"]
    assert min(lengths) <= SHORT_SEQ < max(lengths)


def test_many_short_sequences_are_grouped_by_length():
    from realflow.model.attention import PackedSeqs

    lengths = LENGTHS["many_short"]
    cu = packed_batch(lengths)[1]
    order, inverse, runs = PackedSeqs.from_cu_seqlens(cu).length_groups
    assert runs == [(0, 2, 1), (2, 5, 3), (17, 5, 5)]
    starts = cu[:-1].tolist()
    expected = [t for i in sorted(range(len(lengths)), key=lengths.__getitem__)
                for t in range(starts[i], starts[i] + lengths[i])]
    assert order.tolist() == expected
    assert torch.equal(order[inverse], torch.arange(sum(lengths)))
    assert PackedSeqs.from_cu_seqlens(packed_batch(LENGTHS["mixed"])[1]).length_groups is None


@pytest.mark.parametrize("batch", ["mixed", "equal_runs", "many_short", "long_and_short"])
def test_gradients_match_hf(hf_checkpoint, batch):
    family, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path)
    ids, cu = packed_batch(LENGTHS[batch])
    w = _loss_weights((ids.numel(), VOCAB))
    (model(ids, cu) * w).sum().backward()
    (hf_packed_logits(hf, ids, cu) * w).sum().backward()
    ours = hf_state_dict(model, {k: p.grad for k, p in model.named_parameters()})
    ref = {k: p.grad for k, p in hf.named_parameters()}
    assert set(ours) <= set(ref)
    for name, grad in ours.items():
        # fp32 sums over many tokens: compare relative to the gradient's own scale.
        err = (grad - ref[name]).abs().max() / ref[name].abs().max()
        assert err < 1e-5, f"{name}: max error {err:.2e} of the gradient's max magnitude"


def test_gradient_checkpointing_gives_the_same_gradients(hf_checkpoint):
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch([7, 1, 12])
    w = _loss_weights((ids.numel(), VOCAB))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        (model(ids, cu) * w).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_critic_outputs_one_value_per_token(hf_checkpoint):
    actor = load_hf_checkpoint(hf_checkpoint[2])
    critic = load_hf_checkpoint(hf_checkpoint[2], is_critic=True)
    ids, cu = packed_batch([3, 4])
    values = critic(ids, cu)
    assert values.shape == (7,)
    head = critic.config.head_index
    for key in actor.layout.keys:
        if not key.startswith(f"{head}.head"):
            torch.testing.assert_close(critic.state_dict()[key], actor.state_dict()[key], atol=0, rtol=0)
    assert critic.layout.shape(f"{head}.head.weight") == (1, critic.config.hidden_dim)


def test_bad_packed_inputs_raise_data_errors(hf_checkpoint):
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch([3, 4])
    with pytest.raises(DataError, match="ends at 7 but the packed input has 6 tokens"):
        model(ids[:6], cu)
    with pytest.raises(DataError, match="1-D packed"):
        model(ids[None], cu)
    with pytest.raises(DataError, match="position_ids must have shape"):
        model(ids, cu, torch.zeros(3, dtype=torch.long))


def test_bad_layer_range_is_rejected(hf_checkpoint):
    config = load_hf_checkpoint(hf_checkpoint[2]).config
    with pytest.raises(ModelError, match=r"layer range \[3, 9\) is not a non-empty part of \[0, 4\)"):
        ReaLModel(config, layer_range=(3, 9))
