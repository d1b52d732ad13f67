"""``mamba``: the Mamba-1 block (S6, selective state space; Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", arXiv 2312.00752, Sec. 3.2 Algorithm 2, Sec. 3.4 Fig. 3, Sec. 3.6 for the init).

With E = expand·D channels, N = d_state and R = dt_rank, for x ``[B, T, D]``:

    (x', z) = in_proj(x)                                  D -> 2·E, no bias (``bias``)
    u       = SiLU(ShortConv(x'))                         causal depthwise, d_conv taps, with bias (``conv_bias``)
    (Δ_r, B, C) = x_proj(u)                               E -> R + 2·N, no bias
    Δ       = softplus(dt_proj(Δ_r))                      R -> E, with bias ("dt bias"); computed in float32
    h_t     = exp(Δ_t ⊗ A) ⊙ h_{t−1} + (Δ_t u_t) ⊗ B_t,   A = −exp(A_log)  [E, N]
    y_t     = h_t C_t + D ⊙ u_t                           (the selective scan, ``ops.selective_scan``)
    out     = out_proj(y ⊙ SiLU(z))                       E -> D, no bias

Initialisation (``init_weights``, after the model's generic one; the reference code's defaults): A_log[e] =
log(1, …, N) (S4D-real), D = 1, dt_proj.weight uniform in ±R^-1/2 (the reference's default "random" dt_init),
dt_proj.bias = softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max], floored at dt_init_floor, so that the initial
Δ covers [1e-3, 0.1]. ``num_heads`` (a ``MixerConfig`` field) is accepted but unused: Mamba-1 has no heads (every
one of the E channels has its own N-dimensional state).

Fast path: ``ops.selective_scan.chunked`` (chunked sequential scan with a recomputing hand-written backward; never
a ``[B, T, E, N]`` tensor). Oracle: ``ops.selective_scan.naive`` (the loop over T) and the conv's explicit sum.

Causal only. Padding (``key_padding_mask``): the conv input and Δ are zeroed at padded positions, so a padded token
neither enters the conv window (the zeros before the first token) nor the state (Δ = 0 gives decay 1 and no input):
left- and right-padded sequences give exactly the outputs of the unpadded ones at real positions.

Decoding state (``MambaState``): the conv window ``[B, d_conv − 1, E]`` and the SSM state h ``[B, E, N]``, float32
(float64 for float64); ``forward(state=...)`` prefills in one chunked pass. Under bf16 autocast the four
projections run in bf16, Δ's projection, the scan and the state in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.short_conv import ShortConv
from ..nn.ssm_init import dt_bias_
from ..nn.state import State
from ..ops.selective_scan import chunked, naive, recurrent
from ..ops.selective_scan.naive import state_dtype
from .base import MIXERS, Capabilities, Mixer, MixerConfig
from ..ops.amp import no_autocast


@dataclass(frozen=True)
class MambaConfig(MixerConfig):
    """Options of ``mamba`` (defaults of the reference ``mamba_simple.Mamba``).

    Attributes:
        d_state: N, the state size per channel (16).
        d_conv: taps of the causal depthwise convolution (4).
        expand: E = expand·dim inner channels (2).
        dt_rank: R, the rank of Δ's projection; None = ceil(dim / 16).
        dt_min, dt_max: range of the initial Δ (log-uniform; 1e-3, 0.1).
        dt_init_floor: lower bound of the initial Δ (1e-4).
        bias: biases on in_proj and out_proj (False).
        conv_bias: bias on the convolution (True).
        chunk_size: tokens per chunk of the fast scan (64; bounds its working set and the states kept for the
            backward).

    Raises:
        ValueError: a non-positive size, dt_min/dt_max/dt_init_floor not with 0 < dt_min <= dt_max and
            dt_init_floor > 0.
    """

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    bias: bool = False
    conv_bias: bool = True
    chunk_size: int = chunked.CHUNK_SIZE

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_state", "d_conv", "expand", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.dt_rank is not None and self.dt_rank < 1:
            raise ValueError(f"dt_rank must be a positive int or None (= ceil(dim / 16)), got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min, dt_max must satisfy 0 < dt_min <= dt_max, got dt_min={self.dt_min!r}, "
                             f"dt_max={self.dt_max!r}")
        if not self.dt_init_floor > 0:
            raise ValueError(f"dt_init_floor must be > 0, got {self.dt_init_floor!r}")

    @property
    def d_inner(self) -> int:
        """E = expand·dim."""
        return self.expand * self.dim

    @property
    def rank(self) -> int:
        """R: ``dt_rank`` or ceil(dim / 16)."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.dim / 16)


@dataclass(frozen=True)
class MambaState(State):
    """Decoding state of ``mamba``: ``conv [B, d_conv − 1, E]`` (the last inputs of the convolution) and
    ``ssm [B, E, N]`` (h), float32 (float64 for float64). Fixed size whatever the length."""

    conv: Tensor
    ssm: Tensor


@MIXERS.register("mamba")
class Mamba(Mixer):
    """The Mamba-1 block (module docstring). x ``[B, T, D]`` -> ``[B, T, D]``; O(T·E·N) time, O(T·E) memory."""

    config_class = MambaConfig
    config: MambaConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·d·N", time_exponent=1)
    example_options = {"d_state": 4, "chunk_size": 4}
    residual_projections = ("out_proj.weight",)
    no_weight_decay = ("A_log", "D", "dt_proj.bias", "conv.weight", "conv.bias")

    def __init__(self, config: MambaConfig) -> None:
        super().__init__(config)
        d, e, n, r = config.dim, config.d_inner, config.d_state, config.rank
        self.in_proj = nn.Linear(d, 2 * e, bias=config.bias)
        self.conv = ShortConv(e, config.d_conv, bias=config.conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.A_log = nn.Parameter(torch.empty(e, n))
        self.D = nn.Parameter(torch.empty(e))
        self.out_proj = nn.Linear(e, d, bias=config.bias)
        self.init_weights(1)

    def init_weights(self, num_layers: int) -> None:
        """The paper's init of A_log, D and Δ's projection (module docstring); the other weights keep theirs."""
        cfg = self.config
        e, n = cfg.d_inner, cfg.d_state
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(e, n))
            self.D.fill_(1.0)
            std = cfg.rank ** -0.5
            self.dt_proj.weight.uniform_(-std, std)
            dt_bias_(self.dt_proj.bias, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs: 2·B·T·(D·2E + E·(R + 2N) + R·E + E·D) for the projections, 2·B·T·E·K for the
        convolution, 7·B·T·E·N for the scan (Δ·A, its exp, (Δu)·B, the multiply-add of the recurrence and of
        C·h) and 12·B·T·E elementwise (SiLU twice, softplus, Δu, D·u, the gate)."""
        cfg = self.config
        d, e, n, r, k = cfg.dim, cfg.d_inner, cfg.d_state, cfg.rank, cfg.d_conv
        bt = batch * seq_len
        proj = 2 * bt * (d * 2 * e + e * (r + 2 * n) + r * e + e * d)
        return float(proj + 2 * bt * e * k + 7 * bt * e * n + 12 * bt * e)

    # -- the block around the scan -------------------------------------------------------------------------
    def _delta(self, dt_r: Tensor) -> Tensor:
        """Δ = softplus(dt_proj(Δ_r)) in float32 (float64 for float64): under autocast a bf16 dt bias (about
        −7 for Δ = 1e-3) would be off by 3 % of Δ; the projection is small (R·E per token)."""
        acc = state_dtype(dt_r.dtype)
        with no_autocast(dt_r.device):
            return F.softplus(F.linear(dt_r.to(acc), self.dt_proj.weight.to(acc), self.dt_proj.bias.to(acc)))

    def _ssm_inputs(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """u ``[..., E]`` -> (Δ ``[..., E]``, B, C ``[..., N]``, A ``[E, N]``)."""
        r, n = self.config.rank, self.config.d_state
        dt_r, b, c = self.x_proj(u).split([r, n, n], dim=-1)
        return self._delta(dt_r), b, c, -torch.exp(self.A_log.to(state_dtype(u.dtype)))

    def _run(self, x: Tensor, mask: Tensor | None, conv, scan) -> tuple[Tensor, object]:
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, E] each
        if mask is not None:
            xs = xs * mask[..., None].to(xs.dtype)  # a padded token is the zeros before the first token
        xs, conv_out = conv(xs)
        u = F.silu(xs)
        delta, b, c, a = self._ssm_inputs(u)
        if mask is not None:
            delta = delta * mask[..., None].to(delta.dtype)  # Δ = 0: decay 1 and no input, the state is kept
        y, h = scan(u, delta, a, b, c)
        y = y * F.silu(z)
        return self.out_proj(y), (conv_out, h)

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        cs = self.config.chunk_size
        return self._run(x, key_padding_mask, lambda v: (self.conv(v), None),
                         lambda *a: chunked.selective_scan(*a, self.D, chunk_size=cs))[0]

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return self._run(x, key_padding_mask, lambda v: (self.conv.oracle(v), None),
                         lambda *a: naive.selective_scan(*a, self.D))[0]

    # -- decoding ------------------------------------------------------------------------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        cfg = self.config
        acc = state_dtype(dtype)
        return MambaState(length=0, conv=self.conv.init_state(batch_size, device=device, dtype=acc),
                          ssm=torch.zeros(batch_size, cfg.d_inner, cfg.d_state, device=device, dtype=acc))

    def _check_state(self, state: State) -> MambaState:
        if not isinstance(state, MambaState):
            raise TypeError(f"state must be the MambaState from init_state, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, MambaState]:
        """Prefill in one pass: the conv continues from its window, the chunked scan from h."""
        state = self._check_state(state)
        cs = self.config.chunk_size
        y, (window, h) = self._run(
            x, None, lambda v: self.conv.forward_state(v, state.conv),
            lambda *a: chunked.selective_scan(*a, self.D, initial_state=state.ssm, output_final_state=True,
                                              chunk_size=cs))
        return y, MambaState(length=state.length + x.shape[1], conv=window, ssm=h.to(state.ssm.dtype))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, MambaState]:
        state = self._check_state(state)
        y, (window, h) = self._run(
            x_t[:, None], None, lambda v: self._conv_step(v, state.conv),
            lambda u, delta, a, b, c: self._scan_step(u, delta, a, b, c, state.ssm))
        return y[:, 0], MambaState(length=state.length + 1, conv=window, ssm=h)

    def _conv_step(self, v: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
        y, new = self.conv.step(v[:, 0], window)
        return y[:, None], new

    def _scan_step(self, u, delta, a, b, c, h) -> tuple[Tensor, Tensor]:
        y, h = recurrent.selective_scan_step(u[:, 0], delta[:, 0], a, b[:, 0], c[:, 0], self.D, h)
        return y[:, None], h
