"""Verifiable math rewards: `math_verify` (any math answer) and `arithmetic` (the bundled task).

`math_verify` grades a completion against the reference answer of the sample
(metadata field `answer`, or any of `solutions`, as the `prompt` / `math_code`
datasets give them):

1. answer extraction: the text after the last `####` (GSM8K style), else the
   content of the last `\\boxed{...}` (or `\\fbox{...}`), else the whole completion;
   the reference goes through the same extraction;
2. equivalence: equal after light normalisation (spaces, `$`, thousands commas,
   a trailing period), or equal for Hugging Face's `math-verify` (numbers,
   fractions, LaTeX expressions, sets, intervals; compared symbolically).

`arithmetic` uses `realflow.tasks.arithmetic.check_answer` (the leading integer of
the completion must equal `answer`).

Both are also registered as reward functions (`math_verify`, `arithmetic`) for
`reward_fn`. Rewards: `correct_reward` if right, `wrong_reward` otherwise.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from math_verify import parse, verify

from realflow.api.errors import ConfigError
from realflow.api.interface import register_interface
from realflow.interfaces.reward_fn import Completion, TextReward, register_reward_function
from realflow.tasks.arithmetic import check_answer

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces, or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def extract_answer(text: str) -> str:
    """The final answer of a solution text (module docstring, step 1)."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else ""
    boxed = last_boxed(text)
    return boxed if boxed is not None else text.strip()


def _normalize(text: str) -> str:
    text = text.strip().strip("$").strip().rstrip(".")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,234 -> 1234
    return re.sub(r"\s+", "", text)


def _parse(answer: str, timeouts: bool) -> list:
    # Wrapping in \boxed{} makes math-verify read the extracted answer as a whole.
    return parse(f"\\boxed{{{answer}}}", parsing_timeout=5 if timeouts else None)


def answers_match(completion: str, reference: str) -> bool:
    """Whether `completion`'s final answer equals `reference`'s (module docstring)."""
    pred, gold = extract_answer(completion), extract_answer(str(reference))
    if not pred or not gold:
        return False
    if _normalize(pred) == _normalize(gold):
        return True
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    timeouts = threading.current_thread() is threading.main_thread()
    gold_parsed, pred_parsed = _parse(gold, timeouts), _parse(pred, timeouts)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=5 if timeouts else None))


def _references(answer: Any, solutions: Any) -> list[str]:
    refs = [] if answer is None else [str(answer)]
    if isinstance(solutions, (list, tuple)):
        refs += [str(s) for s in solutions]
    elif solutions is not None:
        refs.append(str(solutions))
    return refs


@register_reward_function("math_verify")
def math_verify_reward(prompt: str, completion: str, answer: Any = None, solutions: Any = None, **fields: Any) -> float:
    """1.0 if the completion's answer matches `answer` or any of `solutions`, else 0.0."""
    return float(any(answers_match(completion, ref) for ref in _references(answer, solutions)))


@register_reward_function("arithmetic")
def arithmetic_reward(prompt: str, completion: str, answer: Any = None, **fields: Any) -> float:
    """The bundled arithmetic task's grader (realflow.tasks.arithmetic.check_answer)."""
    return 0.0 if answer is None else check_answer(completion, str(answer))


@dataclass
class _Graded(TextReward):
    correct_reward: float = 1.0
    wrong_reward: float = 0.0

    def __post_init__(self) -> None:
        if self.correct_reward <= self.wrong_reward:
            raise ConfigError(f"{self.name}: correct_reward ({self.correct_reward}) must exceed "
                              f"wrong_reward ({self.wrong_reward})")

    def grade(self, item: Completion) -> float:
        raise NotImplementedError

    def score(self, items: list[Completion]) -> list[float]:
        return [self.correct_reward if self.grade(it) > 0 else self.wrong_reward for it in items]


@register_interface("math_verify")
@dataclass
class MathVerifyReward(_Graded):
    """Math answers checked by extraction + math-verify; reads metadata `answer` / `solutions`."""

    name = "math_verify"

    def grade(self, item: Completion) -> float:
        return math_verify_reward(item.prompt, item.completion, item.fields.get("answer"),
                                  item.fields.get("solutions"))


@register_interface("arithmetic")
@dataclass
class ArithmeticReward(_Graded):
    """The bundled arithmetic task; reads metadata `answer`."""

    name = "arithmetic"

    def grade(self, item: Completion) -> float:
        return arithmetic_reward(item.prompt, item.completion, item.fields.get("answer"))
