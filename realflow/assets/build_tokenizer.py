"""Build the tokenizer shipped in realflow/assets/tokenizer/ (deterministically).

    python -m realflow.assets.build_tokenizer [OUT_DIR]

Byte-level BPE trained with the `tokenizers` library on a small corpus generated
here from a fixed seed: arithmetic lines, instruction/chat-like English and a
little Python. Every digit is pre-tokenized on its own, so numbers are always one
token per digit (`"864+394="` is 8 tokens) and arithmetic stays learnable by tiny
models. Any ASCII text round-trips through encode/decode (byte-level alphabet).

Special tokens: `<|pad|>` (padding), `<|endoftext|>` (EOS), `<|im_start|>` and
`<|im_end|>` (ChatML turns). The ChatML chat template lives in
tokenizer_config.json and supports `add_generation_prompt`.

What this module deliberately does not do: download anything, or produce a
tokenizer fit for real models. It exists so tests, the quickstart and the
arithmetic benchmark run offline with a vocabulary small enough for ~1M-parameter
models. Running it twice writes byte-identical files (tests check this against
the shipped copy).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 1024
SEED = 20261122
PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, EOS, IM_START, IM_END]  # ids 0..3 in this order

# ChatML. The generation prompt opens an assistant turn and stops there.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_OUT = Path(__file__).resolve().parent / "tokenizer"

# ----------------------------------------------------------------------- corpus

_SENTENCES = """\
You are a helpful assistant.
Please answer the question below.
Think step by step and give the final answer.
The answer is the number after the equals sign.
What is the sum of the two numbers?
What is the difference between the two numbers?
What is the product of the two numbers?
Add the numbers and write the result.
Subtract the second number from the first one.
Multiply the numbers together.
Write a short story about a robot who learns to paint.
Summarize the following paragraph in one sentence.
Translate the sentence into French.
Explain why the sky is blue.
Give three reasons to learn a new language.
Write a function that returns the largest element of a list.
Describe the water cycle for a young student.
How many days are there in a leap year?
List the planets of the solar system in order.
Can you help me plan a trip to the mountains?
Sure, here is a plan for your trip.
I am sorry, but I cannot help with that request.
Thank you for your question.
Let me know if you have any other questions.
The quick brown fox jumps over the lazy dog.
Reinforcement learning from human feedback aligns a language model with preferences.
The reward model scores each response to the prompt.
The policy generates several answers for every prompt.
The critic estimates the value of each token.
A training step updates the weights of the model.
The dataset holds prompts, answers and solutions.
Each sample carries a list of sequence lengths.
Data parallel workers receive different shards of the batch.
The learning rate decays after the warm up steps.
The loss goes down while the accuracy goes up.
This is a test of the tokenizer.
Hello, world!
Good morning. How are you today?
I am fine, thank you. And you?
The weather is nice and the sun is shining.
It was raining yesterday, so we stayed at home.
She reads a book every week.
They walked to the station and took the train.
He wrote a letter to his friend.
We should check the results before we publish them.
Correct answers receive a reward of one; wrong answers receive zero.
"""

_SUBJECTS = ["the model", "a student", "the teacher", "my friend", "the assistant",
             "the user", "our team", "the program", "a small robot", "the worker",
             "the scheduler", "every process", "the master", "this function", "the agent"]
_VERBS = ["computes", "reads", "writes", "checks", "learns", "explains", "answers",
          "generates", "solves", "returns", "counts", "sorts", "prints", "compares",
          "remembers", "finds", "builds", "trains", "evaluates", "describes"]
_OBJECTS = ["the answer", "a long sentence", "the numbers", "a simple problem",
            "the next token", "the final result", "a short list", "the question",
            "every prompt", "the reward", "a new story", "the data", "the gradient",
            "the weights", "a good example", "the sum", "the difference", "the product"]
_TAILS = ["quickly", "carefully", "again", "today", "step by step", "for the test",
          "without errors", "in the morning", "with great care", "before the deadline",
          "after the update", "one digit at a time", "in a few seconds", "every day"]
_ROLES = ["system", "user", "assistant"]

_CODE = """\
def add(a, b):
    return a + b

def multiply(a, b):
    return a * b

def largest(items):
    best = items[0]
    for item in items[1:]:
        if item > best:
            best = item
    return best

import sys

for line in sys.stdin:
    x, y = map(int, line.split())
    print(x + y)

class Counter:
    def __init__(self):
        self.count = 0

    def increment(self):
        self.count += 1
        return self.count

result = [i * i for i in range(10) if i % 2 == 0]
print("result:", result)
"""


def _number(rng: random.Random) -> int:
    digits = rng.randint(1, 4)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _arithmetic_line(rng: random.Random) -> str:
    a, b = _number(rng), _number(rng)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    form = rng.randrange(3)
    if form == 0:
        return f"{a}{op}{b}={value}"
    if form == 1:
        return f"{a} {op} {b} = {value}"
    return f"Question: what is {a} {op} {b}? Answer: {value}"


def _english_line(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?"])


def corpus(seed: int = SEED) -> list[str]:
    """The training text, one document per entry; identical for identical seeds."""
    rng = random.Random(seed)
    sentences = _SENTENCES.splitlines()
    docs: list[str] = []
    docs += [_arithmetic_line(rng) for _ in range(2000)]
    docs += [_english_line(rng) for _ in range(600)]
    docs += sentences * 4
    for _ in range(300):  # chat-shaped text, without the special tokens themselves
        role = rng.choice(_ROLES)
        docs.append(f"{role}\n{rng.choice(sentences)}\n")
    docs += [_CODE] * 8
    return docs


# ------------------------------------------------------------------------ build


def build(seed: int = SEED, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE tokenizer on `corpus(seed)`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    return tok


def tokenizer_config() -> dict:
    """What transformers reads next to tokenizer.json."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 4096,
        "pad_token": PAD,
        "eos_token": EOS,
        "bos_token": None,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "chat_template": CHAT_TEMPLATE,
    }


def write(out_dir: str | Path = _OUT, seed: int = SEED, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train and write tokenizer.json + tokenizer_config.json into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build(seed, vocab_size)
    # Compact JSON keeps the shipped file small; sort_keys is not used because the
    # vocab order is part of the format.
    (out / "tokenizer.json").write_text(tok.to_str(pretty=False) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(write(sys.argv[1] if len(sys.argv) > 1 else _OUT))
