"""``gated_deltanet``: Gated DeltaNet, the delta rule with Mamba-2's data-dependent decay (Yang, Kautz, Hatamizadeh
2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025, arXiv 2412.06464, Eq. 10, Sec. 3.3-3.4).

Per head, with the state S_t ``[d_k, d_v]`` (``ops.delta.naive`` has the recurrence and its layout):

    S_t = α_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t k_t v_tᵀ,      o_t = S_tᵀ (q_t / sqrt(d_k))
    α_t = exp(−exp(A_log) · softplus(W_a x_t + dt_bias))                                (Mamba-2's Δ·A, per head)

The layer is ``deltanet``'s (short convolutions + SiLU on q, k, v; L2-normalised q, k; β = sigmoid(W_β x)) with
the reference implementation's (flash-linear-attention ``GatedDeltaNet``) output gate: y = W_o (RMSNorm_head(o) ⊙
SiLU(W_g x)), norm_eps 1e-5. Sizes: the reference's ``head_dim`` (256 at hidden 2048, 6 heads) defaults here to
D / num_heads, so the key width is D; values are ``expand_v`` = 2 times wider (d_v = 2·d_k, value and gate width
2·D), as in the reference. That is 8·D² projection parameters (q, k: D² each; v, gate, output: 2·D² each);
``head_dim = 3·D / (4·num_heads)`` gives the reference's own proportions at hidden 2048 (6·D², Mamba-2's budget). Init (``init_weights``, Mamba-2 style, as the reference): A ~ U(0, 16), A_log =
log A; dt = exp(U(log dt_min, log dt_max)) clamped below at 1e-4, dt_bias = softplus⁻¹(dt) = dt + log(−expm1(−dt)).
``A_log``, ``dt_bias`` and the convolution weights are not weight-decayed.

The decays enter the chunked op as masked segment sums (``ops.delta.chunked``); every decay factor is in [0, 1].
x: ``[B, T, D]`` -> ``[B, T, D]``, causal only. Decoding state: ``deltanet.DeltaNetState`` (S ``[B, H, d_k, d_v]``
float32 and the q/k/v convolution windows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.ssm_init import dt_bias_
from .base import MIXERS, Capabilities, MixerConfig
from .deltanet import DeltaNet


@dataclass(frozen=True)
class GatedDeltaNetConfig(MixerConfig):
    """Options of ``gated_deltanet`` (causal only, so ``causal`` defaults to True).

    Attributes:
        head_dim: key width per head d_k (None = dim / num_heads, key width D). The reference's proportions at its
            hidden size 2048 (head_dim 256 x 6 heads: key width 0.75·D, 6·D² projection parameters like Mamba-2)
            are head_dim = 3·dim / (4·num_heads), e.g. 48 at dim 512 with 8 heads.
        expand_v: value (and gate) width over the key width (>= 1): d_v = expand_v·d_k.
        conv_size: taps of the short causal convolutions on q, k and v (>= 1).
        chunk_size: tokens per chunk of the chunkwise form (>= 1).
        norm_eps: eps of the gated per-head output RMSNorm (> 0).
        dt_min, dt_max: range of the initial step dt = softplus(dt_bias) (0 < dt_min <= dt_max).
    """

    causal: bool = True
    head_dim: int | None = None
    expand_v: int = 2
    conv_size: int = 4
    chunk_size: int = 64
    norm_eps: float = 1e-5
    dt_min: float = 1e-3
    dt_max: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_dim is not None and self.head_dim < 1:
            raise ValueError(f"head_dim must be a positive int or None, got {self.head_dim!r}")
        if self.expand_v < 1:
            raise ValueError(f"expand_v must be a positive int, got {self.expand_v!r}")
        if self.conv_size < 1:
            raise ValueError(f"conv_size must be a positive int, got {self.conv_size!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a positive float, got {self.norm_eps!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got dt_min={self.dt_min!r}, "
                             f"dt_max={self.dt_max!r}")


#: the smallest initial dt (the reference's dt_init_floor)
DT_INIT_FLOOR = 1e-4
#: A ~ U(0, A_INIT_MAX) at init (the reference's range)
A_INIT_MAX = 16.0


@MIXERS.register("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025). x ``[B, T, D]`` -> ``[B, T, D]``; module docstring."""

    config_class = GatedDeltaNetConfig
    config: GatedDeltaNetConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·(C·d + d²)", time_exponent=1)
    example_options = {"chunk_size": 4}
    no_weight_decay = ("A_log", "dt_bias", "*conv1d.weight")

    def __init__(self, config: GatedDeltaNetConfig) -> None:
        super(DeltaNet, self).__init__(config)
        d, h = config.dim, config.num_heads
        key_dim = d if config.head_dim is None else config.head_dim * h
        self._build(config, key_dim=key_dim, value_dim=key_dim * config.expand_v)
        self.a_proj = nn.Linear(d, h, bias=False)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False)
        self.A_log = nn.Parameter(torch.zeros(h))
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.init_weights(1)

    def init_weights(self, num_layers: int) -> None:
        """A ~ U(0, 16) -> A_log = log A; dt log-uniform in [dt_min, dt_max] (floor 1e-4) -> dt_bias =
        softplus⁻¹(dt) (Mamba-2's init, as the reference GatedDeltaNet)."""
        cfg = self.config
        h = cfg.num_heads
        with torch.no_grad():
            a = torch.empty(h, dtype=torch.float64).uniform_(0.0, A_INIT_MAX)
            self.A_log.copy_(a.clamp_min(1e-4).log())  # log 0 (probability 0) would be −inf
            dt_bias_(self.dt_bias, cfg.dt_min, cfg.dt_max, DT_INIT_FLOOR)

    def log_decay(self, x: Tensor) -> Tensor:
        """log α_t = −exp(A_log)·softplus(W_a x_t + dt_bias), ``[B, H, T]``, computed in float32 (float64)."""
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        a = self.a_proj(x).to(acc) + self.dt_bias.to(acc)
        return rearrange(-self.A_log.to(acc).exp() * F.softplus(a), "b t h -> b h t")

    def output_gate(self, o: Tensor, x: Tensor) -> Tensor:
        """RMSNorm_head(o) ⊙ SiLU(W_g x): o ``[B, T, H, d_v]``."""
        gate = rearrange(self.g_proj(x), "b t (h d) -> b t h d", h=self.config.num_heads)
        return o * F.silu(gate)

    def projection_flops(self, seq_len: int) -> float:
        """DeltaNet's projections plus the decay (D·H) and gate (D·D_v) projections."""
        d, h = self.config.dim, self.config.num_heads
        return super().projection_flops(seq_len) + 2.0 * seq_len * d * (h + self.value_dim)
