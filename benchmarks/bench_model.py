"""ReaLModel vs Hugging Face transformers, side by side in one run, same weights.

    python benchmarks/bench_model.py [--family qwen2] [--size small] [--device cpu]

1. Training: forward+backward tokens/s on a packed batch (ReaLModel) vs the same
   sequences padded to the longest (HF `AutoModelForCausalLM`, attention mask),
   lengths drawn uniformly from [16, 512]. Only real tokens count for both.
2. Generation: generated tokens/s for 32 prompts x 128 new tokens, greedy, vs HF
   `generate` (left padding, KV cache). Both are forced to produce all 128 tokens.

Prints a table and writes JSON (benchmarks/results/bench_model.json by default).
Targets (issue 3): training ratio >= 2.0, generation ratio >= 3.0.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

from realflow.api.generation import GenerationConfig  # noqa: E402
from realflow.model import load_hf_checkpoint  # noqa: E402
from realflow.model.generate import generate  # noqa: E402

SIZES = {
    # name: (layers, hidden, heads, kv_heads, intermediate, vocab)
    "tiny": (2, 64, 4, 2, 176, 512),
    "small": (4, 256, 8, 2, 688, 1024),
    "medium": (8, 512, 8, 4, 1376, 4096),
}


def hf_config(family: str, size: str) -> transformers.PretrainedConfig:
    layers, hidden, heads, kv, inter, vocab = SIZES[size]
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads)
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024, eos_token_id=1, bos_token_id=1
        )
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
    return cls(
        **common,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=1,
        bos_token_id=1,
        pad_token_id=0,
    )


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_train(hf, ours, vocab: int, n_seqs: int, repeats: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(16, 513, (n_seqs,), generator=g).tolist()
    seqs = [torch.randint(2, vocab, (n,), generator=g) for n in lens]
    n_tokens = sum(lens)

    packed = torch.cat(seqs).to(device)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    labels = packed.roll(-1)
    keep = torch.ones_like(packed, dtype=torch.bool)
    keep[(cu[1:] - 1).long()] = False  # no next token at each sequence's end

    def ours_step():
        ours.zero_grad(set_to_none=True)
        logits = ours(packed, cu)
        F.cross_entropy(logits[keep].float(), labels[keep]).backward()

    width = max(lens)
    ids = torch.zeros((n_seqs, width), dtype=torch.long)
    mask = torch.zeros((n_seqs, width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    hf_labels = ids.masked_fill(mask == 0, -100)

    def hf_step():
        hf.zero_grad(set_to_none=True)
        hf(input_ids=ids, attention_mask=mask, labels=hf_labels).loss.backward()

    t_ours = _median_time(ours_step, repeats)
    t_hf = _median_time(hf_step, repeats)
    return {
        "n_seqs": n_seqs,
        "real_tokens": n_tokens,
        "padded_tokens": n_seqs * width,
        "ours_tokens_per_s": n_tokens / t_ours,
        "hf_tokens_per_s": n_tokens / t_hf,
        "ratio": t_hf / t_ours,
    }


def bench_generate(hf, ours, vocab: int, n_prompts: int, new_tokens: int, repeats: int, device: str, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(8, 33, (n_prompts,), generator=g).tolist()
    prompts = [torch.randint(2, vocab, (n,), generator=g) for n in lens]
    packed = torch.cat(prompts).to(device)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    gconfig = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, greedy=True)

    def ours_gen():
        out = generate(ours, packed, cu, gconfig, eos_token_id=1, pad_token_id=0)
        assert out.output_ids.numel() == n_prompts * new_tokens

    width = max(lens)
    ids = torch.zeros((n_prompts, width), dtype=torch.long)
    mask = torch.zeros((n_prompts, width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as HF generation expects
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)

    def hf_gen():
        out = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=1,
        )
        assert out.shape[1] - width == new_tokens

    with torch.no_grad():
        t_ours = _median_time(ours_gen, repeats)
        t_hf = _median_time(hf_gen, repeats)
    n = n_prompts * new_tokens
    return {
        "n_prompts": n_prompts,
        "new_tokens": new_tokens,
        "ours_tokens_per_s": n / t_ours,
        "hf_tokens_per_s": n / t_hf,
        "ratio": t_hf / t_ours,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="qwen2", choices=["qwen2", "llama", "gpt2"])
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-seqs", type=int, default=16)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--out", default="benchmarks/results/bench_model.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = hf_config(args.family, args.size)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(args.device).float()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_hf_checkpoint(d, device=args.device)
    n_params = sum(p.numel() for p in hf.parameters())
    vocab = cfg.vocab_size

    train = bench_train(hf.train(), ours.train(), vocab, args.train_seqs, args.repeats, args.device)
    gen = bench_generate(hf.eval(), ours.eval(), vocab, args.prompts, args.new_tokens, args.repeats, args.device)
    result = {
        "family": args.family,
        "size": args.size,
        "params": n_params,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "train": train,
        "generate": gen,
    }
    print(f"\nReaLModel vs HF transformers  ({args.family}, {args.size}: {n_params / 1e6:.2f}M params, {args.device})")
    print(f"{'benchmark':<34}{'realflow':>12}{'HF':>12}{'ratio':>8}{'target':>8}")
    print(
        f"{'train fwd+bwd tokens/s (16-512)':<34}{train['ours_tokens_per_s']:>12.0f}"
        f"{train['hf_tokens_per_s']:>12.0f}{train['ratio']:>8.2f}{'>=2.0':>8}"
    )
    print(
        f"{'generate tokens/s (32x128 greedy)':<34}{gen['ours_tokens_per_s']:>12.0f}"
        f"{gen['hf_tokens_per_s']:>12.0f}{gen['ratio']:>8.2f}{'>=3.0':>8}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
