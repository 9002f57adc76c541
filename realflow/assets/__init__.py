"""Files shipped inside the realflow package so that everything runs offline.

`tokenizer/` holds a small byte-level BPE tokenizer (one token per digit, ChatML
chat template, pad/eos set) built by `realflow.assets.build_tokenizer`. This
package imports nothing of realflow: it is data plus the code that regenerates it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["tokenizer_path", "load_tokenizer"]

_TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"


def tokenizer_path() -> str:
    """Directory of the bundled tokenizer, for `AutoTokenizer.from_pretrained`."""
    return str(_TOKENIZER_DIR)


def load_tokenizer() -> PreTrainedTokenizerFast:
    """The bundled tokenizer as a transformers `PreTrainedTokenizerFast`."""
    from transformers import AutoTokenizer  # heavy; only paid by callers that load

    return AutoTokenizer.from_pretrained(tokenizer_path())
