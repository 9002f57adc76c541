"""Rule-based and classifier rewards on hand-made completions."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
import transformers
from interfaces_testlib import rollout_batch

import realflow.interfaces  # noqa: F401
from realflow.api.data import MicroBatchSpec
from realflow.api.dfg import ModelName
from realflow.api.errors import ConfigError, InterfaceError, RegistryError
from realflow.api.interface import Model, make_interface
from realflow.interfaces import register_reward_function, resolve_reward_function
from realflow.interfaces.code_reward import extract_code
from realflow.interfaces.math_reward import answers_match, extract_answer, last_boxed


def _free(tokenizer) -> Model:
    """A model-free role: no module, no engine, just the tokenizer."""
    return Model(ModelName("reward"), None, tokenizer, None)


def _rewards(interface, tokenizer, prompts, completions, **metadata):
    data = rollout_batch(tokenizer, prompts, completions, metadata={k: list(v) for k, v in metadata.items()})
    out = interface.inference(_free(tokenizer), data, MicroBatchSpec())
    assert out.keys == {"rewards"} and out.dtypes["rewards"] == torch.float32
    assert out.seqlens["rewards"] == [[1] * len(c) for c in completions]
    return out.data["rewards"].tolist()


@pytest.mark.parametrize("text,answer", [
    ("so the total is 72.\n#### 72", "72"),
    ("#### 1,234 apples", "1,234 apples"),
    ("we get \\boxed{\\frac{1}{2}} and then \\boxed{3}", "3"),
    ("nested \\boxed{\\frac{a}{\\sqrt{2}}} done", "\\frac{a}{\\sqrt{2}}"),
    ("no marker 17", "no marker 17"),
])
def test_answer_extraction(text, answer):
    assert extract_answer(text) == answer


def test_last_boxed_needs_balanced_braces():
    assert last_boxed("\\boxed{1") is None and last_boxed("\\fbox{2}") == "2"


@pytest.mark.parametrize("completion,reference,ok", [
    ("The answer is \\boxed{\\frac{1}{2}}.", "0.5", True),
    ("#### 0.5", "\\frac{1}{2}", True),
    ("#### 1,234", "1234", True),
    ("$x = 2$ so \\boxed{2}", "Janet has 2 left.\n#### 2", True),
    ("\\boxed{\\sqrt{4}}", "2", True),
    ("\\boxed{3}", "4", False),
    ("#### 12", "120", False),
    ("", "1", False),
])
def test_math_answers_match(completion, reference, ok):
    assert answers_match(completion, reference) is ok


def test_math_verify_and_arithmetic_interfaces(tokenizer):
    prompts = ["12+30=", "7*6="]
    completions = [["42", "43"], ["42", "24"]]
    assert _rewards(make_interface("arithmetic"), tokenizer, prompts, completions,
                    answer=["42", "42"]) == [1.0, 0.0, 1.0, 0.0]
    mv = make_interface("math_verify", correct_reward=5.0, wrong_reward=-1.0)
    assert _rewards(mv, tokenizer, prompts, completions, answer=[None, "42"], solutions=[["43", "x"], None]) == \
        [-1.0, 5.0, 5.0, -1.0]


def test_reward_fn_calls_user_functions_with_the_dataset_fields(tokenizer, tmp_path):
    seen = []

    @register_reward_function("test_length", overwrite=True)
    def length(prompt, completion, **fields):
        seen.append((prompt, completion, fields))
        return len(completion)

    user_file = tmp_path / "my_rewards.py"
    user_file.write_text("def starts_with_4(prompt, completion, answer, **fields):\n"
                         "    return float(completion.startswith('4'))\n")
    rf = make_interface("reward_fn", functions=["test_length", f"{user_file}:starts_with_4",
                                                "realflow.interfaces.math_reward.arithmetic_reward"],
                        weights=[0.5, 10.0, 100.0])
    got = _rewards(rf, tokenizer, ["12+30="], [["42", "7"]], answer=["42"], task=["math"])
    assert got == [0.5 * 2 + 10 + 100, 0.5 * 1]
    assert seen[0] == ("12+30=", "42", {"answer": "42", "task": "math"})  # EOS stripped, fields as keywords


def test_reward_fn_errors_name_the_function_and_sample(tokenizer):
    register_reward_function("test_broken", lambda prompt, completion, **f: "high", overwrite=True)
    with pytest.raises(InterfaceError, match=r"'test_broken' returned 'high' for sample 's0'"):
        _rewards(make_interface("reward_fn", functions=["test_broken"]), tokenizer, ["1+1="], [["2"]])
    register_reward_function("test_raises", lambda prompt, completion, **f: 1 / 0, overwrite=True)
    with pytest.raises(InterfaceError, match="'test_raises' failed on sample 's0': ZeroDivisionError"):
        _rewards(make_interface("reward_fn", functions="test_raises"), tokenizer, ["1+1="], [["2"]])
    with pytest.raises(RegistryError, match="unknown reward function 'nope'; registered: .*arithmetic"):
        resolve_reward_function("nope")
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        resolve_reward_function("realflow.interfaces.math_reward:missing")
    with pytest.raises(InterfaceError, match="2 weights for 1 functions"):
        make_interface("reward_fn", functions=["arithmetic"], weights=[1.0, 2.0])


def test_extract_code_takes_the_last_fenced_block():
    text = "first\n```python\nprint(1)\n```\nthen\n```py\nprint(2)\n```\n"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("print(3)") == "print(3)"


def test_code_verify_runs_the_test_cases(tokenizer):
    cases = json.dumps({"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]})
    right = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    half = "a, b = map(int, input().split())\nprint(3)"
    crash = "raise SystemExit(1)"
    verify = make_interface("code_verify", timeout_s=5.0)
    fields = dict(input_output=[cases, {"inputs": [], "outputs": []}])
    assert _rewards(verify, tokenizer, ["sum", "none"], [[right, half, crash], [right]], **fields) == [1, 0, 0, 0]
    partial = make_interface("code_verify", partial_credit=True, n_workers=1)
    assert _rewards(partial, tokenizer, ["sum"], [[right, half]], input_output=[cases]) == [1.0, 0.5]


def test_hf_classifier_scores_like_transformers(tokenizer, tmp_path):
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                     num_labels=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    classifier = transformers.GPT2ForSequenceClassification(config).eval()
    classifier.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    hf = make_interface("hf_classifier", path=str(tmp_path / "rm"), label_index=1, output_scaling=2.0,
                        output_bias=0.5, batch_size=2)
    prompts, completions = ["12+30=", "7+1="], [["42", "1"], ["8"]]
    got = _rewards(hf, tokenizer, prompts, completions)
    texts = ["12+30=42", "12+30=1", "7+1=8"]
    with torch.no_grad():
        want = [float(classifier(**tokenizer(t, return_tensors="pt")).logits[0, 1]) * 2 + 0.5 for t in texts]
    assert got == pytest.approx(want, abs=1e-5)
    completion_only = make_interface("hf_classifier", path=str(tmp_path / "rm"), include_prompt=False)
    with torch.no_grad():
        want = [float(classifier(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in ["42", "1", "8"]]
    assert _rewards(completion_only, tokenizer, prompts, completions) == pytest.approx(want, abs=1e-5)
    missing = make_interface("hf_classifier", path=str(tmp_path / "nothing"))
    with pytest.raises(InterfaceError, match="is not a directory"):
        _rewards(missing, tokenizer, prompts, completions)


def test_a_reward_file_is_imported_once(tmp_path):
    user_file = tmp_path / "graph_and_rewards.py"
    user_file.write_text(textwrap.dedent("""
        from __future__ import annotations
        from dataclasses import dataclass

        LOADS = []
        LOADS.append(1)

        @dataclass
        class Settings:
            scale: float = 2.0

        def scaled(prompt, completion, **fields):
            return Settings().scale * len(LOADS)
    """))
    first = resolve_reward_function(f"{user_file}:scaled")
    second = resolve_reward_function(f"{user_file}:scaled")
    assert first is second and first(prompt="", completion="") == 2.0
