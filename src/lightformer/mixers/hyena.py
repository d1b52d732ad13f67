"""``hyena``: the Hyena operator (Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Ré 2023, "Hyena Hierarchy:
Towards Larger Convolutional Language Models", ICML; arXiv 2302.10866), order N = ``order`` (default 2).

A recurrence of N−1 gated long convolutions (Sec. 3.1, Def. 3.1; Algorithm 3):

    (x_0, x_1, .., x_(N−1), v) = ShortConv(W_in x)          W_in: D -> (N+1)·D, a causal depthwise conv of width 3
    v ← h_i * (v ⊙ x_i) + b_i ⊙ (v ⊙ x_i)                    for i = N−1 .. 1   (long causal convolution by FFT)
    y = W_out (v ⊙ x_0)

The long filters h_i are implicit (Sec. 3.3, Algorithm 1, the reference's ``HyenaFilter``): a position embedding
z_t = [t, cos(f·ω_t), −sin(f·ω_t)] (``emb_dim = 3``: one band), an FFN emb_dim -> F -> F -> F -> (N−1)·D with sine
activations sin(w·x) (one learned frequency per unit, initialised to ``w``, shared by the three activations as in
the reference), and an exponential window exp(−t·|δ_c|) with δ spread between the decays that reach ``target``
after ``fast_decay_pct`` and ``slow_decay_pct`` of the sequence (fixed, not trained). b is a per-channel skip
("bias" in the reference), initialised N(0, 1). F = ``filter_order`` = 64.

The filters are generated for the actual T: the positions t = linspace(0, 1, T) and ω = 2π·l/T are those of the
sequence being mixed, so no ``l_max`` / ``max_len`` is needed and any T is accepted. Consequence: the filter applied
at lag l depends on T, so a sequence's outputs change when it is padded to a longer T: ``padding_mask`` is not
supported (capabilities say so). Causality holds (the filter does not depend on the tokens).

Decoding: none (``capabilities.decode = False``). The filters span the whole sequence and change with T, so Hyena
has no finite state; an exact decode would keep the whole input history and recompute the filter for every new T
(O(T) memory and O(T·D·F) per token), which is not a recurrent state. Oracle: the same filters through the explicit
O(T²) convolution (``ops.longconv.naive.causal_conv``) and the naive short convolution.

x: ``[B, T, D]`` -> ``[B, T, D]``; O(T·log T·D·(N−1) + T·D·(N+2)·D + T·F·(F + (N−1)·D)) time, O(T·D·N) memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn.short_conv import ShortConv
from ..ops.longconv import fft, kernels, naive
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class HyenaConfig(MixerConfig):
    """Attributes:
        order: N >= 2 (N−1 long convolutions, N+1 projections). Default 2.
        filter_order: F, the width of the implicit filter's FFN, >= 1. Default 64.
        emb_dim: width of the filter's position embedding (odd, >= 3). Default 3.
        w: initial frequency of the sine activations, > 0. Default 1.
        short_filter_order: taps of the short causal convolution on the projections, >= 1. Default 3.
        fast_decay_pct, slow_decay_pct: fractions of the sequence after which the fastest / slowest window reaches
            ``target`` (0 < fast <= slow). Default 0.3, 1.5.
        target: the window's value at that point, in (0, 1). Default 1e-2.
    """

    order: int = 2
    filter_order: int = 64
    emb_dim: int = 3
    w: float = 1.0
    short_filter_order: int = 3
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    target: float = 1e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order < 2:
            raise ValueError(f"order must be an int >= 2, got {self.order!r}")
        if self.filter_order < 1:
            raise ValueError(f"filter_order must be a positive int, got {self.filter_order!r}")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be an odd int >= 3, got {self.emb_dim!r}")
        if not self.w > 0:
            raise ValueError(f"w must be positive, got {self.w!r}")
        if self.short_filter_order < 1:
            raise ValueError(f"short_filter_order must be a positive int, got {self.short_filter_order!r}")
        if not 0 < self.fast_decay_pct <= self.slow_decay_pct:
            raise ValueError(f"fast_decay_pct and slow_decay_pct must satisfy 0 < fast_decay_pct <= slow_decay_pct, "
                             f"got {self.fast_decay_pct!r}, {self.slow_decay_pct!r}")
        if not 0 < self.target < 1:
            raise ValueError(f"target must be in (0, 1), got {self.target!r}")


class Sin(nn.Module):
    """sin(freq ⊙ x) with a learned frequency per unit (``freq [F]``, initialised to w)."""

    def __init__(self, dim: int, w: float) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.full((dim,), float(w)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq.to(x.dtype) * x)


@MIXERS.register("hyena")
class Hyena(Mixer):
    """The Hyena operator of order N (Poli et al. 2023). x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = HyenaConfig
    config: HyenaConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=False, decode=False,
                                complexity="T·log T·D·(N−1) + T·D²·(N+2) + T·F·(F + (N−1)·D)", time_exponent=1,
                                log_exponent=1)
    example_options = {"filter_order": 8}
    residual_projections = ("out_proj.weight",)
    no_weight_decay = ("short_filter.weight", "filter_bias", "implicit_filter.*freq")

    def __init__(self, config: HyenaConfig) -> None:
        super().__init__(config)
        d, n, f = config.dim, config.order, config.filter_order
        self.in_proj = nn.Linear(d, (n + 1) * d)
        self.short_filter = ShortConv((n + 1) * d, config.short_filter_order)
        act = Sin(f, config.w)  # one module, so its frequencies are shared by the three activations
        self.implicit_filter = nn.Sequential(nn.Linear(config.emb_dim, f), act, nn.Linear(f, f), act,
                                             nn.Linear(f, f), act, nn.Linear(f, (n - 1) * d, bias=False))
        self.filter_bias = nn.Parameter(torch.randn((n - 1) * d))
        self.register_buffer("deltas", kernels.hyena_deltas((n - 1) * d, config.fast_decay_pct,
                                                            config.slow_decay_pct, config.target))
        self.out_proj = nn.Linear(d, d)

    def init_weights(self, num_layers: int) -> None:
        """The filter's skip b ~ N(0, 1) and sine frequencies = w (the reference), after the model's generic pass
        (which gives the filter FFN's Linears N(0, 0.02))."""
        with torch.no_grad():
            self.filter_bias.normal_()
            self.implicit_filter[1].freq.fill_(float(self.config.w))

    def filters(self, length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The implicit long filters for T = ``length``: ``[(N−1)·D, T]`` (in the parameters' dtype, or the autocast
        dtype of the FFN)."""
        z, t = kernels.hyena_positions(length, self.config.emb_dim, dtype=dtype, device=device)
        h = self.implicit_filter(z)  # [T, (N−1)·D]
        return kernels.exp_modulation(t, h, self.deltas.to(h.dtype)).transpose(0, 1)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs: W_in (2·D·(N+1)·D per token), the short conv (2·K·(N+1)·D), the filter FFN (per position
        2·(emb·F + 2·F² + F·(N−1)·D) plus the sines and window), the N−1 FFT convolutions (per channel B FFTs of the
        input, one of the filter, B inverse FFTs and products: ``fft.conv_flops``, 2.5·n·log2 n per FFT, n =
        fast_size(2T−1)), the gates and skips (~4·(N−1)·D + D per token) and W_out (2·D²)."""
        cfg = self.config
        d, n, f, t = cfg.dim, cfg.order, cfg.filter_order, seq_len
        token = batch * t * (2.0 * d * (n + 1) * d + 2.0 * cfg.short_filter_order * (n + 1) * d
                             + 4.0 * (n - 1) * d + d + 2.0 * d * d)
        filt = t * (2.0 * (cfg.emb_dim * f + 2 * f * f + f * (n - 1) * d) + 3 * f + 3.0 * (n - 1) * d)
        conv = (n - 1) * d * fft.conv_flops(t, batch, 1, batch)
        return token + filt + conv

    def _mix(self, x: Tensor, naive_ops: bool) -> Tensor:
        d = self.config.dim
        z = self.in_proj(x)
        z = self.short_filter.oracle(z) if naive_ops else self.short_filter(z)  # [B, T, (N+1)·D]
        *xs, v = z.split(d, dim=-1)
        k = self.filters(x.shape[1], self.filter_bias.dtype, x.device)  # [(N−1)·D, T]
        conv = naive.causal_conv if naive_ops else fft.causal_conv
        for i, x_i in enumerate(reversed(xs[1:])):
            v = v * x_i  # [B, T, D]
            k_i, b_i = k[i * d:(i + 1) * d], self.filter_bias[i * d:(i + 1) * d]
            v = conv(v.transpose(1, 2), k_i).transpose(1, 2) + b_i.to(v.dtype) * v
        return self.out_proj(v * xs[0])

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._mix(x, naive_ops=False)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._mix(x, naive_ops=True)
