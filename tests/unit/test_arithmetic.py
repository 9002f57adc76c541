"""The bundled arithmetic task: determinism, no train/test overlap, checker, writers."""
from __future__ import annotations

import json
import random

import pytest

from realflow.tasks.arithmetic import (
    DIFFICULTIES,
    Difficulty,
    Problem,
    check_answer,
    generate_problems,
    wrong_answer,
    write_arithmetic_task,
)


def test_deterministic_by_seed():
    assert generate_problems(300, 50, seed=7) == generate_problems(300, 50, seed=7)
    assert generate_problems(300, 50, seed=7) != generate_problems(300, 50, seed=8)


def test_test_set_does_not_depend_on_n_train():
    _, test_small = generate_problems(10, 40, seed=3)
    _, test_big = generate_problems(2000, 40, seed=3)
    assert test_small == test_big


@pytest.mark.parametrize("difficulty", ["easy", "default", "hard", "add=1,mul=1"])
def test_no_overlap_and_no_duplicates(difficulty):
    n_train = 100 if difficulty == "add=1,mul=1" else 3000
    train, test = generate_problems(n_train, 10, seed=1, difficulty=difficulty)
    keys_train, keys_test = {p.key for p in train}, {p.key for p in test}
    assert len(keys_train) == n_train and len(keys_test) == 10
    assert not keys_train & keys_test


def test_commutative_problems_count_once():
    assert Problem(12, "+", 34).key == Problem(34, "+", 12).key
    assert Problem(12, "*", 34).key == Problem(34, "*", 12).key
    assert Problem(34, "-", 12).key != Problem(12, "-", 34).key


def test_exhausting_an_operator_and_the_whole_space():
    # 1-digit multiplication has 55 unordered pairs; take all of them plus additions.
    train, test = generate_problems(150, 5, seed=0, difficulty="add=2,mul=1")
    assert sum(p.op == "*" for p in train + test) == 55
    with pytest.raises(ValueError, match="distinct problems"):
        generate_problems(50, 10, seed=0, difficulty="mul=1")


def test_default_difficulty_mix_and_digits():
    train, _ = generate_problems(3000, 0, seed=2)
    assert Difficulty.parse("default") == Difficulty(add=3, sub=3, mul=2)
    counts = {op: sum(p.op == op for p in train) for op in "+-*"}
    assert all(900 <= c <= 1100 for c in counts.values()), counts
    for p in train:
        digits = 2 if p.op == "*" else 3
        assert len(str(p.a)) == digits and len(str(p.b)) == digits
        assert int(p.answer) >= 0
        assert p.prompt == f"{p.a}{p.op}{p.b}="


def test_problem_text_and_answers():
    assert (Problem(864, "+", 394).prompt, Problem(864, "+", 394).answer) == ("864+394=", "1258")
    assert Problem(500, "-", 123).answer == "377"
    assert Problem(12, "*", 34).answer == "408"


def test_difficulty_parsing_and_validation():
    assert Difficulty.parse("add=2,mul=1") == Difficulty(add=2, sub=0, mul=1)
    assert Difficulty.parse("easy") is DIFFICULTIES["easy"]
    assert Difficulty(add=0, sub=2, mul=0).ops == ("-",)
    with pytest.raises(ValueError, match="preset"):
        Difficulty.parse("div=2")
    with pytest.raises(ValueError, match="switched off"):
        Difficulty(add=0, sub=0, mul=0)
    with pytest.raises(ValueError, match="Difficulty.mul"):
        Difficulty(mul=12)


@pytest.mark.parametrize(
    "completion,answer,score",
    [
        ("1258", "1258", 1.0),
        ("1258<|endoftext|>", "1258", 1.0),
        (" 1258 and more", "1258", 1.0),
        ("1258\n", "1258", 1.0),
        ("01258", "1258", 1.0),
        ("12580", "1258", 0.0),
        ("125", "1258", 0.0),
        ("answer: 1258", "1258", 0.0),
        ("", "1258", 0.0),
        ("-5", "-5", 1.0),
        ("5", "-5", 0.0),
        ("12", "not-a-number", 0.0),
    ],
)
def test_check_answer(completion, answer, score):
    assert check_answer(completion, answer) == score


def test_wrong_answers_are_wrong_plausible_and_non_negative():
    rng = random.Random(0)
    train, _ = generate_problems(500, 0, seed=5)
    for p in train:
        w = wrong_answer(p, rng)
        assert w != p.answer and int(w) >= 0 and check_answer(w, p.answer) == 0.0
        assert abs(len(w) - len(p.answer)) <= 1


def test_write_all_formats(tmp_path):
    paths = write_arithmetic_task(tmp_path, n_train=40, n_test=8, seed=4, difficulty="default",
                                  pairs_per_prompt=2)
    assert set(paths) == {f"{f}_{s}" for f in ("sft", "prompt", "rw", "math_code") for s in ("train", "test")}
    load = lambda key: [json.loads(line) for line in open(paths[key])]  # noqa: E731
    sft, prompt, rw, mc = (load(f"{f}_train") for f in ("sft", "prompt", "rw", "math_code"))
    assert len(sft) == len(prompt) == len(rw) == len(mc) == 40
    assert len(load("sft_test")) == 8
    assert set(sft[0]) == {"id", "prompt", "answer"}
    for s, r, m in zip(sft, rw, mc):
        assert check_answer(s["answer"], s["answer"]) == 1.0
        assert r["chosen"] == [s["answer"]] * 2 and len(set(r["rejected"])) == 2
        assert all(check_answer(x, s["answer"]) == 0.0 for x in r["rejected"])
        assert m == {"qid": s["id"], "prompt": s["prompt"], "task": "math", "solutions": [s["answer"]]}
    train_prompts = {r["prompt"] for r in sft}
    assert not train_prompts & {r["prompt"] for r in load("sft_test")}
    manifest = json.loads((tmp_path / "task.json").read_text())
    assert manifest["difficulty"] == {"add": 3, "sub": 3, "mul": 2} and manifest["seed"] == 4
    # Same arguments, same bytes.
    again = write_arithmetic_task(tmp_path / "again", n_train=40, n_test=8, seed=4, pairs_per_prompt=2)
    assert all(open(paths[k]).read() == open(again[k]).read() for k in paths)


def test_command_line(tmp_path, capsys):
    from realflow.tasks.arithmetic import main

    assert main([str(tmp_path), "--n-train", "5", "--n-test", "2", "--difficulty", "easy"]) == 0
    assert "sft_train: " in capsys.readouterr().out
    assert len((tmp_path / "sft_train.jsonl").read_text().splitlines()) == 5


def test_every_file_loads_into_its_dataset(tmp_path):
    from realflow.api.dataset import DatasetUtility, make_dataset
    from realflow.assets import load_tokenizer
    from realflow.tasks.arithmetic import FILE_FOR_DATASET

    paths = write_arithmetic_task(tmp_path, n_train=12, n_test=3, seed=0)
    util = DatasetUtility(load_tokenizer(), seed=0)
    for name, fmt in FILE_FOR_DATASET.items():
        for split, n in (("train", 12), ("test", 3)):
            assert len(make_dataset(name, util, source=paths[f"{fmt}_{split}"])) == n
