"""``deltanet``: DeltaNet, linear attention whose memory is written by the delta rule (Schlag, Irie, Schmidhuber
2021, "Linear Transformers Are Secretly Fast Weight Programmers", Sec. 4.2; trained in parallel over the sequence
as in Yang, Wang, Zhang, Shen, Kim 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length", arXiv 2406.06484), and the shared base of ``gated_deltanet``.

Per head, with the state S_t ``[d_k, d_v]`` (``ops.delta.naive`` has the recurrence and its layout):

    S_t = S_{t−1} (I − β_t k_t k_tᵀ) + β_t k_t v_tᵀ,      o_t = S_tᵀ (q_t / sqrt(d_k))

The layer follows the reference implementation's defaults (flash-linear-attention ``DeltaNet``: ``expand_k=1,
expand_v=1, use_short_conv=True, conv_size=4, qk_activation='silu', qk_norm='l2', use_beta=True,
allow_neg_eigval=False, use_gate=False``):

    q, k, v = SiLU(ShortConv(W_q x)), SiLU(ShortConv(W_k x)), SiLU(ShortConv(W_v x))     (each [B, T, D])
    q, k ← q / ||q||, k / ||k||  per head (eps 1e-6 under the root);   β = sigmoid(W_β x)  per head
    y = W_o RMSNorm_head(o)                                                                (norm_eps 1e-5)

No biases in the projections or the convolutions (as in the reference). d_k = d_v = D / num_heads. The mixing runs
through ``ops.delta.chunked`` (the chunkwise WY form, chunk_size 64, backward by autograd through it) and the oracle
through ``ops.delta.naive`` (the recurrence); decoding steps ``ops.delta.recurrent``.

x: ``[B, T, D]`` -> ``[B, T, D]``, causal only. O(T·(C·d + d²)) time per head, O(T·(D + C·H)) memory. Decoding
state ``DeltaNetState``: S ``[B, H, d_k, d_v]`` and the q/k/v convolution windows ``[B, conv_size − 1, ·]``, all
float32 (float64 for float64). A padded token (``key_padding_mask`` False) is zero for the convolutions and
writes nothing (β = 0, no decay), so left- or right-padded sequences equal their unpadded runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.norms import RMSNorm
from ..nn.short_conv import ShortConv
from ..nn.state import State
from ..ops.delta import chunked, naive, recurrent
from .base import MIXERS, Capabilities, Mixer, MixerConfig

#: added under the square root of the per-head L2 norm of q and k (the reference's ``l2_norm`` eps)
L2_EPS = 1e-6


@dataclass(frozen=True)
class DeltaNetConfig(MixerConfig):
    """Options of ``deltanet`` (causal only, so ``causal`` defaults to True).

    Attributes:
        conv_size: taps of the short causal convolutions on q, k and v (>= 1; 1 = a per-channel scale).
        chunk_size: tokens per chunk of the chunkwise form (>= 1).
        norm_eps: eps of the per-head output RMSNorm (> 0).
    """

    causal: bool = True
    conv_size: int = 4
    chunk_size: int = 64
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conv_size < 1:
            raise ValueError(f"conv_size must be a positive int, got {self.conv_size!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a positive float, got {self.norm_eps!r}")


@dataclass(frozen=True)
class DeltaNetState(State):
    """Decoding state of ``deltanet`` / ``gated_deltanet``: ``s [B, H, d_k, d_v]`` the memory S after ``length``
    tokens, and the convolution windows (the last ``conv_size − 1`` projected inputs) ``conv_q, conv_k
    [B, conv_size − 1, H·d_k]``, ``conv_v [B, conv_size − 1, H·d_v]``. float32 (float64 for float64 modules)."""

    s: Tensor
    conv_q: Tensor
    conv_k: Tensor
    conv_v: Tensor


def l2_normalize(x: Tensor) -> Tensor:
    """x / sqrt(Σ x² + 1e-6) over the last dim (a zero vector stays zero, finite)."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + L2_EPS)


@MIXERS.register("deltanet")
class DeltaNet(Mixer):
    """DeltaNet (Schlag et al. 2021; Yang et al. 2024). x ``[B, T, D]`` -> ``[B, T, D]``; module docstring."""

    config_class = DeltaNetConfig
    config: DeltaNetConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·(C·d + d²)", time_exponent=1)
    example_options = {"chunk_size": 4}
    residual_projections = ("o_proj.weight",)
    no_weight_decay = ("*conv1d.weight",)

    def __init__(self, config: DeltaNetConfig) -> None:
        super().__init__(config)
        self._build(config, key_dim=config.dim, value_dim=config.dim)

    def _build(self, config: MixerConfig, key_dim: int, value_dim: int) -> None:
        """The layers shared with ``gated_deltanet`` (fla's names): projections, convolutions, β, norm, output."""
        d, h = config.dim, config.num_heads
        self.key_dim, self.value_dim = key_dim, value_dim
        self.head_k_dim, self.head_v_dim = key_dim // h, value_dim // h
        self.q_proj = nn.Linear(d, key_dim, bias=False)
        self.k_proj = nn.Linear(d, key_dim, bias=False)
        self.v_proj = nn.Linear(d, value_dim, bias=False)
        self.b_proj = nn.Linear(d, h, bias=False)
        self.q_conv1d = ShortConv(key_dim, config.conv_size, bias=False)
        self.k_conv1d = ShortConv(key_dim, config.conv_size, bias=False)
        self.v_conv1d = ShortConv(value_dim, config.conv_size, bias=False)
        self.o_norm = RMSNorm(self.head_v_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(value_dim, d, bias=False)

    # -- the pieces around the mixing op -------------------------------------------------------------------
    def log_decay(self, x: Tensor) -> Tensor | None:
        """log α_t ``[B, H, T]`` (<= 0), or None for DeltaNet (α ≡ 1)."""
        return None

    def output_gate(self, o: Tensor, x: Tensor) -> Tensor:
        """The normalised output o ``[B, T, H, d_v]`` -> what ``o_proj`` reads; DeltaNet has no gate."""
        return o

    def _inputs(self, x: Tensor, mask: Tensor | None, windows: tuple[Tensor, Tensor, Tensor] | None,
                oracle: bool = False):
        """x ``[B, T, D]`` -> (q, k ``[B, H, T, d_k]``, v ``[B, H, T, d_v]``, β, log α (or None) ``[B, H, T]``,
        the new convolution windows or None). ``windows`` continues the convolutions from a state."""
        h = self.config.num_heads
        if mask is not None:  # a padded token is zero for the convolutions ...
            x = x * mask[..., None].to(x.dtype)
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        projected = (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        new_windows = None
        if windows is not None:
            pairs = [conv.forward_state(p, w) for conv, p, w in zip(convs, projected, windows)]
            q, k, v = (y for y, _ in pairs)
            new_windows = tuple(w for _, w in pairs)
        elif oracle:
            q, k, v = (conv.oracle(p) for conv, p in zip(convs, projected))
        else:
            q, k, v = (conv(p) for conv, p in zip(convs, projected))
        q, k, v = (rearrange(F.silu(y), "b t (h d) -> b h t d", h=h) for y in (q, k, v))
        q, k = l2_normalize(q), l2_normalize(k)
        beta = rearrange(torch.sigmoid(self.b_proj(x)), "b t h -> b h t")
        g = self.log_decay(x)
        if mask is not None:  # ... and writes nothing: β = 0, no decay
            keep = mask[:, None, :]
            beta = beta * keep.to(beta.dtype)
            g = None if g is None else g * keep.to(g.dtype)
        return q, k, v, beta, g, new_windows

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """o ``[B, H, T, d_v]`` -> ``[B, T, D]``: per-head RMSNorm (gate), ``o_proj``."""
        o = self.o_norm(rearrange(o, "b h t d -> b t h d"))
        o = self.output_gate(o, x)
        return self.o_proj(rearrange(o, "b t h d -> b t (h d)"))

    @property
    def scale(self) -> float:
        return self.head_k_dim ** -0.5

    # -- the contract -----------------------------------------------------------------------------------------
    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v, beta, g, _ = self._inputs(x, key_padding_mask, None)
        o, _ = chunked.chunk_delta_rule(q, k, v, beta, g, scale=self.scale, chunk_size=self.config.chunk_size)
        return self._output(o, x)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v, beta, g, _ = self._inputs(x, key_padding_mask, None, oracle=True)
        o, _ = naive.delta_rule_recurrence(q, k, v, beta, g, scale=self.scale)
        return self._output(o, x)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> DeltaNetState:
        acc = naive.state_dtype(dtype)
        h, km1 = self.config.num_heads, self.config.conv_size - 1
        return DeltaNetState(
            length=0, s=torch.zeros(batch_size, h, self.head_k_dim, self.head_v_dim, device=device, dtype=acc),
            conv_q=torch.zeros(batch_size, km1, self.key_dim, device=device, dtype=acc),
            conv_k=torch.zeros(batch_size, km1, self.key_dim, device=device, dtype=acc),
            conv_v=torch.zeros(batch_size, km1, self.value_dim, device=device, dtype=acc))

    def _check_state(self, state: State) -> DeltaNetState:
        if not isinstance(state, DeltaNetState):
            raise TypeError(f"state must be the DeltaNetState from init_state, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, DeltaNetState]:
        """Prefill in one chunked pass: the convolutions continue from their windows, the op from S."""
        state = self._check_state(state)
        q, k, v, beta, g, windows = self._inputs(x, None, (state.conv_q, state.conv_k, state.conv_v))
        o, s = chunked.chunk_delta_rule(q, k, v, beta, g, scale=self.scale, chunk_size=self.config.chunk_size,
                                        initial_state=state.s, output_final_state=True)
        new = DeltaNetState(state.length + x.shape[1], s.to(state.s.dtype), *windows)
        return self._output(o, x), new

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, DeltaNetState]:
        state = self._check_state(state)
        x = x_t[:, None]
        q, k, v, beta, g, windows = self._inputs(x, None, (state.conv_q, state.conv_k, state.conv_v))
        o, s = recurrent.delta_rule_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], beta[:, :, 0],
                                         None if g is None else g[:, :, 0], state.s, scale=self.scale)
        new = DeltaNetState(state.length + 1, s, *windows)
        return self._output(o[:, :, None].to(v.dtype), x)[:, 0], new

    # -- cost ---------------------------------------------------------------------------------------------------
    def projection_flops(self, seq_len: int) -> float:
        """Per sequence: q, k, v, β and output projections, 2·T·(D·(2·D_k + D_v + H) + D_v·D)."""
        d, h = self.config.dim, self.config.num_heads
        return 2.0 * seq_len * (d * (2 * self.key_dim + self.value_dim + h) + self.value_dim * d)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs (multiply-add = 2) of ``forward`` over ``[batch, seq_len, D]``:

            projections   2·T·(D·(2·D_k + D_v + H) + D_v·D)     (+ the gate and decay projections, gated)
            convolutions  2·T·K·(2·D_k + D_v)
            mixing        H·N·(6·C²·d_k + 4·C²·d_v + C³/3 + 6·C·d_k·d_v),   N = ⌈T/C⌉ chunks of C tokens:
                          K Kᵀ and Q Kᵀ (2·C²·d_k each), the unit-triangular inverse (C³/3), W = T·K (2·C²·d_k),
                          U = T·V and the intra-chunk (Q Kᵀ)·V' (2·C²·d_v each), and W·S, Q·S, Kᵀ·V' against
                          the [d_k, d_v] state (2·C·d_k·d_v each).
        """
        cfg = self.config
        c = min(cfg.chunk_size, seq_len)
        n = -(-seq_len // c)
        dk, dv = self.head_k_dim, self.head_v_dim
        mixing = cfg.num_heads * n * (6 * c * c * dk + 4 * c * c * dv + c ** 3 / 3 + 6 * c * dk * dv)
        conv = 2.0 * seq_len * cfg.conv_size * (2 * self.key_dim + self.value_dim)
        return batch * (self.projection_flops(seq_len) + conv + mixing)
