"""`hf_classifier`: rewards from any local Hugging Face sequence classifier.

Use with a model-free role: the interface loads `AutoModelForSequenceClassification`
from the local directory `path` on its first call (and keeps it), so the role's
own weights are not involved. Each sequence of packed_input_ids is decoded with
the policy's tokenizer (special tokens skipped), re-tokenised with the
classifier's tokenizer (the one in `tokenizer_path`, else in `path`, else the
policy's) and scored in batches of `batch_size`:

    rewards = logits[:, label_index] * output_scaling + output_bias

one float32 per sequence. With `include_prompt=False` only the completion (the
tokens where prompt_mask is False; then prompt_mask is an input too) is scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import ConfigError, InterfaceError
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.interfaces.common import IDS, output_like, require_keys

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _has_tokenizer(path: str) -> bool:
    return any((Path(path) / f).is_file() for f in _TOKENIZER_FILES)


@register_interface("hf_classifier")
@dataclass
class HFClassifierReward(ModelInterface):
    """Score sequences with a local AutoModelForSequenceClassification."""

    path: str = ""
    tokenizer_path: str | None = None
    label_index: int = 0
    output_scaling: float = 1.0
    output_bias: float = 0.0
    batch_size: int = 16
    max_length: int | None = None
    include_prompt: bool = True
    device: str = "cpu"
    _loaded: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("hf_classifier: give `path`, a local directory holding a sequence classifier")
        if self.batch_size < 1:
            raise ConfigError(f"hf_classifier: batch_size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"hf_classifier: max_length must be >= 1 or None, got {self.max_length}")

    def _load(self, policy_tokenizer: Any) -> tuple[Any, Any]:
        if self._loaded is None:
            if not Path(self.path).is_dir():
                raise InterfaceError(f"hf_classifier: path '{self.path}' is not a directory")
            model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self.device).eval()
            tok_dir = self.tokenizer_path or (self.path if _has_tokenizer(self.path) else None)
            tok = AutoTokenizer.from_pretrained(tok_dir) if tok_dir else policy_tokenizer
            if tok is None:
                raise InterfaceError(f"hf_classifier: '{self.path}' has no tokenizer and the role has none")
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tok.pad_token_id
            n = model.config.num_labels
            if not 0 <= self.label_index < n:
                raise InterfaceError(f"hf_classifier: label_index={self.label_index} but '{self.path}' has {n} labels")
            self._loaded = (model, tok)
        return self._loaded

    def _texts(self, tokenizer: Any, data: SequenceSample) -> list[str]:
        seqs = data.data[IDS].split(data.flat_seqlens(IDS))
        if not self.include_prompt:
            require_keys(data, ["prompt_mask"], "hf_classifier.inference")
            masks = data.data["prompt_mask"].split(data.flat_seqlens(IDS))
            seqs = tuple(s[~m] for s, m in zip(seqs, masks))
        return [tokenizer.decode(s.tolist(), skip_special_tokens=True) for s in seqs]

    @torch.no_grad()
    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        require_keys(data, [IDS], "hf_classifier.inference")
        if model.tokenizer is None:
            raise InterfaceError("hf_classifier.inference: the role has no tokenizer to decode sequences with")
        classifier, tok = self._load(model.tokenizer)
        texts = self._texts(model.tokenizer, data)
        scores = []
        for start in range(0, len(texts), self.batch_size):
            enc = tok(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                      truncation=self.max_length is not None, max_length=self.max_length)
            logits = classifier(**enc.to(self.device)).logits  # (batch, num_labels)
            scores.append(logits[:, self.label_index].float().cpu())
        rewards = torch.cat(scores) * self.output_scaling + self.output_bias
        return output_like(data, {"rewards": (rewards.float(), "sequence")})
