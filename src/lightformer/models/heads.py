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
        """``idx_t [B]`` -> next-token logits ``[B, vocab]`` (fp32) and the advanced state (a new one)."""
        hidden, state = self.backbone.step(idx_t, state)
        return self.head(hidden).float(), state

    def prefill(self, idx: Tensor, state: DecodeState | None = None) -> tuple[Tensor, DecodeState]:
        """``idx [B, T]`` after ``state``'s tokens -> logits ``[B, T, vocab]`` (fp32) and the state after them,
        in one pass (see ``Transformer.prefill``)."""
        hidden, state = self.backbone.prefill(idx, state)
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

    ``token_merging``: ToMe's tokens merged away after each layer's mixer (``set_token_merging``; ``models/tome.py``;
    set by ``lightformer compress --method tome``); ``()`` = none. With merging, mean pooling is size-weighted,
    ``Σ s_t·h_t / Σ s_t`` over the merged tokens of sizes s (the plain mean over real tokens when nothing merged).
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
        self.token_merging: tuple[int, ...] = ()

    def set_token_merging(self, r: int | list[int] | tuple[int, ...]) -> None:
        """Merge ``r`` tokens per layer (an int, or one per layer) with ToMe from now on; 0 = none.

        Raises:
            ValueError: a model ToMe cannot run in (``models.tome.check_mergeable`` names why), or a bad ``r``."""
        from .tome import check_mergeable, merge_schedule

        schedule = merge_schedule(r, len(self.backbone.blocks))
        if any(schedule):
            check_mergeable(self)
        self.token_merging = schedule if any(schedule) else ()

    @classmethod
    def bidirectional(cls, config: ModelConfig, num_classes: int, pooling: str = "mean") -> "SequenceClassifier":
        return cls(dataclasses.replace(config, causal=False), num_classes, pooling)

    def forward(self, idx: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        if self.token_merging:
            from .tome import merged_forward

            hidden, size = merged_forward(self, idx, key_padding_mask, self.token_merging)  # [B, T', D], [B, T']
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = size.to(hidden.dtype)[..., None]
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            return self.classifier(pooled).float()
        hidden = self.backbone(idx, key_padding_mask=key_padding_mask)  # [B, T, D]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif key_padding_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = key_padding_mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.classifier(pooled).float()


class TwoTowerClassifier(nn.Module):
    """Two-tower matcher (LRA Retrieval; Tay et al. 2021, Sec. 3.3): one shared bidirectional encoder pools each
    sequence to ``u``, ``v`` ``[B, D]`` (mean over real tokens), and an MLP on ``[u, v, u*v, u-v]`` ``[B, 4D]``
    gives logits ``[B, num_classes]`` (fp32).

    Raises:
        ValueError: ``num_classes < 2``, or the backbone's input errors.
    """

    def __init__(self, config: ModelConfig, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config = config
        self.backbone = Transformer(config)
        self.classifier = nn.Sequential(nn.Linear(4 * config.dim, config.dim), nn.GELU(),
                                        nn.Linear(config.dim, num_classes))

    def encode(self, idx: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """ids ``[B, T]`` -> pooled ``[B, D]`` (mean over the real tokens)."""
        hidden = self.backbone(idx, key_padding_mask=key_padding_mask)
        if key_padding_mask is None:
            return hidden.mean(dim=1)
        weights = key_padding_mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, idx: Tensor, idx2: Tensor, *, key_padding_mask: Tensor | None = None,
                key_padding_mask2: Tensor | None = None) -> Tensor:
        u, v = self.encode(idx, key_padding_mask), self.encode(idx2, key_padding_mask2)
        return self.classifier(torch.cat([u, v, u * v, u - v], dim=-1)).float()


class InContextRegressor(nn.Module):
    """Causal Transformer on real-valued inputs (Garg et al. 2022, "What Can Transformers Learn In-Context?",
    Sec. 2): a linear read-in ``[B, T, d_in] -> [B, T, D]``, the backbone, and a linear read-out to one scalar per
    position ``[B, T]`` (fp32). The token embedding of the backbone is unused.

    Raises:
        ValueError: ``input_dim < 1``, a non-causal config, or inputs of the wrong shape.
    """

    def __init__(self, config: ModelConfig, input_dim: int) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim}")
        if not config.causal:
            raise ValueError("causal=False: in-context regression reads each prompt left to right")
        self.config = config
        self.input_dim = input_dim
        self.read_in = nn.Linear(input_dim, config.dim)
        self.backbone = Transformer(config)
        self.read_out = nn.Linear(config.dim, 1)
        nn.init.normal_(self.read_in.weight, std=0.02)
        nn.init.zeros_(self.read_in.bias)
        nn.init.normal_(self.read_out.weight, std=0.02)
        nn.init.zeros_(self.read_out.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_dim:
            raise ValueError(f"inputs must be [B, T, d_in={self.input_dim}], got shape {tuple(inputs.shape)}")
        hidden = self.backbone.forward_embeddings(self.read_in(inputs))
        return self.read_out(hidden)[..., 0].float()


class CompressionAutoEncoder(nn.Module):
    """The compression probe's model (MAD: Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
    Architectures", arXiv 2403.17844; the design of mad-lab's ``AutoEncoder`` with ``global_pool="last"``): a causal
    backbone reads ids ``[B, T]``; its hidden state at the last position, ``h [B, D]``, is all the decoder sees. For
    every position ``t`` the decoder maps ``h + PE[t]`` (fixed sinusoidal positions, Vaswani et al. 2017) through a
    non-expanding MLP (norm, Linear D->D, GELU, norm, Linear D->D, GELU) and a read-out (norm, Linear D->vocab,
    own weights: not tied to the embedding) to logits ``[B, T, vocab]`` (fp32): the model must rebuild the whole
    input from one vector.

    Raises:
        ValueError: ``config.causal`` is False, or the backbone's input errors.
    """

    def __init__(self, config: ModelConfig) -> None:
        from ..blocks import create_norm

        super().__init__()
        if not config.causal:
            raise ValueError("causal=False: the compression model reads its input left to right into the last "
                             "position")
        self.config = config
        d = config.dim
        self.backbone = Transformer(config)
        self.decoder = nn.Sequential(create_norm(config.norm, d, **config.norm_options), nn.Linear(d, d), nn.GELU(),
                                     create_norm(config.norm, d, **config.norm_options), nn.Linear(d, d), nn.GELU())
        self.head = nn.Sequential(create_norm(config.norm, d, **config.norm_options), nn.Linear(d, config.vocab_size))
        for module in (*self.decoder, *self.head):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def encode(self, idx: Tensor) -> Tensor:
        """ids ``[B, T]`` -> the code ``[B, D]``: the backbone's hidden state at the last position."""
        return self.backbone(idx)[:, -1]

    def decode(self, code: Tensor, length: int) -> Tensor:
        """``code [B, D]`` -> logits ``[B, length, vocab]`` (fp32)."""
        from ..nn.positions import sinusoidal_table

        d = self.config.dim
        # built per call (T·D numbers, any T); an odd width takes the first d columns of a table one wider
        positions = sinusoidal_table(length, d + d % 2)[:, :d].to(device=code.device, dtype=code.dtype)
        x = code[:, None, :] + positions  # [B, T, D]
        return self.head(self.decoder(x)).float()

    def forward(self, idx: Tensor) -> Tensor:
        """ids ``[B, T]`` -> reconstruction logits ``[B, T, vocab]`` (fp32)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be [B, T], got shape {tuple(idx.shape)}")
        return self.decode(self.encode(idx), idx.shape[1])
