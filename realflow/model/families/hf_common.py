"""Small translations shared by the family files: activations and rotary settings.

Works with transformers 5 (`rope_parameters`) and 4.x (`rope_theta` + `rope_scaling`).
"""
from __future__ import annotations

from typing import Any

from realflow.api.errors import ModelError
from realflow.model.config import ReaLModelConfig, RotaryScaling

_ACTIVATION_FROM_HF = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}
_ACTIVATION_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def activation_from_hf(name: str) -> str:
    try:
        return _ACTIVATION_FROM_HF[name]
    except KeyError:
        raise ModelError(
            f"HF activation '{name}' is not supported; supported: {', '.join(sorted(_ACTIVATION_FROM_HF))}"
        ) from None


def activation_to_hf(name: str, tanh_gelu: str = "gelu_pytorch_tanh") -> str:
    """HF name of an activation; `tanh_gelu` picks the spelling of the tanh-approximate
    gelu (GPT-2 checkpoints say 'gelu_new', which HF computes by a different formula)."""
    return tanh_gelu if name == "gelu_tanh" else _ACTIVATION_TO_HF[name]


def rotary_from_hf(hf: Any) -> tuple[float, RotaryScaling | None]:
    """(base, scaling) from an HF config."""
    params = getattr(hf, "rope_parameters", None)
    if params is None:  # transformers 4.x
        params = dict(getattr(hf, "rope_scaling", None) or {})
        params["rope_theta"] = getattr(hf, "rope_theta", 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    base = float(params["rope_theta"])
    if kind == "default":
        return base, None
    if kind == "linear":
        return base, RotaryScaling("linear", float(params["factor"]))
    if kind == "llama3":
        return base, RotaryScaling(
            "llama3",
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
    raise ModelError(f"HF rope type '{kind}' is not supported; supported: default, linear, llama3")


def rotary_to_hf(config: ReaLModelConfig) -> dict[str, Any]:
    """Legacy-style kwargs (`rope_theta`, `rope_scaling`) that transformers 4 and 5 accept."""
    s = config.rotary_scaling
    scaling = None
    if s is not None and s.type == "linear":
        scaling = {"rope_type": "linear", "factor": s.factor}
    elif s is not None:
        scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_positions,
        }
    return {"rope_theta": config.rotary_base, "rope_scaling": scaling}
