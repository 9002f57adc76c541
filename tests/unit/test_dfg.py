"""The graph API: MFC definitions, build_graph validation, queries, rendering, docs."""
from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from pathlib import Path

import pytest

from realflow.api.data import MicroBatchSpec
from realflow.api.dfg import (
    Dependency,
    FrozenDict,
    MFCDef,
    MFCKind,
    ModelName,
    build_graph,
    dataset_keys,
    dependencies,
    iter_mfcs,
    mfc_of,
    source_mfcs,
    topological_order,
    train_mfc_by_role,
    version_dependencies,
)
from realflow.api.errors import ConfigError, GraphError
from realflow.api.render import render_graph, to_dot

GEN, INF, TRAIN = MFCKind.GENERATE, MFCKind.INFERENCE, MFCKind.TRAIN_STEP
DOCS = Path(__file__).resolve().parents[2] / "docs" / "concepts.md"


def mfc(name: str, model: str = "m", kind: MFCKind = INF, inputs=("x",), outputs=(), **kw) -> MFCDef:
    kw.setdefault("interface_type", "iface")
    kw.setdefault("n_seqs", 4)
    return MFCDef(name=name, model_name=model, kind=kind, input_keys=inputs, output_keys=outputs, **kw)


def ppo_mfcs() -> list[MFCDef]:
    seq = ("seq", "logp", "ref_logp", "rewards", "values")
    return [
        mfc("actor_gen", "actor", GEN, ("prompt",), ("seq", "logp")),
        mfc("rew_inf", "reward", INF, ("seq",), ("rewards",)),
        mfc("ref_inf", "ref", INF, ("seq",), ("ref_logp",), output_key_remap={"logprobs": "ref_logp"}),
        mfc("critic_inf", "critic", INF, ("seq",), ("values",)),
        mfc("actor_train", "actor", TRAIN, seq),
        mfc("critic_train", "critic", TRAIN, seq),
    ]


# ----------------------------------------------------------------------------- ModelName, MFCKind


def test_model_name_str_parse_and_hash():
    assert str(ModelName("actor")) == "actor@0"
    assert ModelName.parse("actor@2") == ModelName("actor", 2)
    assert ModelName.parse("critic") == ModelName("critic", 0)
    assert len({ModelName("a"), ModelName("a", 0), ModelName("a", 1)}) == 2
    assert sorted([ModelName("b"), ModelName("a", 1), ModelName("a")]) == [
        ModelName("a"), ModelName("a", 1), ModelName("b")]


@pytest.mark.parametrize("args,message", [
    (("",), "model role must be a non-empty string"),
    (("a@b",), "without '@'"),
    ((" actor",), "outer spaces"),
    (("actor", -1), "model 'actor': replica_id must be an int >= 0, got -1"),
    (("actor", True), "replica_id must be an int >= 0, got True"),
])
def test_model_name_rejects(args, message):
    with pytest.raises(GraphError, match=re.escape(message)):
        ModelName(*args)


def test_model_name_parse_rejects_bad_replica():
    with pytest.raises(GraphError, match=re.escape("model name 'actor@x': the replica after '@' must be a number")):
        ModelName.parse("actor@x")


def test_mfc_kind_values_name_interface_methods():
    assert [k.value for k in MFCKind] == ["generate", "inference", "train_step"]
    assert MFCKind("train_step") is TRAIN and str(GEN) == "generate"


# ----------------------------------------------------------------------------- MFCDef


def test_mfcdef_normalises_fields():
    m = MFCDef(name="gen", model_name="actor@1", kind="generate", interface_type="ppo_actor",
               input_keys=["prompt"], output_keys=["seq"], n_seqs=2, interface_args={"t": 1.0})
    assert m.model_name == ModelName("actor", 1) and m.role == "actor"
    assert m.kind is GEN
    assert m.input_keys == ("prompt",) and m.output_keys == ("seq",)
    assert m.mb_spec == MicroBatchSpec() and m.log_return_value is False
    assert isinstance(m.interface_args, FrozenDict) and m.interface_args == {"t": 1.0}


def test_mfcdef_is_frozen_hashable_picklable():
    m = mfc("a", interface_args={"lr": 1e-3, "nested": [1]}, input_key_remap={"x": "y"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.name = "b"  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        m.interface_args["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        m.input_key_remap.update(z="w")  # type: ignore[attr-defined]
    assert hash(m) == hash(mfc("a", interface_args={"lr": 1e-3, "nested": [1]}, input_key_remap={"x": "y"}))
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m), dataclasses.replace(m)):
        assert clone == m and isinstance(clone.interface_args, FrozenDict)
    assert dict(**m.interface_args) == {"lr": 1e-3, "nested": [1]}


def test_remaps_translate_in_the_direction_data_flows():
    m = mfc("ref_inf", inputs=("seq", "mask"), outputs=("ref_logp", "aux"),
            input_key_remap={"seq": "input_ids"}, output_key_remap={"logprobs": "ref_logp"})
    assert m.input_rename == {"seq": "input_ids", "mask": "mask"}  # graph -> interface
    assert m.output_rename == {"logprobs": "ref_logp", "aux": "aux"}  # interface -> graph


@pytest.mark.parametrize("kw,message", [
    (dict(name=""), "an MFC name must be a non-empty string, got ''"),
    (dict(model_name=3), "MFC 'a': model_name must be a ModelName or 'role@replica', got 3"),
    (dict(kind="evaluate"), "MFC 'a': kind 'evaluate' is not one of generate, inference, train_step"),
    (dict(interface_type=""), "MFC 'a': interface_type must be a non-empty string, got ''"),
    (dict(n_seqs=0), "MFC 'a': n_seqs (batch size in sequences) must be an int >= 1, got 0"),
    (dict(n_seqs=2.0), "MFC 'a': n_seqs (batch size in sequences) must be an int >= 1, got 2.0"),
    (dict(mb_spec={"n_mbs": 2}), "MFC 'a': mb_spec must be a MicroBatchSpec, got dict"),
    (dict(log_return_value=1), "MFC 'a': log_return_value must be a bool, got 1"),
    (dict(interface_args=[("k", 1)]), "MFC 'a': interface_args must be a mapping, got list"),
    (dict(interface_args={1: 2}), "MFC 'a': interface_args has key 1; keys are non-empty strings"),
    (dict(input_keys=()), "MFC 'a' has empty input_keys; every MFC consumes at least one key"),
    (dict(input_keys="prompt"), "MFC 'a': input_keys must be a sequence of key names, got the string 'prompt' "
                                "(write ('prompt',))"),
    (dict(input_keys=5), "MFC 'a': input_keys must be a sequence of key names, got 5"),
    (dict(input_keys=("x", "")), "MFC 'a': input_keys holds ''; keys are non-empty strings"),
    (dict(input_keys=("x", "x")), "MFC 'a': key 'x' appears twice in input_keys ('x', 'x')"),
    (dict(output_keys=("y", "y")), "MFC 'a': key 'y' appears twice in output_keys ('y', 'y')"),
    (dict(kind=TRAIN, output_keys=("y",)), "MFC 'a' is a train_step but declares output_keys ('y',); "
                                           "a train_step returns statistics, not data"),
    (dict(output_keys=("x",)), "MFC 'a' both consumes and produces key 'x'"),
    (dict(input_key_remap={"z": "w"}), "MFC 'a': input_key_remap renames key 'z', which is not in its "
                                       "input_keys ('x',)"),
    (dict(input_key_remap={"x": ""}), "MFC 'a': input_key_remap maps 'x' to ''; key names are non-empty"),
    (dict(output_keys=("y",), output_key_remap={"v": "w"}),
     "MFC 'a': output_key_remap maps interface key 'v' to 'w', which is not in its output_keys ('y',)"),
    (dict(input_keys=("x", "y"), input_key_remap={"x": "y"}),
     "MFC 'a': input keys 'x' and 'y' both become interface key 'y' after input_key_remap"),
    (dict(output_keys=("y", "z"), output_key_remap={"u": "y", "v": "y"}),
     "MFC 'a': output_key_remap maps two interface keys to graph key 'y'"),
    (dict(output_keys=("y", "z"), output_key_remap={"z": "y"}),
     "MFC 'a': output keys 'y' and 'z' both become interface key 'z' after output_key_remap"),
])
def test_mfcdef_validation_errors(kw, message):
    args = dict(name="a", model_name="m", kind=INF, interface_type="i", input_keys=("x",), n_seqs=1)
    args.update(kw)
    with pytest.raises(GraphError, match=re.escape(message)):
        MFCDef(**args)


# ----------------------------------------------------------------------------- build_graph


def test_ppo_graph_edges_and_dataset_keys():
    graph = build_graph(ppo_mfcs(), dataset_keys=["prompt", "answer"])
    assert graph.graph["dataset_keys"] == dataset_keys(graph) == ("prompt",)  # only what is consumed
    assert graph.edges["actor_gen", "actor_train"]["keys"] == ("seq", "logp")
    assert graph.edges["ref_inf", "critic_train"]["keys"] == ("ref_logp",)
    assert not graph.has_edge("actor_train", "actor_gen")
    assert graph.number_of_edges() == 11
    assert mfc_of(graph, "ref_inf").output_rename == {"logprobs": "ref_logp"}


def test_queries_on_ppo_graph():
    graph = build_graph(ppo_mfcs())
    order = ["actor_gen", "rew_inf", "ref_inf", "critic_inf", "actor_train", "critic_train"]
    assert topological_order(graph) == order
    assert [m.name for m in iter_mfcs(graph)] == order
    assert source_mfcs(graph) == ["actor_gen"]
    assert train_mfc_by_role(graph) == {"actor": "actor_train", "critic": "critic_train"}
    assert version_dependencies(graph) == [
        Dependency("actor_gen", "actor_train", 0, "version"),
        Dependency("actor_train", "actor_gen", 1, "version"),
        Dependency("critic_inf", "critic_train", 0, "version"),
        Dependency("critic_train", "critic_inf", 1, "version"),
    ]
    deps = dependencies(graph)
    assert set(deps) == set(order)
    assert deps["actor_gen"] == (Dependency("actor_gen", "actor_gen", 1, "order"),
                                 Dependency("actor_train", "actor_gen", 1, "version"))
    assert {d.before for d in deps["actor_train"] if d.reason == "data"} == {
        "actor_gen", "rew_inf", "ref_inf", "critic_inf"}
    with pytest.raises(GraphError, match=re.escape("no MFC named 'nope'; MFCs: actor_gen, rew_inf")):
        mfc_of(graph, "nope")


def test_topological_order_breaks_ties_by_declaration():
    graph = build_graph([mfc("z", inputs=("p",), outputs=("a",)), mfc("b", inputs=("a",)),
                         mfc("a", inputs=("p",))])
    assert topological_order(graph) == ["z", "b", "a"]
    assert source_mfcs(graph) == ["z", "a"]


def test_replicas_share_the_version_of_their_role():
    graph = build_graph([
        mfc("gen", "actor@1", GEN, ("prompt",), ("seq",)),
        mfc("train", "actor@0", TRAIN, ("seq",)),
    ])
    assert version_dependencies(graph) == [Dependency("gen", "train", 0, "version"),
                                           Dependency("train", "gen", 1, "version")]


def test_role_without_training_has_no_version_deps():
    graph = build_graph([mfc("ref", "ref", INF, ("seq",), ("ref_logp",)), mfc("t", "actor", TRAIN, ("ref_logp",))])
    assert version_dependencies(graph) == []


@pytest.mark.parametrize("mfcs,kw,message", [
    ([], {}, "an algorithm graph needs at least one MFC, got none"),
    (["gen"], {}, "item 0 of the MFC list is a str, not an MFCDef"),
    ([mfc("a", "m"), mfc("a", "n")], {}, "two MFCs are named 'a' (on m@0 and n@0); MFC names must be unique"),
    ([mfc("a", interface_type="ppo")], dict(known_interfaces=["sft", "dpo"]),
     "MFC 'a' uses unknown interface 'ppo'; known interfaces: dpo, sft"),
    ([mfc("a", "critic")], dict(known_models=["actor", ModelName("ref")]),
     "MFC 'a' runs on model 'critic@0', which is not declared; declared models: actor@0, ref@0"),
    ([mfc("t1", "actor", TRAIN), mfc("t2", "actor@1", TRAIN)], {},
     "model role 'actor' is trained by two MFCs, 't1' and 't2'; a role has at most one train_step MFC"),
    ([mfc("a", n_seqs=4, outputs=("y",)), mfc("b", n_seqs=8, inputs=("y",))], {},
     "MFCs disagree on n_seqs (a=4, b=8); one step feeds one batch through the graph"),
    ([mfc("a", outputs=("y",)), mfc("b", outputs=("y",))], {}, "key 'y' is produced by two MFCs, 'a' and 'b'"),
    ([mfc("a", outputs=("y",))], dict(dataset_keys=["x", "y"]),
     "MFC 'a' produces key 'y', which the dataset also provides; rename the output with output_key_remap"),
    ([mfc("a", outputs=("y",)), mfc("b", inputs=("y", "z"))], dict(dataset_keys=["x"]),
     "MFC 'b' consumes key 'z', which no MFC produces and the dataset does not provide; dataset keys: x; "
     "MFC outputs: y"),
    ([mfc("a", outputs=("y",))], dict(dataset_keys="x"),
     "build_graph: dataset_keys must be a sequence of key names, got the string 'x'"),
    ([mfc("a", inputs=("x", "c"), outputs=("y",)), mfc("b", inputs=("y",), outputs=("c",))], {},
     "the graph has a cycle: a -[y]-> b -[c]-> a"),
    ([mfc("a", inputs=("c",), outputs=("y",)), mfc("b", inputs=("y",), outputs=("z",)),
      mfc("c", inputs=("z",), outputs=("c",))], {},
     "the graph has a cycle: a -[y]-> b -[z]-> c -[c]-> a"),
])
def test_build_graph_errors(mfcs, kw, message):
    with pytest.raises(GraphError, match=re.escape(message)):
        build_graph(mfcs, **kw)


def test_build_graph_accepts_known_names():
    graph = build_graph(ppo_mfcs(), dataset_keys={"prompt"},
                        known_interfaces=["iface"], known_models=["actor", "critic", "ref", "reward@0"])
    assert graph.number_of_nodes() == 6


# ----------------------------------------------------------------------------- rendering


def test_to_dot_lists_nodes_coloured_by_kind_and_keyed_edges():
    dot = to_dot(build_graph(ppo_mfcs()))
    assert dot.startswith("digraph realflow {") and dot.rstrip().endswith("}")
    assert '"actor_gen" [label="actor_gen\\nactor@0 · generate\\n[iface]", fillcolor="#8fd694"];' in dot
    assert 'fillcolor="#f4a261"' in dot  # train steps
    assert '"dataset" -> "actor_gen" [label="prompt"];' in dot
    assert '"actor_gen" -> "actor_train" [label="seq\\nlogp"];' in dot
    assert dot.count(" -> ") == 12


def test_render_graph_writes_png_and_dot(tmp_path):
    graph = build_graph(ppo_mfcs())
    pytest.importorskip("matplotlib")
    png = render_graph(graph, tmp_path / "ppo.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert render_graph(graph, tmp_path / "ppo.dot").read_text() == to_dot(graph)
    with pytest.raises(ConfigError, match=re.escape("cannot render a graph to")):
        render_graph(graph, tmp_path / "ppo.txt")


# ----------------------------------------------------------------------------- docs


def test_concepts_doc_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks, f"no python examples in {DOCS}"
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(DOCS), "exec"), namespace)
