"""The bundled tokenizer: loadable offline, per-digit, round-trips ASCII, ChatML template."""
from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from realflow.assets import build_tokenizer, load_tokenizer, tokenizer_path


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_loads_with_auto_tokenizer_and_specials(tok):
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert isinstance(AutoTokenizer.from_pretrained(tokenizer_path()), PreTrainedTokenizerFast)
    assert (tok.pad_token, tok.pad_token_id) == ("<|pad|>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 1)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [2, 3]
    assert 512 <= len(tok) <= 1024


def test_no_special_tokens_added_by_default(tok):
    assert tok("12+3=")["input_ids"] == tok.encode("12+3=", add_special_tokens=False)
    assert tok.eos_token_id not in tok.encode("hello world")


@pytest.mark.parametrize("text", ["864+394=", "1258", "0", "99999*12=", "x = 1000 - 7"])
def test_every_digit_is_its_own_token(tok, text):
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(len(p) == 1 for p in digits), pieces
    assert "".join(digits) == "".join(c for c in text if c.isdigit())


def test_arithmetic_prompt_is_one_token_per_character(tok):
    assert len(tok.encode("864+394=")) == 8
    assert len(tok.encode("1258")) == 4


def test_ascii_round_trip(tok):
    rng = random.Random(0)
    alphabet = string.printable  # letters, digits, punctuation, whitespace
    texts = ["", " ", "Hello, world!", "  leading and trailing  ", "a\n\n\tb\r\n", "def f(x):\n    return x"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(200)]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text, repr(text)


def test_chat_template_chatml_with_generation_prompt(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2="}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n1+2=<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert plain == rendered[: -len("<|im_start|>assistant\n")]
    ids = tok.encode(rendered, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2


def test_builder_is_deterministic_and_matches_shipped_files(tmp_path: Path):
    build_tokenizer.write(tmp_path)
    shipped = Path(tokenizer_path())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    assert (shipped / "tokenizer.json").stat().st_size < 200_000
