"""`code_verify`: run a generated program on the sample's test cases, in a sandbox.

The program is the last fenced code block of the completion (```python, ```py or
a bare ```), else the whole completion. Test cases come from the metadata field
`input_output` (the `math_code` dataset's format: an object, or a JSON string of
one, with equal-length `inputs` and `outputs` lists of strings): each input is
fed on stdin and the case passes when the program exits with status 0 and its
stdout equals the expected output, compared line by line with trailing
whitespace and trailing blank lines ignored. Call-based tests (APPS `fn_name`)
are not supported.

Every run goes through realflow.interfaces.sandbox (temp dir, memory / CPU /
process / file-size limits, no network when `unshare` works here). Reward:
`correct_reward` when every case passes (with `partial_credit`, the passing
fraction scaled between `wrong_reward` and `correct_reward`), `wrong_reward`
otherwise or when a sample has no tests. Cases of one sample run in order and stop
at the first failure; samples run `n_workers` at a time.
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from realflow.api.errors import ConfigError
from realflow.api.interface import register_interface
from realflow.interfaces.reward_fn import Completion, TextReward, register_reward_function
from realflow.interfaces.sandbox import SandboxLimits, run_python

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


def extract_code(completion: str) -> str:
    """The last fenced code block, else the whole completion."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def _same_output(got: str, expected: str) -> bool:
    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.strip("\n").splitlines()]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(got) == lines(expected)


def parse_test_cases(input_output: Any) -> list[tuple[str, str]]:
    """(stdin, expected stdout) pairs of an `input_output` field; [] when absent or malformed."""
    if isinstance(input_output, str):
        try:
            input_output = json.loads(input_output)
        except json.JSONDecodeError:
            return []
    if not isinstance(input_output, dict):
        return []
    inputs, outputs = input_output.get("inputs"), input_output.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        return []
    return [(str(i), str(o)) for i, o in zip(inputs, outputs)]


def pass_fraction(code: str, cases: list[tuple[str, str]], limits: SandboxLimits, python: str | None = None) -> float:
    """Fraction of `cases` passed, running them in order until the first failure."""
    for k, (stdin, expected) in enumerate(cases):
        result = run_python(code, stdin, limits, python)
        if not (result.ok and _same_output(result.stdout, expected)):
            return k / len(cases)
    return 1.0 if cases else 0.0


@register_reward_function("code_verify")
def code_verify_reward(prompt: str, completion: str, input_output: Any = None, **fields: Any) -> float:
    """1.0 if the completion's program passes every test case (default sandbox limits), else 0.0."""
    cases = parse_test_cases(input_output)
    return float(bool(cases) and pass_fraction(extract_code(completion), cases, SandboxLimits()) == 1.0)


@register_interface("code_verify")
@dataclass
class CodeVerifyReward(TextReward):
    """Sandboxed test-case reward; limits as in realflow.interfaces.sandbox.SandboxLimits."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    max_processes: int = 8
    max_file_mb: int = 16
    require_isolation: bool = False
    python: str | None = None
    n_workers: int = 2
    partial_credit: bool = False
    correct_reward: float = 1.0
    wrong_reward: float = 0.0
    limits: SandboxLimits = field(init=False, repr=False, default=None)  # type: ignore[assignment]
    name = "code_verify"

    def __post_init__(self) -> None:
        self.limits = SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                                    max_processes=self.max_processes, max_file_mb=self.max_file_mb,
                                    require_isolation=self.require_isolation)
        if not isinstance(self.n_workers, int) or self.n_workers < 1:
            raise ConfigError(f"code_verify: n_workers must be an int >= 1, got {self.n_workers!r}")
        if self.correct_reward <= self.wrong_reward:
            raise ConfigError(f"code_verify: correct_reward ({self.correct_reward}) must exceed "
                              f"wrong_reward ({self.wrong_reward})")

    def _one(self, item: Completion) -> float:
        cases = parse_test_cases(item.fields.get("input_output"))
        if not cases:
            return self.wrong_reward
        frac = pass_fraction(extract_code(item.completion), cases, self.limits, self.python)
        if not self.partial_credit:
            frac = float(frac == 1.0)
        return self.wrong_reward + frac * (self.correct_reward - self.wrong_reward)

    def score(self, items: list[Completion]) -> list[float]:
        with ThreadPoolExecutor(max_workers=self.n_workers) as pool:
            return list(pool.map(self._one, items))
