"""docs/algorithms.md's worked example (a user graph in its own file) runs as written."""
from __future__ import annotations

import re
from pathlib import Path

from realflow.apps.experiments import import_user_file, load_experiment, run_experiment
from realflow.api.dfg import build_graph

DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_user_graph_from_the_docs_runs(tmp_path):
    example = next(b for b in _blocks() if b.startswith("# my_variant.py"))
    path = tmp_path / "my_variant.py"
    path.write_text(example)
    import_user_file(str(path))
    tiny = ["actor.arch.n_layers=2", "actor.arch.hidden_dim=32", "actor.arch.intermediate_dim=64"]
    _, spec = load_experiment("grpo_brevity", ["n_seqs=4", "group_size=2"])
    graph = build_graph(spec.mfcs)
    assert set(graph.predecessors("total")) == {"correct", "bonus"}
    result = run_experiment(
        "grpo_brevity",
        [*tiny, "n_seqs=4", "group_size=2", "generation.max_new_tokens=4", "run.n_steps=2",
         "dataset.arithmetic_n_train=32", f"run.fileroot={tmp_path}", "bonus_weight=0.5"],
    )
    assert [r.mfc for r in result.records if r.step == 0] == ["actor_gen", "correct", "bonus", "total", "actor_train"]
    assert result.models["actor"].version == 2


def test_python_api_block_runs(tmp_path, monkeypatch):
    block = next(b for b in _blocks() if "run_inprocess(spec, cfg.run)" in b)
    block = block.replace('"n_seqs=8"]', f'"n_seqs=8", "model.arch.n_layers=1", "model.arch.hidden_dim=32", '
                          f'"dataset.arithmetic_n_train=32", "run.fileroot={tmp_path}"]')
    exec(compile(block, str(DOC), "exec"), {})
