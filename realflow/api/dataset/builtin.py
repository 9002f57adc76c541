"""Built-in datasets: `prompt_answer` (SFT), `prompt` (RL) and `rw_paired` (preferences).

Record formats (one JSON object each; `id` is a string or an integer, unique):

    prompt_answer  {"id": "a1", "prompt": "864+394=", "answer": "1258"}
    prompt         {"id": "a1", "prompt": "864+394=", "answer": "1258", ...}
                   or {"id": "c1", "messages": [{"role": "user", "content": "..."}], ...}
    rw_paired      {"id": "a1", "prompt": "864+394=", "chosen": ["1258"], "rejected": ["1358"]}

What each sample holds:
- prompt_answer: `packed_input_ids` = prompt + answer + EOS and `prompt_mask` (bool,
  True on prompt tokens: the loss goes on the answer and the EOS). `max_length`
  bounds the whole sequence.
- prompt: `packed_prompts` and, in metadata, every field of the record but the id
  (so rewards see answers, solutions, test cases); fields a record lacks are None,
  so all samples carry the same metadata keys. Chat `messages` are rendered with
  the tokenizer's chat template and `add_generation_prompt=True`. `max_length`
  bounds the prompt.
- rw_paired: `packed_input_ids` holding, per pair, prompt + chosen + EOS then
  prompt + rejected + EOS, for the first `max_pairs_per_prompt` pairs (seqlens
  [c1, r1, c2, r2, ...]), and `prompt_lens` (one value per sample). `max_length`
  bounds the longest of those sequences.

Prompts and answers are tokenized separately (no special tokens added) and
concatenated, so the prompt tokens are exactly what generation sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

import torch

from realflow.api.data import SequenceSample
from realflow.api.dataset.common import TokenizedDataset, encode, prepare, require_tokenizer, union_metadata
from realflow.api.dataset.loaders import Source, read_records
from realflow.api.dataset.records import Record
from realflow.api.dataset.registry import DatasetUtility, check_arg, register_dataset

__all__ = ["PairedRewardDataset", "PromptAnswerDataset", "PromptDataset", "render_prompts"]


# ------------------------------------------------------------------ prompt_answer


@dataclass(frozen=True)
class _SFTItem:
    id: Hashable
    input_ids: list[int]
    prompt_len: int


class PromptAnswerDataset(TokenizedDataset[_SFTItem]):
    """SFT pairs: `packed_input_ids` + `prompt_mask`, EOS appended."""

    name = "prompt_answer"

    def __init__(self, util: DatasetUtility, source: Source, max_length: int | None = None) -> None:
        tok = require_tokenizer(self.name, util, eos=True)
        records = read_records(source)
        prompts = [r.text("prompt", allow_empty=False) for r in records]
        answers = [r.text("answer") for r in records]
        p_ids, a_ids = encode(tok, prompts), encode(tok, answers)
        eos = tok.eos_token_id
        items = [_SFTItem(r.id(), p + a + [eos], len(p)) for r, p, a in zip(records, p_ids, a_ids)]
        lengths = [len(it.input_ids) for it in items]
        super().__init__(util, prepare(self.name, util, records[0].source, items, lengths, max_length))

    def _id(self, item: _SFTItem) -> Hashable:
        return item.id

    def _sample(self, item: _SFTItem) -> SequenceSample:
        n = len(item.input_ids)
        mask = torch.zeros(n, dtype=torch.bool)  # (n,)
        mask[: item.prompt_len] = True
        return SequenceSample.from_default(
            ids=[item.id],
            seqlens=[n],
            data={"packed_input_ids": torch.tensor(item.input_ids, dtype=torch.long), "prompt_mask": mask},
        )


# ------------------------------------------------------------------------- prompt


def render_prompts(tokenizer: Any, records: list[Record]) -> list[str]:
    """Each record's prompt text: `prompt`, or `messages` through the chat template."""
    out = []
    for r in records:
        if r.has("messages"):
            if r.has("prompt"):
                raise r.error("give either 'prompt' or 'messages', not both", "messages")
            messages = r.messages("messages")
            try:
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # e.g. a tokenizer without a chat template
                raise r.error(f"cannot render with the tokenizer's chat template: {e}", "messages") from e
            out.append(text)
        elif not r.has("prompt"):
            raise r.error("missing field (give 'prompt' or chat 'messages')", "prompt")
        else:
            out.append(r.text("prompt", allow_empty=False))
    return out


@dataclass(frozen=True)
class _PromptItem:
    id: Hashable
    prompt_ids: list[int]
    metadata: dict[str, Any]


class PromptDataset(TokenizedDataset[_PromptItem]):
    """RL prompts: `packed_prompts`, other record fields in metadata."""

    name = "prompt"
    id_field = "id"

    def __init__(self, util: DatasetUtility, source: Source, max_length: int | None = None) -> None:
        tok = require_tokenizer(self.name, util)
        records = read_records(source, id_field=self.id_field)
        for r in records:
            self._check(r)
        prompt_ids = encode(tok, render_prompts(tok, records))
        meta_keys = union_metadata([r.fields for r in records], exclude={self.id_field})
        items = [
            _PromptItem(r.id(self.id_field), ids, {k: r.fields.get(k) for k in meta_keys})
            for r, ids in zip(records, prompt_ids)
        ]
        lengths = [len(it.prompt_ids) for it in items]
        self.metadata_keys = meta_keys
        super().__init__(util, prepare(self.name, util, records[0].source, items, lengths, max_length))

    def _check(self, record: Record) -> None:
        """Extra per-record checks of subclasses (the prompt itself is checked already)."""

    def _id(self, item: _PromptItem) -> Hashable:
        return item.id

    def _sample(self, item: _PromptItem) -> SequenceSample:
        return SequenceSample.from_default(
            ids=[item.id],
            seqlens=[len(item.prompt_ids)],
            data={"packed_prompts": torch.tensor(item.prompt_ids, dtype=torch.long)},
            metadata={k: [v] for k, v in item.metadata.items()},
        )


# ---------------------------------------------------------------------- rw_paired


@dataclass(frozen=True)
class _PairItem:
    id: Hashable
    prompt_len: int
    seqs: list[list[int]]  # chosen_1, rejected_1, chosen_2, rejected_2, ...


class PairedRewardDataset(TokenizedDataset[_PairItem]):
    """Preference pairs: up to `max_pairs_per_prompt` (chosen, rejected) per prompt."""

    name = "rw_paired"

    def __init__(self, util: DatasetUtility, source: Source, max_length: int | None = None,
                 max_pairs_per_prompt: int = 2) -> None:
        check_arg(self.name, "max_pairs_per_prompt", max_pairs_per_prompt, int, minimum=1)
        tok = require_tokenizer(self.name, util, eos=True)
        records = read_records(source)
        prompts, answers, n_pairs = [], [], []
        for r in records:
            prompts.append(r.text("prompt", allow_empty=False))
            chosen, rejected = r.texts("chosen"), r.texts("rejected")
            if len(chosen) != len(rejected):
                raise r.error(f"has {len(rejected)} answers but 'chosen' has {len(chosen)}; "
                              "they pair up one to one", "rejected")
            k = min(len(chosen), max_pairs_per_prompt)
            for c, rj in zip(chosen[:k], rejected[:k]):
                answers += [c, rj]
            n_pairs.append(k)
        p_ids, a_ids = encode(tok, prompts), encode(tok, answers)
        eos = tok.eos_token_id
        items, at = [], 0
        for r, p, k in zip(records, p_ids, n_pairs):
            seqs = [p + a + [eos] for a in a_ids[at: at + 2 * k]]
            at += 2 * k
            items.append(_PairItem(r.id(), len(p), seqs))
        lengths = [max(len(s) for s in it.seqs) for it in items]
        super().__init__(util, prepare(self.name, util, records[0].source, items, lengths, max_length))

    def _id(self, item: _PairItem) -> Hashable:
        return item.id

    def _sample(self, item: _PairItem) -> SequenceSample:
        flat = [t for s in item.seqs for t in s]
        return SequenceSample(
            keys={"packed_input_ids", "prompt_lens"},
            ids=[item.id],
            seqlens={"packed_input_ids": [[len(s) for s in item.seqs]], "prompt_lens": [[1]]},
            trailing_shapes={"packed_input_ids": (), "prompt_lens": ()},
            dtypes={"packed_input_ids": torch.long, "prompt_lens": torch.long},
            data={
                "packed_input_ids": torch.tensor(flat, dtype=torch.long),  # (sum of seqlens,)
                "prompt_lens": torch.tensor([item.prompt_len], dtype=torch.long),  # (1,)
            },
        )


register_dataset(PromptAnswerDataset.name, PromptAnswerDataset)
register_dataset(PromptDataset.name, PromptDataset)
register_dataset(PairedRewardDataset.name, PairedRewardDataset)
