"""``ModelConfig``: every choice of a Transformer in one frozen, serialisable dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..nn.ffn import FFNS
from ..nn.norms import NORMS
from ..nn.positions import SCHEMES


@dataclass(frozen=True)
class ModelConfig:
    """A pre-norm Transformer: ``x + mixer(norm(x))`` then ``x + ffn(norm(x))`` per layer.

    Attributes:
        vocab_size: token vocabulary size.
        dim: width D; num_layers: blocks; num_heads: heads of the mixer.
        mixer: registered mixer name (``lightformer list``); mixer_options: its extra options (not dim, num_heads,
            causal, dropout or position, which come from this config).
        ffn: ``"gelu"`` MLP or ``"swiglu"``; ffn_mult: hidden width = ffn_mult · dim (SwiGLU: 2/3 of that, rounded
            to a multiple of 8, to keep the parameter count).
        norm: ``"layernorm" | "rmsnorm"``.
        position: ``"learned" | "sinusoidal"`` (added to embeddings), ``"rope" | "alibi"`` (applied by the mixer)
            or ``"none"``.
        max_len: longest sequence for absolute positions (and the generation window).
        dropout: on embeddings, mixer output and FFN output.
        tie_weights: share the token embedding with the LM head (Press & Wolf 2017).
        causal: causal mixers (language model) or bidirectional (classifier).
    """

    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mixer: str = "softmax"
    mixer_options: dict[str, Any] = field(default_factory=dict)
    ffn: str = "gelu"
    ffn_mult: float = 4.0
    norm: str = "layernorm"
    position: str = "learned"
    max_len: int = 256
    dropout: float = 0.0
    tie_weights: bool = True
    causal: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.ffn not in FFNS:
            raise ValueError(f"ffn must be one of {FFNS}, got {self.ffn!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.position not in SCHEMES:
            raise ValueError(f"position must be one of {SCHEMES}, got {self.position!r}")
        if self.ffn_mult <= 0:
            raise ValueError(f"ffn_mult must be positive, got {self.ffn_mult!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        reserved = {"dim", "num_heads", "causal", "dropout", "position"} & set(self.mixer_options)
        if reserved:
            raise ValueError(f"mixer_options may not set {sorted(reserved)}: set them on the model config")

    @property
    def ffn_hidden(self) -> int:
        hidden = int(self.ffn_mult * self.dim)
        if self.ffn == "swiglu":
            hidden = max(8, int(round(2 * hidden / 3 / 8)) * 8)
        return hidden

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise TypeError(f"unknown model option(s) {unknown}; valid options: {sorted(valid)}")
        return cls(**data)
