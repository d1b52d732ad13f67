"""The Transformer backbone: embeddings, absolute positions, pre-norm blocks around any registered mixer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..mixers import MIXERS
from ..nn.ffn import make_ffn
from ..nn.norms import make_norm
from ..nn.positions import RELATIVE, sinusoidal_table
from ..nn.state import State
from .config import ModelConfig


class Block(nn.Module):
    """Pre-norm block: ``x = x + mixer(norm1(x)); x = x + ffn(norm2(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        relative = config.position if config.position in RELATIVE else "none"
        self.norm1 = make_norm(config.norm, config.dim)
        self.mixer = MIXERS.create(config.mixer, dim=config.dim, num_heads=config.num_heads, causal=config.causal,
                                   dropout=config.dropout, position=relative, **config.mixer_options)
        self.norm2 = make_norm(config.norm, config.dim)
        self.ffn = make_ffn(config.ffn, config.dim, config.ffn_hidden, config.dropout)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.mixer(self.norm1(x), key_padding_mask=key_padding_mask)
        return x + self.ffn(self.norm2(x))

    def prefill(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """``forward`` of ``x [B, T, D]`` continuing from the mixer's ``state``; returns the new state too."""
        y, state = self.mixer(self.norm1(x), state=state, return_state=True)
        x = x + y
        return x + self.ffn(self.norm2(x)), state

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, state = self.mixer.step(self.norm1(x_t), state)
        x_t = x_t + y
        return x_t + self.ffn(self.norm2(x_t)), state


@dataclass(frozen=True)
class DecodeState(State):
    """The model's decoding state after ``length`` tokens: one mixer ``State`` per layer (immutable, like them)."""

    layers: tuple[State, ...] = ()

    @property
    def position(self) -> int:
        """Absolute position of the next token (= ``length``)."""
        return self.length

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def select(self, index: Tensor) -> "DecodeState":
        return DecodeState(self.length, tuple(layer.select(index) for layer in self.layers))


class Transformer(nn.Module):
    """Token ids ``[B, T]`` (int64) -> hidden states ``[B, T, D]`` (after the final norm).

    Raises:
        ValueError: ids of wrong rank or dtype, ids outside the vocabulary, T above ``max_len`` with absolute
            positions, a padding mask of wrong shape/dtype, or a mixer that cannot take the position scheme.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        if config.position == "learned":
            self.pos_embed = nn.Embedding(config.max_len, config.dim)
        elif config.position == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.max_len, config.dim), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = make_norm(config.norm, config.dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (Radford et al. 2019, Sec. 2.3): N(0, 0.02) for linear and embedding weights,
        zero biases, and the projections that write into the residual stream (each mixer's
        ``residual_projections`` and the FFN's ``fc2``) scaled by 1/sqrt(2·num_layers); then each mixer's own
        ``init_weights(num_layers)``, which sets what its paper prescribes (and the generic pass must not
        decide), e.g. Mamba's dt bias."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        layers = self.config.num_layers
        residual_std = 0.02 / math.sqrt(2 * layers)
        for block in self.blocks:
            residual = {f"mixer.{name}" for name in block.mixer.residual_projections} | {"ffn.fc2.weight"}
            for name, param in block.named_parameters():
                if name in residual:
                    nn.init.normal_(param, mean=0.0, std=residual_std)
        for block in self.blocks:
            block.mixer.init_weights(layers)

    def _check_ids(self, idx: Tensor) -> None:
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must be integer token ids, got {idx.dtype}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"idx has ids outside [0, vocab_size={self.config.vocab_size})")

    def _positions(self, start: int, length: int, device: torch.device) -> Tensor | None:
        cfg = self.config
        if cfg.position not in ("learned", "sinusoidal"):
            return None
        if start + length > cfg.max_len:
            raise ValueError(f"sequence length {start + length} is above max_len={cfg.max_len} "
                             f"(position={cfg.position!r} has a table of max_len entries)")
        if cfg.position == "learned":
            return self.pos_embed(torch.arange(start, start + length, device=device))
        return self.pos_table[start:start + length]

    def forward(self, idx: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        if idx.dim() != 2:
            raise ValueError(f"idx must be [B, T] (rank 2), got shape {tuple(idx.shape)}")
        self._check_ids(idx)
        return self.forward_embeddings(self.embed(idx), key_padding_mask=key_padding_mask)

    def forward_embeddings(self, x: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        """The backbone from input embeddings ``x [B, T, D]`` (a linear read-in of real-valued inputs, e.g.
        in-context regression) instead of token ids -> hidden states ``[B, T, D]``; absolute positions are added.

        Raises:
            ValueError: ``x`` not ``[B, T, D]``, or T above ``max_len`` with absolute positions."""
        if x.dim() != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"x must be [B, T, D={self.config.dim}], got shape {tuple(x.shape)}")
        pos = self._positions(0, x.shape[1], x.device)
        if pos is not None:
            x = x + pos
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, key_padding_mask)
        return self.norm(x)

    def init_state(self, batch_size: int, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> DecodeState:
        """Empty decoding state; requires a causal model whose mixer has ``capabilities.decode``."""
        return DecodeState(0, tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks))

    def prefill(self, idx: Tensor, state: DecodeState | None = None) -> tuple[Tensor, DecodeState]:
        """Run ``idx [B, T]`` after the tokens of ``state`` (None = from the start) in one pass per layer ->
        (hidden ``[B, T, D]``, the state after the last token). Equals ``forward`` of the whole sequence on those
        rows and ``step`` token by token on the state; mixers without ``capabilities.prefill`` step internally.

        Raises:
            ValueError: as ``forward``; NotImplementedError: a mixer without decode."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be [B, T] (rank 2), got shape {tuple(idx.shape)}")
        self._check_ids(idx)
        if state is None:
            state = self.init_state(idx.shape[0], device=idx.device, dtype=self.embed.weight.dtype)
        x = self.embed(idx)
        pos = self._positions(state.length, idx.shape[1], idx.device)
        if pos is not None:
            x = x + pos
        x = self.drop(x)
        layers = []
        for block, layer_state in zip(self.blocks, state.layers):
            x, layer_state = block.prefill(x, layer_state)
            layers.append(layer_state)
        return self.norm(x), DecodeState(state.length + idx.shape[1], tuple(layers))

    def step(self, idx_t: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """One token per sequence: ``idx_t [B]`` -> hidden ``[B, D]``; equals the last row of ``forward``. Returns a
        new state; ``state`` is unchanged."""
        if idx_t.dim() != 1:
            raise ValueError(f"idx_t must be [B] (rank 1), got shape {tuple(idx_t.shape)}")
        self._check_ids(idx_t)
        x = self.embed(idx_t)
        pos = self._positions(state.length, 1, idx_t.device)
        if pos is not None:
            x = x + pos[0]
        layers = []
        for block, layer_state in zip(self.blocks, state.layers):
            x, layer_state = block.step(x, layer_state)
            layers.append(layer_state)
        return self.norm(x), DecodeState(state.length + 1, tuple(layers))
