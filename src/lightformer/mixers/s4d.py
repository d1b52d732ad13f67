"""``s4d``: the diagonal state-space layer S4D (Gu, Gupta, Goel, Ré 2022, "On the Parameterization and
Initialization of Diagonal State Space Models", NeurIPS; arXiv 2206.11893).

One single-input single-output SSM per channel (H = D channels), with a complex diagonal state matrix of N/2 modes
(``d_state`` = N, the size of the real system: the conjugate modes are the 2·Re below), discretised by zero-order
hold (Sec. 2, Eq. 3; B = 1 as in the reference, its role taken by C):

    Ā = exp(ΔA),   B̄ = (exp(ΔA) − 1)/A · B,   x_t = Ā x_(t−1) + B̄ u_t,   y_t = 2·Re(C x_t) + D u_t

computed in parallel as a convolution with the kernel K_l = 2·Re Σ_n C_n B̄_n Ā_n^l (a Vandermonde product,
Sec. 3.1), by FFT (``ops.longconv.fft``). The layer's output (the reference's ``S4D`` module) is

    out = GLU(W_out · GELU(y)),    W_out: D -> 2D (a position-wise Linear; the reference's 1x1 Conv1d), GLU halves it

Parameters: ``log_dt [H]`` (Δ = exp(log_dt), log Δ ~ U[log dt_min, log dt_max]), ``log_A_real [H, N/2]``
(Re A = −exp(log_A_real) < 0 keeps every mode stable), ``A_imag [H, N/2]``, ``C [H, N/2, 2]`` (complex, stored as
real pairs, init complex normal), ``D [H]`` (randn), ``output_linear`` (D -> 2D). Inits (``init``), Sec. 4:
``"lin"`` = S4D-Lin, A_n = −1/2 + iπn; ``"real"`` = S4D-Real, A_n = −(n+1). The algorithm is the same, so the init
is an option, not a separate mixer.

Causal only (the paper's bidirectional variant runs two kernels; not implemented). Padding: a padded token's input
is zeroed, so it leaves no trace in the state. Decoding: the complex diagonal state x ``[B, H, N/2]``
(``S4DState``; complex64, complex128 for float64), one step O(H·N) whatever the context, prefill in one pass (the
kernel convolution plus the free response of the state, ``fft.diag_ssm``). Oracle: the recurrence
(``ops.longconv.naive.diag_ssm``). x: ``[B, T, D]`` -> ``[B, T, D]``; O(T·log T·D + T·D·N) time, O(T·D) memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.state import State
from ..ops.longconv import fft, kernels, naive
from .base import MIXERS, Capabilities, Mixer, MixerConfig

S4D_INITS = ("lin", "real")


@dataclass(frozen=True)
class S4DConfig(MixerConfig):
    """Attributes:
        d_state: N, the real state size per channel (N/2 complex modes); even, >= 2. Default 64 (the reference).
        dt_min, dt_max: the range of the initial step Δ (log-uniform), 0 < dt_min <= dt_max. Default 1e-3, 1e-1.
        init: ``"lin"`` (S4D-Lin, A = −1/2 + iπn) or ``"real"`` (S4D-Real, A = −(n+1)).
    """

    d_state: int = 64
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    init: str = "lin"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_state < 2 or self.d_state % 2:
            raise ValueError(f"d_state must be an even int >= 2, got {self.d_state!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {self.dt_min!r}, "
                             f"{self.dt_max!r}")
        if self.init not in S4D_INITS:
            raise ValueError(f"init must be one of {S4D_INITS}, got {self.init!r}")


@dataclass(frozen=True)
class S4DState(State):
    """Decoding state: ``x: [B, C, N/2]`` complex (complex64; complex128 for float64), the diagonal SSM state
    (C = channels: D for ``s4d``; ``[B, d, d, H, N/2]`` for ``h3``'s per-head outer products)."""

    x: Tensor


class DiagonalSSM(nn.Module):
    """The S4D kernel parameters of C channels: ``log_dt [C]``, ``log_A_real [C, N/2]``, ``A_imag [C, N/2]``,
    ``C [C, N/2, 2]`` (complex as real pairs), discretised by ZOH (``discretize``). Shared by ``s4d`` and ``h3``."""

    def __init__(self, channels: int, d_state: int, dt_min: float, dt_max: float, init: str) -> None:
        super().__init__()
        n2 = d_state // 2
        self.channels, self.modes, self.dt_range, self.init = channels, n2, (dt_min, dt_max), init
        self.log_dt = nn.Parameter(torch.empty(channels))
        self.log_A_real = nn.Parameter(torch.empty(channels, n2))
        self.A_imag = nn.Parameter(torch.empty(channels, n2))
        self.C = nn.Parameter(torch.empty(channels, n2, 2))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        lo, hi = self.dt_range
        self.log_dt.uniform_(math.log(lo), math.log(hi))
        n = torch.arange(self.modes, dtype=self.log_dt.dtype)
        if self.init == "lin":  # S4D-Lin: A_n = −1/2 + iπn
            self.log_A_real.fill_(math.log(0.5))
            self.A_imag.copy_((math.pi * n).expand_as(self.A_imag))
        else:  # S4D-Real: A_n = −(n + 1)
            self.log_A_real.copy_(torch.log(n + 1).expand_as(self.log_A_real))
            self.A_imag.zero_()
        self.C.normal_(0.0, math.sqrt(0.5))  # complex normal: E|C|² = 1

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(ΔA, B̄, C)``, each ``[C, N/2]`` complex (of the parameters' dtype): ZOH with B = 1."""
        a = torch.complex(-torch.exp(self.log_A_real), self.A_imag)  # [C, N/2]
        dtA = torch.exp(self.log_dt)[:, None] * a
        b_bar = (kernels.cexp(dtA) - 1.0) / a
        return dtA, b_bar, torch.view_as_complex(self.C)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


@MIXERS.register("s4d")
class S4D(Mixer):
    """S4D (Gu et al. 2022): a diagonal SSM per channel by FFT convolution, GELU, Linear D -> 2D, GLU.
    x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = S4DConfig
    config: S4DConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·log T·D + T·D·N", time_exponent=1, log_exponent=1)
    example_options = {"d_state": 8}
    residual_projections = ("output_linear.weight",)
    no_weight_decay = ("ssm.log_dt", "ssm.log_A_real", "ssm.A_imag", "D")

    def __init__(self, config: S4DConfig) -> None:
        super().__init__(config)
        h = config.dim
        self.ssm = DiagonalSSM(h, config.d_state, config.dt_min, config.dt_max, config.init)
        self.D = nn.Parameter(torch.randn(h))
        self.output_linear = nn.Linear(h, 2 * h)

    def init_weights(self, num_layers: int) -> None:
        """The SSM's init (Δ, A by ``init``, C complex normal) and D ~ N(0, 1), after the model's generic pass."""
        self.ssm.reset_parameters()
        with torch.no_grad():
            self.D.normal_()

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs: the kernel (one complex multiply-add, 8 FLOPs, per channel, mode and lag: 8·D·(N/2)·T),
        the FFT convolution (per channel one FFT of u and of K and one inverse, 2.5·n·log2 n each, n =
        fast_size(2T − 1), plus 6·(n/2+1) for the product), D skip and GELU (~10·D per token), Linear D -> 2D
        (2·D·2D per token) and GLU (~5·D per token)."""
        d, n2, t = self.config.dim, self.config.d_state // 2, seq_len
        kernel = 8.0 * d * n2 * t
        conv = d * fft.conv_flops(t, batch, 1, batch)
        token = batch * t * (10.0 * d + 4.0 * d * d + 5.0 * d)
        return kernel + conv + token

    # -- forward ------------------------------------------------------------------------------------------------
    def _output(self, y: Tensor, u: Tensor) -> Tensor:
        """y, u ``[B, D, T]`` -> GLU(W_out GELU(y + D u)) ``[B, T, D]``."""
        y = F.gelu(y + self.D[:, None].to(y.dtype) * u)
        return F.glu(self.output_linear(y.transpose(1, 2)), dim=-1)

    def _input(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = x.transpose(1, 2)  # [B, D, T]
        if key_padding_mask is not None:
            u = u * key_padding_mask[:, None, :].to(u.dtype)
        return u

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = self._input(x, key_padding_mask)
        y, _ = fft.diag_ssm(u, *self.ssm.discretize())
        return self._output(y, u)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = self._input(x, key_padding_mask)
        y, _ = naive.diag_ssm(u, *self.ssm.discretize())
        return self._output(y.to(u.dtype), u)

    # -- decoding ----------------------------------------------------------------------------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> S4DState:
        x = torch.zeros(batch_size, self.config.dim, self.config.d_state // 2, device=device,
                        dtype=complex_dtype(dtype))
        return S4DState(length=0, x=x)

    def _check_state(self, state: State) -> S4DState:
        if not isinstance(state, S4DState):
            raise TypeError(f"state must be the S4DState from init_state, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, S4DState]:
        state = self._check_state(state)
        u = self._input(x, None)
        dtA, b_bar, c = self.ssm.discretize()
        y, final = fft.diag_ssm(u, dtA, b_bar, c, initial_state=state.x.to(dtA.dtype), output_final_state=True)
        return self._output(y, u), S4DState(length=state.length + x.shape[1], x=final.to(state.x.dtype))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, S4DState]:
        state = self._check_state(state)
        dtA, b_bar, c = (p.to(state.x.dtype) for p in self.ssm.discretize())
        u = x_t.to(state.x.real.dtype)  # [B, D]
        s = kernels.cexp(dtA) * state.x + b_bar * u[..., None]  # [B, D, N/2]
        y = 2.0 * (c * s).sum(-1).real  # [B, D]
        out = self._output(y[..., None], u[..., None])[:, 0]
        return out.to(x_t.dtype), S4DState(length=state.length + 1, x=s)
