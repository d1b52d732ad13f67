"""The Transformer backbone: embeddings, absolute positions, one registered block per layer (each around its own
mixer and FFN, as the config's schedule says), a final norm, and the model-level connectivity options (ResFormer's
value residual, DenseFormer's depth-weighted average)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..blocks import BLOCKS, FFNS, NORMS, Block
from ..blocks.base import value_rows
from ..mixers import MIXERS
from ..nn.bitlinear import BitLinear
from ..nn.positions import RELATIVE, sinusoidal_table
from ..nn.state import State
from .config import ModelConfig
from .spec import LayerSpec


def build_block(spec: LayerSpec, config: ModelConfig) -> Block:
    """The block of one layer: its mixer (with the model's width, heads, direction, dropout and relative position
    scheme), its FFN(s) and norms."""
    relative = config.position if config.position in RELATIVE else "none"
    mixer = MIXERS.create(spec.mixer, dim=config.dim, num_heads=config.num_heads, causal=config.causal,
                          dropout=config.dropout, position=relative, **spec.mixer_options)

    def make_ffn():
        return FFNS.create(spec.ffn, dim=config.dim, mult=float(spec.ffn_mult), dropout=config.dropout,
                           **spec.ffn_options)

    def make_norm(width: int | None = None):
        return NORMS.create(spec.norm, dim=config.dim if width is None else width, **spec.norm_options)

    block_config = BLOCKS.make_config(spec.block, dim=config.dim, **spec.block_options)
    return BLOCKS.get(spec.block)(block_config, mixer=mixer, make_ffn=make_ffn, make_norm=make_norm,
                                  num_layers=config.num_layers)


class DepthWeightedAverage(nn.Module):
    """DenseFormer's DWA after block i (Pagliardini et al. 2024, Eq. 2): ``Σ_{j=0..i+1} α_{i,j} · X_j`` over the
    embeddings ``X_0`` and the outputs ``X_1..X_{i+1}`` of blocks 0..i; ``α`` starts at the identity (1 on the
    newest, 0 elsewhere), so an untrained DenseFormer is the plain Transformer."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(index + 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weights.zero_()
            self.weights[-1] = 1.0

    def forward(self, history: list[Tensor]) -> Tensor:
        w = self.weights.to(history[-1].dtype)
        out = w[0] * history[0]
        for j in range(1, len(history)):
            out = out + w[j] * history[j]
        return out


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
            positions, a padding mask of wrong shape/dtype, a mixer that cannot take the position scheme, or
            ``value_residual`` with a mixer that has no fused QKV projection.
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
        self.blocks = nn.ModuleList(build_block(spec, config) for spec in config.layer_specs())
        if config.linear == "bitlinear":
            self._use_bitlinear()
        self.norm = NORMS.create(config.norm, dim=config.dim, **config.norm_options) \
            if type(self.blocks[-1]).final_norm else nn.Identity()
        if config.depth_weighted_average:
            self.dwa = nn.ModuleList(DepthWeightedAverage(i) for i in range(config.num_layers))
        self._first_values: Tensor | None = None
        if config.value_residual:
            self._hook_value_residual()
        self._tie_relative_bias()
        self.reset_parameters()
        if config.linear == "bitlinear":
            self._check_bitlinear_called()

    def _use_bitlinear(self) -> None:
        """``linear="bitlinear"``: every ``nn.Linear`` of the blocks becomes a ``BitLinear`` holding the same
        parameters (and the old layer's hooks: Sub-LN's inner norm); run before the init, which treats it as the
        ``nn.Linear`` it is."""
        # compress.base's layer helpers are plain torch code; imported here, at construction, because compress as a
        # package builds on models (the same lazy upward import as train.checkpoint's)
        from ..compress.base import candidate_layers, replace_module

        for name, layer in candidate_layers(self).items():
            replace_module(self, name, BitLinear.from_linear(layer))

    def _check_bitlinear_called(self) -> None:
        """Refuse a ``BitLinear`` that the model reads instead of calling (Mamba's ``dt_proj``, LMU's ``W_h``,
        mLSTM's gates, MatFormer's slices): its weight would train in float while the config says ternary. Found by
        one forward (and, for a decoding model, a prefill and a step) on random embeddings, as ``compress`` finds
        the layers it may replace.

        Raises:
            ValueError: naming each such layer and its owner."""
        from ..compress.base import called_layers, owner_of

        layers = {n: m for n, m in self.named_modules() if isinstance(m, BitLinear)}
        cfg = self.config
        length = min(cfg.max_len, 8)
        x = torch.randn(2, length, cfg.dim, generator=torch.Generator().manual_seed(0))

        def run(model: "Transformer") -> None:
            model.forward_embeddings(x)
            if cfg.causal and length > 1 and all(type(b.mixer).capabilities.decode for b in model.blocks):
                ids = torch.zeros(2, length, dtype=torch.long)
                _, state = model.prefill(ids[:, :-1])
                model.step(ids[:, -1], state)

        with torch.random.fork_rng(devices=[]):  # the probe leaves the seeded RNG stream as it found it
            called = called_layers(self, layers, run)
        bypassed = [n for n in layers if n not in called]
        if bypassed:
            shown = "; ".join(f"{n} ({owner_of(self, n)})" for n in bypassed)
            raise ValueError(f"linear='bitlinear' cannot make {shown} a BitLinear: the model reads these layers' "
                             "weights directly instead of calling them, so they would train in float. Use "
                             "linear='linear', or mixers and FFNs that call their projections")

    def _hook_value_residual(self) -> None:
        for i, block in enumerate(self.blocks):
            if value_rows(block.mixer) is None:
                raise ValueError(f"value_residual needs a fused QKV projection in every layer; layer {i}'s mixer "
                                 f"{type(block.mixer).registry_name!r} has none")
            # partial of a bound method: copy.deepcopy of the model re-binds it to the copy
            block.mixer.qkv.register_forward_hook(functools.partial(self._value_residual, i))

    def _value_residual(self, layer: int, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        rows = value_rows(self.blocks[layer].mixer)
        if layer == 0:
            self._first_values = out[..., rows]
            return out
        if self._first_values is None or self._first_values.shape != out[..., rows].shape:
            raise RuntimeError("value_residual: layer 0 must run before the other layers on the same tokens")
        values = 0.5 * out[..., rows] + 0.5 * self._first_values
        return torch.cat([out[..., :rows.start], values], dim=-1)

    def _tie_relative_bias(self) -> None:
        """T5 shares one relative-bias table across layers (Raffel et al. 2020, Sec. 2.1): tie every layer's
        ``rel_bias`` to the first one's, when the layers' tables have the same shape."""
        tables = [b.mixer.rel_bias for b in self.blocks if isinstance(getattr(b.mixer, "rel_bias", None), nn.Parameter)]
        for block in self.blocks:
            table = getattr(block.mixer, "rel_bias", None)
            if isinstance(table, nn.Parameter) and table is not tables[0] and table.shape == tables[0].shape:
                block.mixer.rel_bias = tables[0]

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (Radford et al. 2019, Sec. 2.3): N(0, 0.02) for linear and embedding weights,
        zero biases, and the parameters that write into the residual stream (each block's
        ``residual_parameters()``: the mixer's ``residual_projections`` and the FFNs' ``fc2``) scaled by
        1/sqrt(2·num_layers); then what each paper prescribes and the generic pass must not decide, in this order:
        each mixer's ``init_weights(num_layers)`` (e.g. Mamba's dt bias), each FFN's, each block's (DeepNorm's and
        Sub-LN's gains), DenseFormer's identity weights."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        layers = self.config.num_layers
        residual_std = 0.02 / math.sqrt(2 * layers)
        for block in self.blocks:
            residual = block.residual_parameters()
            for name, param in block.named_parameters():
                if name in residual:
                    nn.init.normal_(param, mean=0.0, std=residual_std)
        for block in self.blocks:
            block.mixer.init_weights(layers)
        for block in self.blocks:
            for _, ffn in block.ffns():
                ffn.init_weights(layers)
            block.init_weights(layers)
        for dwa in getattr(self, "dwa", ()):
            dwa.reset_parameters()

    def _check_ids(self, idx: Tensor) -> None:
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must be integer token ids, got {idx.dtype}")
        # the range check reads the ids on the host: free on CPU, a stall per forward on an accelerator, and a graph
        # break under torch.compile; there the embedding's own bounds check fails instead (IndexError on CPU, a
        # device-side assert on CUDA), never a silent wrong row
        if idx.device.type == "cpu" and not torch.compiler.is_compiling() and idx.numel() and (
                int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
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

    def _run(self, x: Tensor, layer_fn) -> Tensor:
        """The stack on ``x``: ``layer_fn(i, block, x)`` per layer, with DenseFormer's averages when enabled."""
        history = [x] if self.config.depth_weighted_average else None
        try:
            for i, block in enumerate(self.blocks):
                x = layer_fn(i, block, x)
                if history is not None:
                    history.append(x)
                    x = self.dwa[i](history)
        finally:
            self._first_values = None  # do not keep layer 0's values (and their graph) past this call
        return self.norm(x)

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
        return self._run(x, lambda i, block, h: block(h, key_padding_mask))

    def init_state(self, batch_size: int, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> DecodeState:
        """Empty decoding state; requires a causal model whose mixers all have ``capabilities.decode``."""
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
        if self.config.value_residual and not all(type(b.mixer).capabilities.prefill for b in self.blocks):
            # a mixer that prefills by stepping internally would see only layer 0's last values: run the whole
            # stack one token at a time instead, which is the same computation in the same order
            rows = []
            for t in range(idx.shape[1]):
                h, state = self.step(idx[:, t], state)
                rows.append(h)
            return torch.stack(rows, dim=1), state
        x = self.embed(idx)
        pos = self._positions(state.length, idx.shape[1], idx.device)
        if pos is not None:
            x = x + pos
        x = self.drop(x)
        layers = list(state.layers)

        def layer(i: int, block: Block, h: Tensor) -> Tensor:
            h, layers[i] = block.prefill(h, state.layers[i])
            return h

        hidden = self._run(x, layer)
        return hidden, DecodeState(state.length + idx.shape[1], tuple(layers))

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
        layers = list(state.layers)

        def layer(i: int, block: Block, h: Tensor) -> Tensor:
            h, layers[i] = block.step(h, state.layers[i])
            return h

        hidden = self._run(x, layer)
        return hidden, DecodeState(state.length + 1, tuple(layers))
