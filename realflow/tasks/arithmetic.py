"""The bundled arithmetic task: verifiable problems like `"864+394="` -> `"1258"`.

Problems are multi-digit addition, subtraction and multiplication. `Difficulty`
says how many digits each operand of each operator has (0 switches an operator
off). The default mixes 3-digit addition and subtraction with 2x2-digit
multiplication: a ~1M-parameter model learns the additions by SFT but not the
multiplications, which leaves room for RL to show a learning signal. The `easy`
preset is the 3-digit addition the TRL reference setup learned (REFERENCE.md).

Everything is deterministic by seed. Train and test are drawn without replacement
from one stream, so they never share a problem (`a+b` and `b+a` count as the same
problem, as do `a*b` and `b*a`). Subtraction keeps `a >= b`: answers are never
negative.

The prompt is the bare expression ending in `=` and the answer is the bare
number, so the bundled tokenizer sees one token per digit. `check_answer` grades
a completion by its leading integer (generation may run past the answer when it
is cut by max_new_tokens rather than EOS).

Writers produce every dataset format of realflow.api.dataset as JSONL:
`prompt_answer` (SFT pairs), `prompt` (prompt-only with the answer kept for the
reward), `rw_paired` (correct vs a plausible wrong answer) and `math_code`.
This module does not tokenize or train anything.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "DIFFICULTIES",
    "FILE_FOR_DATASET",
    "Difficulty",
    "Problem",
    "check_answer",
    "generate_problems",
    "math_code_records",
    "preference_records",
    "prompt_records",
    "sft_records",
    "wrong_answer",
    "write_arithmetic_task",
]

OPS = ("+", "-", "*")

# Which file of `write_arithmetic_task` each built-in dataset reads: the key prefix
# of its result, e.g. paths[f"{FILE_FOR_DATASET['prompt_answer']}_train"].
FILE_FOR_DATASET = {"prompt_answer": "sft", "prompt": "prompt", "rw_paired": "rw", "math_code": "math_code"}


@dataclass(frozen=True)
class Difficulty:
    """Digits per operand for each operator; 0 leaves the operator out.

    An operator is drawn uniformly among the enabled ones for every problem, then
    both operands uniformly among numbers with exactly that many digits (1 digit
    means 0-9).
    """

    add: int = 3
    sub: int = 3
    mul: int = 2

    def __post_init__(self) -> None:
        for name in ("add", "sub", "mul"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 9:
                raise ValueError(f"Difficulty.{name} must be an int in 0..9 (digits), got {v!r}")
        if not self.ops:
            raise ValueError("Difficulty: every operator is switched off (all digits are 0)")

    @property
    def digits(self) -> dict[str, int]:
        """Enabled operators and their digit counts, e.g. {'+': 3, '-': 3, '*': 2}."""
        return {op: d for op, d in zip(OPS, (self.add, self.sub, self.mul)) if d > 0}

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(self.digits)

    @classmethod
    def parse(cls, spec: str | Difficulty) -> Difficulty:
        """A preset name (`easy`, `default`, `hard`) or `"add=3,sub=3,mul=2"`."""
        if isinstance(spec, Difficulty):
            return spec
        if spec in DIFFICULTIES:
            return DIFFICULTIES[spec]
        kwargs: dict[str, int] = {}
        for part in spec.split(","):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in ("add", "sub", "mul") or not value.strip().isdigit():
                raise ValueError(
                    f"difficulty {spec!r}: expected a preset {sorted(DIFFICULTIES)} or "
                    "'add=N,sub=N,mul=N' (omitted operators are off)"
                )
            kwargs[key] = int(value)
        return cls(**{"add": 0, "sub": 0, "mul": 0, **kwargs})


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(add=3, sub=0, mul=0),  # the TRL reference task
    "default": Difficulty(add=3, sub=3, mul=2),
    "hard": Difficulty(add=4, sub=4, mul=3),
}


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def answer(self) -> str:
        return str({"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op])

    @property
    def key(self) -> tuple[str, int, int]:
        """Identity for the no-overlap rule: commutative operators ignore order."""
        if self.op == "-":
            return (self.op, self.a, self.b)
        return (self.op, min(self.a, self.b), max(self.a, self.b))


def _bounds(digits: int) -> tuple[int, int]:
    return (0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _space(digits: int) -> int:
    """Distinct problems (by `Problem.key`) of one operator: pairs with a >= b."""
    lo, hi = _bounds(digits)
    n = hi - lo + 1
    return n * (n + 1) // 2


def generate_problems(
    n_train: int, n_test: int, seed: int, difficulty: str | Difficulty = "default"
) -> tuple[list[Problem], list[Problem]]:
    """`n_train` and `n_test` distinct problems; the test set is drawn first.

    Drawing the test set first from the seed's stream means growing `n_train`
    never changes the test set. An operator whose problems run out is dropped from
    the draw; asking for more problems than exist raises ValueError.
    """
    diff = Difficulty.parse(difficulty)
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    space = {op: _space(d) for op, d in diff.digits.items()}
    if n_train + n_test > sum(space.values()):
        raise ValueError(
            f"difficulty {diff} has {sum(space.values())} distinct problems "
            f"({space}); cannot draw n_train + n_test = {n_train + n_test}"
        )
    rng = random.Random(seed)
    seen: set[tuple[str, int, int]] = set()
    used = dict.fromkeys(space, 0)
    ops = list(diff.ops)
    out: list[Problem] = []
    while len(out) < n_train + n_test:
        op = rng.choice(ops)
        lo, hi = _bounds(diff.digits[op])
        while True:  # redraw within the operator so the operator mix stays uniform
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            p = Problem(max(a, b), op, min(a, b)) if op == "-" else Problem(a, op, b)
            if p.key not in seen:
                break
        seen.add(p.key)
        out.append(p)
        used[op] += 1
        if used[op] == space[op]:
            ops.remove(op)
    return out[n_test:], out[:n_test]


_LEADING_INT = re.compile(r"\s*(-?\d+)")


def check_answer(completion: str, answer: str) -> float:
    """1.0 if the leading integer of `completion` equals `answer`, else 0.0.

    Leading whitespace and whatever follows the number (EOS text, more tokens)
    are ignored; digits are not. `"1258<|endoftext|>"` and `" 1258 foo"` are
    right, `"12580"` and `"answer: 1258"` are wrong.
    """
    m = _LEADING_INT.match(completion)
    if m is None:
        return 0.0
    try:
        return 1.0 if int(m.group(1)) == int(answer) else 0.0
    except ValueError:  # a malformed reference answer is a caller bug; grade as wrong
        return 0.0


def wrong_answer(problem: Problem, rng: random.Random) -> str:
    """A plausible mistake: one digit changed, or off by a power of ten (a carry)."""
    right = int(problem.answer)
    text = problem.answer
    while True:
        if rng.random() < 0.5:
            i = rng.randrange(len(text))
            choices = [d for d in "0123456789" if d != text[i] and not (i == 0 and d == "0" and len(text) > 1)]
            cand = int(text[:i] + rng.choice(choices) + text[i + 1:])
        else:
            cand = right + rng.choice([-1, 1]) * 10 ** rng.randrange(max(1, len(text) - 1))
        if cand != right and cand >= 0:
            return str(cand)


# --------------------------------------------------------------------- records


def _ids(prefix: str, problems: list[Problem]) -> Iterable[tuple[str, Problem]]:
    width = max(6, len(str(len(problems))))
    return ((f"{prefix}-{i:0{width}d}", p) for i, p in enumerate(problems))


def sft_records(problems: list[Problem], prefix: str) -> list[dict[str, Any]]:
    """`prompt_answer` format: {"id", "prompt", "answer"}."""
    return [{"id": i, "prompt": p.prompt, "answer": p.answer} for i, p in _ids(prefix, problems)]


def prompt_records(problems: list[Problem], prefix: str) -> list[dict[str, Any]]:
    """`prompt` format for RL; `answer` rides along in metadata for the reward."""
    return [{"id": i, "prompt": p.prompt, "answer": p.answer} for i, p in _ids(prefix, problems)]


def preference_records(
    problems: list[Problem], prefix: str, seed: int, pairs_per_prompt: int = 1
) -> list[dict[str, Any]]:
    """`rw_paired` format: the right answer chosen against distinct wrong ones."""
    rng = random.Random(seed)
    out = []
    for i, p in _ids(prefix, problems):
        wrong: list[str] = []
        while len(wrong) < pairs_per_prompt:
            w = wrong_answer(p, rng)
            if w not in wrong:
                wrong.append(w)
        out.append({"id": i, "prompt": p.prompt, "chosen": [p.answer] * pairs_per_prompt, "rejected": wrong})
    return out


def math_code_records(problems: list[Problem], prefix: str) -> list[dict[str, Any]]:
    """`math_code` format with task "math" and the answer as the only solution."""
    return [
        {"qid": i, "prompt": p.prompt, "task": "math", "solutions": [p.answer]}
        for i, p in _ids(prefix, problems)
    ]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: processes writing the same task at
    once (workers of one run) never let a reader see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_arithmetic_task(
    out_dir: str | Path,
    n_train: int = 10000,
    n_test: int = 200,
    seed: int = 1,
    difficulty: str | Difficulty = "default",
    pairs_per_prompt: int = 1,
) -> dict[str, str]:
    """Write every format for both splits; returns {"<format>_<split>": path}.

    Formats: `sft`, `prompt`, `rw` (preference pairs), `math_code`; splits `train`
    and `test`, e.g. `paths["sft_train"]`. `task.json` records the arguments.
    """
    diff = Difficulty.parse(difficulty)
    train, test = generate_problems(n_train, n_test, seed, diff)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for split, problems in (("train", train), ("test", test)):
        prefix = f"arith-{split}"
        formats = {
            "sft": sft_records(problems, prefix),
            "prompt": prompt_records(problems, prefix),
            "rw": preference_records(problems, prefix, seed + (split == "test"), pairs_per_prompt),
            "math_code": math_code_records(problems, prefix),
        }
        for fmt, records in formats.items():
            paths[f"{fmt}_{split}"] = _write_jsonl(out / f"{fmt}_{split}.jsonl", records)
    manifest = {
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "difficulty": asdict(diff),
        "pairs_per_prompt": pairs_per_prompt,
        "files": {k: Path(v).name for k, v in paths.items()},
    }
    _write_atomic(out / "task.json", json.dumps(manifest, indent=2) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    """`python -m realflow.tasks.arithmetic OUT_DIR [--n-train N] ...`: write the task."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--difficulty", default="default",
                        help=f"a preset {sorted(DIFFICULTIES)} or 'add=N,sub=N,mul=N'")
    parser.add_argument("--pairs-per-prompt", type=int, default=1)
    args = parser.parse_args(argv)
    paths = write_arithmetic_task(args.out_dir, args.n_train, args.n_test, args.seed, args.difficulty,
                                  args.pairs_per_prompt)
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
