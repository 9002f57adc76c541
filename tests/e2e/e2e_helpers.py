"""Helpers shared by the end-to-end tests: child processes, saved weights."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file


def live_children() -> list[int]:
    """Pids of this process's live (not zombie) children, from /proc."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                out.append(int(d.name))
    return out


def hf_weights(root: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files of an HF checkpoint directory."""
    out = {}
    for f in sorted(root.glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, f"no safetensors under {root}"
    return out
