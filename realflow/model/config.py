"""`ReaLModelConfig`: the architecture of a ReaLModel, independent of Hugging Face.

One small frozen dataclass covers the decoder-only families realflow supports
(llama with GQA, qwen2 with qkv bias, gpt2 with absolute positions and LayerNorm).
HF configs are translated into it by the family converters in
`realflow.model.families`; nothing here knows about HF.

Deliberately absent: tokenizer ids (bos/eos/pad) and dtypes. They belong to the
checkpoint and the engine, not to the shape of the network.
"""
from __future__ import annotations

from dataclasses import dataclass

from realflow.api.errors import ModelError

NORM_TYPES = ("rms", "layer")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
ROTARY_SCALING_TYPES = ("linear", "llama3")


@dataclass(frozen=True)
class RotaryScaling:
    """Scaling of rotary frequencies for long context.

    `type="linear"` divides all inverse frequencies by `factor`; `type="llama3"` is
    Llama 3.1's frequency-dependent scaling (needs the low/high frequency factors and
    the original context length).
    """

    type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    def __post_init__(self) -> None:
        if self.type not in ROTARY_SCALING_TYPES:
            raise ModelError(
                f"rotary scaling type '{self.type}' is not supported; supported: {', '.join(ROTARY_SCALING_TYPES)}"
            )
        if self.factor <= 0:
            raise ModelError(f"rotary scaling factor must be > 0, got {self.factor}")
        if self.type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ModelError(
                f"llama3 rotary scaling needs high_freq_factor > low_freq_factor, "
                f"got {self.high_freq_factor} <= {self.low_freq_factor}"
            )


@dataclass(frozen=True)
class ReaLModelConfig:
    """Shape and numerics of a decoder-only transformer.

    Layer indices: 0 is the embedding, 1..n_layers the blocks, n_layers + 1 the head
    (final norm + LM head, or a 1-output value head when `is_critic`).
    """

    n_layers: int
    hidden_dim: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_dim: int
    vocab_size: int
    n_positions: int = 2048
    # Positions: rotary (llama, qwen2) unless `abs_position_embedding` (gpt2).
    abs_position_embedding: bool = False
    rotary_base: float = 10000.0
    rotary_scaling: RotaryScaling | None = None
    norm_type: str = "rms"
    norm_eps: float = 1e-6
    activation: str = "silu"
    # Gated MLP: down(act(gate(x)) * up(x)) (llama); otherwise down(act(up(x))) (gpt2).
    gated_mlp: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tied_embedding: bool = False
    is_critic: bool = False
    # HF family this model converts to and from (set when loaded from HF); lets
    # `save_hf_checkpoint(model, dir)` work without naming the family again.
    hf_family: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_layers", "hidden_dim", "n_q_heads", "n_kv_heads", "head_dim",
                     "intermediate_dim", "vocab_size", "n_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelError(f"ReaLModelConfig.{name} must be a positive int, got {value!r}")
        if self.n_q_heads % self.n_kv_heads != 0:
            raise ModelError(
                f"n_q_heads ({self.n_q_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2 != 0 and not self.abs_position_embedding:
            raise ModelError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.norm_type not in NORM_TYPES:
            raise ModelError(f"norm_type '{self.norm_type}' is not one of {', '.join(NORM_TYPES)}")
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"activation '{self.activation}' is not one of {', '.join(ACTIVATIONS)}")
        if self.norm_eps <= 0:
            raise ModelError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.is_critic and self.tied_embedding:
            raise ModelError("a critic (value head) cannot tie its head to the embedding; set tied_embedding=False")

    @property
    def n_total_layers(self) -> int:
        """Embedding + blocks + head."""
        return self.n_layers + 2

    @property
    def head_index(self) -> int:
        return self.n_layers + 1

    @property
    def q_dim(self) -> int:
        return self.n_q_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def qkv_sections(self) -> tuple[int, int, int]:
        """Rows of q, k and v in the fused qkv weight, in that order."""
        return (self.q_dim, self.kv_dim, self.kv_dim)

    def layer_range(self, start: int | None = None, end: int | None = None) -> range:
        """Validated range of layer indices [start, end) (a pipeline stage)."""
        s = 0 if start is None else start
        e = self.n_total_layers if end is None else end
        if not 0 <= s < e <= self.n_total_layers:
            raise ModelError(
                f"layer range [{s}, {e}) is not a non-empty part of [0, {self.n_total_layers}) "
                f"(embedding 0, blocks 1..{self.n_layers}, head {self.head_index})"
            )
        return range(s, e)
