"""``gla``: Gated Linear Attention (Yang, Wang, Shen, Panda, Kim 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training", ICML 2024, arXiv 2312.06635).

Linear attention with a data-dependent decay on every key channel (Sec. 4.1, Eq. 3-4), per head:

    S_t = Diag(α_t) S_{t−1} + k_t v_tᵀ,      o_t = S_tᵀ (q_t / sqrt(d_k)),      S ``[d_k, d_v]``
    α_t = σ(W_α² W_α¹ x_t + b_α)^{1/τ},   i.e. log α_t = logsigmoid(gk_proj(x_t)) / τ                   (Eq. 4)

with a rank-16 gate map and τ = ``gate_logit_normalizer`` = 16; the layer output is
y = W_o (RMSNorm_head(o) ⊙ swish(W_g x)) (Sec. 4.4, "GLA Transformer"). Sizes and defaults are those of the
reference layer (flash-linear-attention ``GatedLinearAttention``): key width D·``expand_k`` = D/2, value width
D·``expand_v`` = D, ``num_heads`` heads (d_k = D/(2H), d_v = D/H), ``gate_low_rank_dim`` 16, output gate on, no
short convolution, per-head RMSNorm eps 1e-5, chunks of 64. Init: the generic one (N(0, 0.02) weights, zero gate
bias, so α starts near σ(0)^{1/16} ≈ 0.958); the paper prescribes no special init.

The chunked op (``ops.gla.chunked``) works on log-space cumulative gates with every decay factor in (0, 1] (a tree
of sub-chunks inside each chunk, the state carried across chunks); the oracle is the recurrence
(``ops.gla.naive``). Padded tokens (``key_padding_mask``) get zero keys and no decay, so they leave the state
unchanged. x: ``[B, T, D]`` -> ``[B, T, D]``, causal only. Decoding state ``GLAState``: S ``[B, H, d_k, d_v]``
float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.norms import RMSNorm
from ..nn.state import State
from ..ops.gla import chunked, naive, recurrent
from .base import MIXERS, Capabilities, Mixer, MixerConfig


def check_expansions(config: MixerConfig) -> None:
    """The key and value widths dim·expand_k and dim·expand_v (GLA, RWKV-6) must be positive multiples of
    num_heads; ValueError naming the option otherwise."""
    for name in ("expand_k", "expand_v"):
        ratio = getattr(config, name)
        width = int(config.dim * ratio)
        if not ratio > 0 or width < config.num_heads or width % config.num_heads:
            raise ValueError(f"{name}={ratio!r} gives a width dim·{name}={width} that is not a positive multiple of "
                             f"num_heads={config.num_heads}")


@dataclass(frozen=True)
class GLAConfig(MixerConfig):
    """Options of ``gla`` (causal only, so ``causal`` defaults to True).

    Attributes:
        expand_k: key width over D (> 0); D·expand_k must be a multiple of ``num_heads``.
        expand_v: value width over D (> 0); D·expand_v must be a multiple of ``num_heads``.
        gate_low_rank_dim: rank of the gate map gk_proj (>= 1).
        gate_logit_normalizer: τ in log α = logsigmoid(·)/τ (> 0).
        chunk_size: tokens per chunk, a power of two (the intra-chunk sub-chunk tree halves down to one token).
        norm_eps: eps of the per-head output RMSNorm (> 0).
    """

    causal: bool = True
    expand_k: float = 0.5
    expand_v: float = 1.0
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    chunk_size: int = 64
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_expansions(self)
        if self.gate_low_rank_dim < 1:
            raise ValueError(f"gate_low_rank_dim must be a positive int, got {self.gate_low_rank_dim!r}")
        if not self.gate_logit_normalizer > 0:
            raise ValueError(f"gate_logit_normalizer must be > 0, got {self.gate_logit_normalizer!r}")
        if self.chunk_size < 1 or self.chunk_size & (self.chunk_size - 1):
            raise ValueError(f"chunk_size must be a positive power of two, got {self.chunk_size!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a positive float, got {self.norm_eps!r}")


@dataclass(frozen=True)
class GLAState(State):
    """Decoding state of ``gla``: ``s [B, H, d_k, d_v]`` = S after ``length`` tokens, float32 (float64 for
    float64)."""

    s: Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gated_flops(seq_len: int, heads: int, dk: int, dv: int, chunk_size: int) -> float:
    """Forward FLOPs of the chunked gated linear attention per sequence (multiply-add = 2), per head and token:
    4·d_k·d_v (reading the chunk-entry state and building the chunk's state) + (C − 1)·d_k (the intra-chunk score
    tree) + 2·C·d_v (scores times values), with C = min(chunk_size, T)."""
    c = min(chunk_size, seq_len)
    return float(seq_len * heads * (4 * dk * dv + (c - 1) * dk + 2 * c * dv))


@MIXERS.register("gla")
class GatedLinearAttention(Mixer):
    """Gated Linear Attention (Yang et al. 2024). x ``[B, T, D]`` -> ``[B, T, D]``; see the module docstring."""

    config_class = GLAConfig
    config: GLAConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·(C·d_k + d_k·d_v)", time_exponent=1)
    example_options = {"chunk_size": 4}
    residual_projections = ("o_proj.weight",)

    def __init__(self, config: GLAConfig) -> None:
        super().__init__(config)
        d, h = config.dim, config.num_heads
        self.key_dim, self.value_dim = int(d * config.expand_k), int(d * config.expand_v)
        self.head_k_dim, self.head_v_dim = self.key_dim // h, self.value_dim // h
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d, config.gate_low_rank_dim, bias=False),
                                     nn.Linear(config.gate_low_rank_dim, self.key_dim, bias=True))
        self.g_norm = RMSNorm(self.head_v_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """2·T·(D·(2·D_k + 2·D_v + r) + r·D_k + D_v·D) for the q, k, v, g, gate (rank r) and output projections,
        plus ``gated_flops`` for the mixing, times ``batch``."""
        cfg = self.config
        d, r = cfg.dim, cfg.gate_low_rank_dim
        proj = 2.0 * seq_len * (d * (2 * self.key_dim + 2 * self.value_dim + r) + r * self.key_dim
                                + self.value_dim * d)
        mix = gated_flops(seq_len, cfg.num_heads, self.head_k_dim, self.head_v_dim, cfg.chunk_size)
        return batch * (proj + mix)

    def _project(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q, k, g ``[B, H, T, d_k]`` (g = log α, float32/64), v ``[B, H, T, d_v]``; padded tokens get k = 0, g = 0."""
        h = self.config.num_heads
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        gk = F.logsigmoid(self.gk_proj(x).to(_acc(x.dtype))) / self.config.gate_logit_normalizer
        if mask is not None:
            keep = mask[..., None]
            k, gk = k * keep.to(k.dtype), gk * keep.to(gk.dtype)
        return tuple(rearrange(t, "b t (h d) -> b h t d", h=h) for t in (q, k, v, gk))

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """o ``[B, H, T, d_v]`` -> W_o(RMSNorm_head(o) ⊙ swish(W_g x)) ``[B, T, D]``."""
        g = rearrange(self.g_proj(x), "b t (h d) -> b t h d", h=self.config.num_heads)
        o = self.g_norm(rearrange(o, "b h t d -> b t h d").to(g.dtype)) * F.silu(g)
        return self.o_proj(rearrange(o, "b t h d -> b t (h d)"))

    @property
    def scale(self) -> float:
        return self.head_k_dim ** -0.5

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v, g = self._project(x, key_padding_mask)
        o, _ = chunked.chunk_gla(q, k, v, g, scale=self.scale, chunk_size=self.config.chunk_size)
        return self._output(o, x)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v, g = self._project(x, key_padding_mask)
        o, _ = naive.recurrent_gla(q, k, v, g, scale=self.scale)
        return self._output(o, x)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> GLAState:
        h = self.config.num_heads
        return GLAState(length=0, s=torch.zeros(batch_size, h, self.head_k_dim, self.head_v_dim, device=device,
                                                dtype=_acc(dtype)))

    def _check_state(self, state: State) -> GLAState:
        if not isinstance(state, GLAState):
            raise TypeError(f"state must be the GLAState from init_state, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, GLAState]:
        """Prefill in one chunked pass continuing from S."""
        state = self._check_state(state)
        q, k, v, g = self._project(x, None)
        o, s = chunked.chunk_gla(q, k, v, g, scale=self.scale, chunk_size=self.config.chunk_size,
                                 initial_state=state.s, output_final_state=True)
        return self._output(o, x), GLAState(length=state.length + x.shape[1], s=s.to(state.s.dtype))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, GLAState]:
        state = self._check_state(state)
        x = x_t[:, None]
        q, k, v, g = self._project(x, None)
        o, s = recurrent.gla_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], g[:, :, 0], state.s, scale=self.scale)
        y = self._output(o[:, :, None].to(x_t.dtype), x)[:, 0]
        return y, GLAState(length=state.length + 1, s=s)
