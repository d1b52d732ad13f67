"""``retnet``: multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large
Language Models", arXiv 2307.08621), computed by the chunked SSD algorithm with a constant decay per head.

Per head h of H = num_heads (Sec. 2.1-2.2), with d_k = dim / H and d_v = value_dim / H:

    Q = (X W_Q) ⊙ Θ,  K = (X W_K) ⊙ Θ̄ / sqrt(d_k),  V = X W_V                          (Eq. 5, xPos-style rotation)
    retention(X) = (Q Kᵀ ⊙ D) V,   D_nm = γ_h^{n−m} for n >= m, else 0               (parallel, Eq. 5)
               ≡ S_n = γ_h S_{n−1} + K_nᵀ V_n,  o_n = Q_n S_n                         (recurrent, Eq. 6)
               ≡ chunkwise: R_i = K_[i]ᵀ (V_[i] ⊙ ζ) + γ^B R_{i−1}, ...               (chunkwise, Eq. 7)
    γ_h = 1 − 2^{−5−h},  h = 0 .. H−1                                                 (multi-scale, Eq. 8)
    Y = concat_h PerHeadNorm(retention_h(X)),   MSR(X) = (swish(X W_G) ⊙ Y) W_O          (Eq. 8)

The three forms are one function of (Q, K, V, log γ): ``ops.ssd`` with g_t = log γ_h. ``forward`` runs the chunked
form (the fast path); ``oracle`` runs the parallel form of Eq. 5 (``ops.ssd.naive.parallel_ssd``); ``step`` runs
the recurrent form. The tests check that the three agree (outputs, states and gradients).

What exactly is implemented:
- Rotation (``theta_shift`` of torchscale's RetNet): each pair of channels (2j, 2j+1) of q and k at absolute
  position n is rotated by the angle n·θ_j, θ_j = theta_base^{−j/(d_k/2 − 1)} (θ_0 = 1, d_k/2 values spread
  log-uniformly to 1/theta_base, as torchscale's ``linspace(0, 1, d_k/2)`` exponents), so q_nᵀk_m depends on n − m.
  The xPos *scale* ζ^{n/512} on q and ζ^{−m/512} on k is not applied: torchscale's RetNet does not apply it either
  (the decay γ^{n−m} takes its place), and split over q and k it is exp(a)·exp(−b) with factors that overflow
  float32 beyond a few thousand tokens.
- Scale: k is multiplied by d_k^{−1/2} (torchscale ``scaling``).
- Decays: the paper's γ_h = 1 − 2^{−5−h} (torchscale ``RetNetRelPos``); yet-another-retnet uses
  1 − exp(linspace(log 1/32, log 1/512, H)) instead, which differs for H != 5.
- Normalisation: no decay-matrix normalisation. torchscale divides D by the square root of its row sums and Q Kᵀ ⊙ D
  by its clamped absolute row sum (and carries a matching scale in the recurrent form); each of these multiplies a
  head's output row by a positive factor, which the per-head norm removes, except through eps. Here the per-head
  norm is RMSNorm over the d_v channels of a head with eps = ``norm_eps`` (1e-6, torchscale's ``layernorm_eps``)
  and no affine weight (torchscale's ``RMSNorm(head_dim, elementwise_affine=False)``).
- Value width: ``value_dim`` defaults to 2·dim (the paper's d_v = 2·d_k, Sec. 3.1); the gate has the same width.
- Projections without biases (torchscale), fused into one ``in_proj`` [W_Q, W_K, W_V, W_G]; ``out_proj`` = W_O.

x: ``[B, T, D]`` -> ``[B, T, D]``, causal only. Padding: a padded token gets k = 0 and no decay (g = 0), so it does
not touch the state; positions still count it. Decoding state (``RetNetState``): S ``[B, H, d_k, d_v]``, float32
(float64 for float64). Complexity O(T·H·(C·(d_k + d_v) + d_k·d_v)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.state import State
from ..ops.ssd import chunked, naive, recurrent
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class RetNetConfig(MixerConfig):
    """Options of ``retnet``.

    Attributes:
        value_dim: width of V and of the gate (all heads); None = 2·dim. Must be divisible by ``num_heads``.
        chunk_size: tokens per chunk of the chunkwise form.
        norm_eps: eps of the per-head RMSNorm.
        theta_base: base of the rotation frequencies (10000, as RoPE and torchscale).
    """

    value_dim: int | None = None
    chunk_size: int = 64
    norm_eps: float = 1e-6
    theta_base: float = 10000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_dim % 2:
            raise ValueError(f"num_heads={self.num_heads}: the key head size dim/num_heads={self.head_dim} must be "
                             "even (channels are rotated in pairs)")
        if self.value_dim is not None and (self.value_dim < 1 or self.value_dim % self.num_heads):
            raise ValueError(f"value_dim must be a positive multiple of num_heads={self.num_heads}, "
                             f"got {self.value_dim!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if not self.theta_base > 1:
            raise ValueError(f"theta_base must be > 1, got {self.theta_base!r}")

    @property
    def v_dim(self) -> int:
        """The value width actually used (``value_dim`` or 2·dim)."""
        return 2 * self.dim if self.value_dim is None else self.value_dim


@dataclass(frozen=True)
class RetNetState(State):
    """Decoding state: ``s [B, H, d_k, d_v]`` = Σ_m γ^{n−m} K_mᵀ V_m, float32 (float64 for float64)."""

    s: Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def retention_log_decays(num_heads: int, *, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """log γ_h with γ_h = 1 − 2^{−5−h}, h = 0 .. H−1 (Sun et al. 2023, Sec. 2.2): ``[H]``, all < 0."""
    h = torch.arange(num_heads, dtype=torch.float64)
    return torch.log1p(-torch.exp2(-5.0 - h)).to(device=device, dtype=dtype)


@MIXERS.register("retnet")
class RetNet(Mixer):
    """Multi-scale retention (Sun et al. 2023), x ``[B, T, D]`` -> ``[B, T, D]``; see the module docstring."""

    config_class = RetNetConfig
    config: RetNetConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·H·(C·(d_k + d_v) + d_k·d_v)", time_exponent=1)
    example_options = {"chunk_size": 4}
    residual_projections = ("out_proj.weight",)

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__(config)
        d, dv = config.dim, config.v_dim
        self.in_proj = nn.Linear(d, 2 * d + 2 * dv, bias=False)  # [W_Q, W_K, W_V, W_G]
        self.out_proj = nn.Linear(dv, d, bias=False)  # W_O
        half = config.head_dim // 2
        exps = torch.linspace(0, 1, half, dtype=torch.float64) if half > 1 else torch.zeros(1, dtype=torch.float64)
        self.register_buffer("theta", (config.theta_base ** -exps).float(), persistent=False)  # θ_j [d_k/2]

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs: in_proj 2·T·D·(2·D + 2·D_v) + chunked retention T·H·(2·C·(d_k + d_v) + 4·d_k·d_v)
        (per chunk Q Kᵀ and (Q Kᵀ ⊙ D) V, per token its state update and read-out) + out_proj 2·T·D_v·D, times the
        batch; rotation, norm and gate (elementwise) are not counted."""
        cfg = self.config
        t, d, dv, h = seq_len, cfg.dim, cfg.v_dim, cfg.num_heads
        c, hk, hv = min(cfg.chunk_size, seq_len), cfg.head_dim, dv // h
        total = 2 * t * d * (2 * d + 2 * dv) + t * h * (2 * c * (hk + hv) + 4 * hk * hv) + 2 * t * dv * d
        return float(batch * total)

    # -- shared pieces ----------------------------------------------------------------------------------------
    def _rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate channel pairs (2j, 2j+1) of x ``[B, H, T, d_k]`` by positions ``[T]`` · θ_j."""
        dt = _acc(x.dtype)
        angle = positions.to(dt)[:, None] * self.theta.to(dt)  # [T, d_k/2]
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)

    def _qkvg(self, x: Tensor, positions: Tensor, key_padding_mask: Tensor | None):
        """q, k ``[B, H, T, d_k]`` (rotated, k scaled), v ``[B, H, T, d_v]``, gate ``[B, T, D_v]``, log-decays g
        (``[1, H, 1]``, or ``[B, H, T]`` with zeros at padded tokens)."""
        cfg = self.config
        d, dv, h = cfg.dim, cfg.v_dim, cfg.num_heads
        q, k, v, gate = self.in_proj(x).split([d, d, dv, dv], dim=-1)
        heads = "b t (h d) -> b h t d"
        q, k, v = rearrange(q, heads, h=h), rearrange(k, heads, h=h), rearrange(v, heads, h=h)
        q = self._rotate(q, positions)
        k = self._rotate(k * cfg.head_dim ** -0.5, positions)
        g = retention_log_decays(h, device=x.device, dtype=_acc(x.dtype))[None, :, None]
        if key_padding_mask is not None:
            keep = key_padding_mask[:, None, :]
            k = k * keep[..., None].to(k.dtype)
            g = g * keep.to(g.dtype)
        return q, k, v, gate, g

    def _output(self, o: Tensor, gate: Tensor, out_dtype: torch.dtype) -> Tensor:
        """o ``[B, H, T, d_v]`` (or ``[B, H, d_v]``), gate ``[B, T, D_v]`` -> W_O(swish(gate) ⊙ PerHeadNorm(o))."""
        acc = _acc(out_dtype)
        o = o.to(acc)
        o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + self.config.norm_eps)
        o = rearrange(o, "b h t d -> b t (h d)") if o.dim() == 4 else o.flatten(1)
        return self.out_proj((F.silu(gate.to(acc)) * o).to(out_dtype))

    def _positions(self, start: int, t: int, device: torch.device) -> Tensor:
        return torch.arange(start, start + t, device=device)

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v, gate, g = self._qkvg(x, self._positions(0, x.shape[1], x.device), key_padding_mask)
        o, _ = chunked.chunked_ssd(q, k, v, g, chunk_size=self.config.chunk_size)
        return self._output(o, gate, x.dtype)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v, gate, g = self._qkvg(x, self._positions(0, x.shape[1], x.device), key_padding_mask)
        o = naive.parallel_ssd(q, k, v, g.expand(v.shape[:3]))  # (Q Kᵀ ⊙ D) V, Eq. 5
        return self._output(o, gate, x.dtype)

    # -- decoding -----------------------------------------------------------------------------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> RetNetState:
        cfg = self.config
        return RetNetState(length=0, s=torch.zeros(batch_size, cfg.num_heads, cfg.head_dim,
                                                   cfg.v_dim // cfg.num_heads, device=device, dtype=_acc(dtype)))

    def _check_state(self, state: State) -> None:
        if not isinstance(state, RetNetState):
            raise TypeError(f"state must be the RetNetState from init_state, got {type(state).__name__}")

    def _forward_state(self, x: Tensor, state: RetNetState) -> tuple[Tensor, RetNetState]:
        """Prefill in one chunked pass from S (``initial_state``), positions continuing at ``state.length``."""
        self._check_state(state)
        q, k, v, gate, g = self._qkvg(x, self._positions(state.length, x.shape[1], x.device), None)
        o, s = chunked.chunked_ssd(q, k, v, g, chunk_size=self.config.chunk_size, initial_state=state.s,
                                   output_final_state=True)
        return self._output(o, gate, x.dtype), RetNetState(length=state.length + x.shape[1], s=s.to(state.s.dtype))

    def _step(self, x_t: Tensor, state: RetNetState) -> tuple[Tensor, RetNetState]:
        """The recurrent form (Eq. 6) for one token at position ``state.length``."""
        self._check_state(state)
        q, k, v, gate, g = self._qkvg(x_t[:, None], self._positions(state.length, 1, x_t.device), None)
        o, s = recurrent.ssd_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], g[:, :, 0].expand(v.shape[:2]), state.s)
        return self._output(o, gate[:, 0], x_t.dtype), RetNetState(length=state.length + 1, s=s)
