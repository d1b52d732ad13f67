"""Task heads on the Transformer backbone: a causal language model and a sequence classifier."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .generate import generate
from .transformer import DecodeState, Transformer


class LanguageModel(nn.Module):
    """Causal LM: ids ``[B, T]`` -> logits ``[B, T, vocab]`` (fp32); with ``targets [B, T]`` also the mean
    cross-entropy in nats. The head shares the embedding matrix when ``config.tie_weights``.

    Raises:
        ValueError: ``config.causal`` is False, or the backbone's input errors.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.causal:
            raise ValueError("causal=False: a language model needs a causal backbone")
        self.config = config
        self.backbone = Transformer(config)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.backbone.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        logits = self.head(self.backbone(idx)).float()
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def init_state(self, batch_size: int, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> DecodeState:
        return self.backbone.init_state(batch_size, device=device, dtype=dtype)

    def step(self, idx_t: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """``idx_t [B]`` -> next-token logits ``[B, vocab]`` (fp32) and the advanced state."""
        hidden, state = self.backbone.step(idx_t, state)
        return self.head(hidden).float(), state

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Extend ``idx [B, T0]`` by ``max_new_tokens`` sampled tokens -> ``[B, T0 + max_new_tokens]``.
        See ``lightformer.models.generate.generate``."""
        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, use_cache=use_cache,
                        generator=generator)


class SequenceClassifier(nn.Module):
    """Bidirectional encoder + pooling + linear classifier: ids ``[B, T]`` -> logits ``[B, num_classes]``.

    Args:
        config: backbone config; ``causal`` is forced to False unless given a causal config on purpose.
        num_classes: number of labels.
        pooling: ``"mean"`` over real tokens (padding-aware) or ``"cls"`` (the first token's state).
    """

    POOLINGS = ("mean", "cls")

    def __init__(self, config: ModelConfig, num_classes: int, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {self.POOLINGS}, got {pooling!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config = config
        self.pooling = pooling
        self.backbone = Transformer(config)
        self.classifier = nn.Linear(config.dim, num_classes)

    @classmethod
    def bidirectional(cls, config: ModelConfig, num_classes: int, pooling: str = "mean") -> "SequenceClassifier":
        return cls(dataclasses.replace(config, causal=False), num_classes, pooling)

    def forward(self, idx: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        hidden = self.backbone(idx, key_padding_mask=key_padding_mask)  # [B, T, D]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif key_padding_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = key_padding_mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.classifier(pooled).float()
