"""``mamba2``: the Mamba-2 block, a selective state-space model with a scalar decay per head computed by the
chunked state-space-duality (SSD) algorithm (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and
Efficient Algorithms Through Structured State Space Duality", ICML, arXiv 2405.21060).

Per layer (Sec. 7.1, Fig. 6 "Mamba-2 block"; reference ``mamba_ssm/modules/mamba2.py``), with D_i = expand·D,
H = D_i / headdim heads of P = headdim channels, G = ngroups groups of B and C with N = d_state:

    [z, x, B, C, dt] = in_proj(u)                   z, x: [T, D_i]; B, C: [T, G·N]; dt: [T, H]
    [x, B, C] = SiLU(conv1d([x, B, C]))             causal depthwise, d_conv taps (``nn.ShortConv``)
    Δ_t = softplus(dt_t + dt_bias),  A_h = −exp(A_log_h)
    h_t = exp(Δ_t A_h) · h_{t−1} + Δ_t x_t B_tᵀ,    y_t = h_t C_t + D_h x_t     (Sec. 3-4, Eq. 1-2, scalar A_t)
    out = out_proj(RMSNorm(y ⊙ SiLU(z)))            gated RMSNorm over groups of D_i / G channels

computed as SSD (``ops.ssd``): q = C, k = B, v = Δ·x, log-decay g = Δ·A (the state h is the transpose
``[P, N]`` of the op's ``[N, P]``). Heads h of group h // (H / G) share B and C.

Heads: H = expand·dim / headdim, as in the paper and ``mamba_ssm`` (headdim = 64 for every model size), so a user
gets the published head size. ``num_heads`` of ``MixerConfig`` is accepted (the model passes it to every mixer)
and ignored: it neither sets H nor the head size.

Defaults: d_state = 64 (paper: 128; 64 keeps the CPU cost of the state terms on par with the intra-chunk ones),
d_conv = 4, expand = 2, headdim = 64, ngroups = 1, chunk_size = 64 (reference 256, which is GPU-sized), dt in
[1e-3, 0.1] for the dt-bias init (inverse softplus of a log-uniform sample, floor 1e-4), A ~ U(1, 16) as
A_log = log A, D = 1, RMSNorm eps 1e-5, no biases in the projections, a bias in the convolution.

x: ``[B, T, D]`` -> ``[B, T, D]``, causal only. Padding: padded tokens are zeroed before the projection (so the
convolution sees zeros), and get Δ·x = 0 and g = 0, so they leave the state unchanged: left or right padding gives
the unpadded outputs. Decoding state (``Mamba2State``): the convolution window ``[B, d_conv − 1, D_i + 2·G·N]`` and
the SSM state ``[B, H, P, N]``, float32 (float64 for float64). Complexity O(T·H·(C·(N + P) + N·P)) for the mixing.
The oracle runs the same parameters through ``ops.ssd.naive.recurrent_ssd`` and ``ShortConv.oracle``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.short_conv import ShortConv
from ..nn.ssm_init import dt_bias_
from ..nn.state import State
from ..ops.ssd import chunked, naive, recurrent
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class Mamba2Config(MixerConfig):
    """Options of ``mamba2`` (``num_heads`` is ignored: H = expand·dim / headdim, see the module docstring).

    Attributes:
        d_state: N, the state size per head and channel (B and C width per group).
        d_conv: taps of the causal depthwise convolution over x, B, C.
        expand: E, the inner width D_i = E·dim.
        headdim: P, channels per head; must divide E·dim.
        ngroups: G, groups of heads sharing B and C; must divide H.
        chunk_size: tokens per chunk of the SSD algorithm.
        dt_min, dt_max: range of the initial Δ (log-uniform), 0 < dt_min <= dt_max.
        dt_init_floor: lower clamp of the initial Δ.
        norm_eps: eps of the gated RMSNorm.
    """

    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 64
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        inner = self.expand * self.dim
        if inner % self.headdim:
            raise ValueError(f"headdim={self.headdim} must divide expand·dim={inner}")
        if (inner // self.headdim) % self.ngroups:
            raise ValueError(f"ngroups={self.ngroups} must divide the number of heads expand·dim/headdim="
                             f"{inner // self.headdim}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min, dt_max must satisfy 0 < dt_min <= dt_max, got {self.dt_min!r}, "
                             f"{self.dt_max!r}")
        if not self.dt_init_floor > 0:
            raise ValueError(f"dt_init_floor must be > 0, got {self.dt_init_floor!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.dim

    @property
    def heads(self) -> int:
        """H = expand·dim / headdim (not ``num_heads``)."""
        return self.d_inner // self.headdim


@dataclass(frozen=True)
class Mamba2State(State):
    """Decoding state: ``conv [B, d_conv − 1, D_i + 2·G·N]`` (the last inputs of the convolution) and
    ``ssm [B, H, P, N]`` (h_t), float32 (float64 for float64)."""

    conv: Tensor
    ssm: Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@MIXERS.register("mamba2")
class Mamba2(Mixer):
    """The Mamba-2 block (Dao & Gu 2024), x ``[B, T, D]`` -> ``[B, T, D]``; see the module docstring."""

    config_class = Mamba2Config
    config: Mamba2Config
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·E·D·(C + N)", time_exponent=1)
    example_options = {"d_state": 8, "headdim": 16, "ngroups": 2, "chunk_size": 4}
    residual_projections = ("out_proj.weight",)
    no_weight_decay = ("A_log", "D", "dt_bias", "conv.weight", "conv.bias", "norm_weight")

    def __init__(self, config: Mamba2Config) -> None:
        super().__init__(config)
        cfg = config
        di, h, gn = cfg.d_inner, cfg.heads, cfg.ngroups * cfg.d_state
        self.in_proj = nn.Linear(cfg.dim, 2 * di + 2 * gn + h, bias=False)
        self.conv = ShortConv(di + 2 * gn, cfg.d_conv)
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.empty(h))
        self.norm_weight = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, cfg.dim, bias=False)
        self.init_weights(1)

    def init_weights(self, num_layers: int) -> None:
        """Mamba-2's init (``mamba_ssm`` ``Mamba2.__init__``): Δ = exp(U(log dt_min, log dt_max)) clamped to
        ``dt_init_floor``, dt_bias = softplus⁻¹(Δ) = Δ + log(1 − exp(−Δ)); A ~ U(1, 16), A_log = log A; D = 1;
        the norm's weight 1."""
        cfg = self.config
        with torch.no_grad():
            dt_bias_(self.dt_bias, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)
            self.A_log.copy_(torch.empty(cfg.heads, dtype=torch.float64).uniform_(1, 16).log())
            self.D.fill_(1.0)
            self.norm_weight.fill_(1.0)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs: in_proj 2·T·D·(2·D_i + 2·G·N + H) + convolution 2·T·(D_i + 2·G·N)·K + SSD
        T·H·(2·C·(N + P) + 4·N·P) (per chunk Q Kᵀ and (Q Kᵀ ⊙ L) V, per token its state update and read-out) +
        out_proj 2·T·D_i·D, times the batch; elementwise work (decays, gate, norm) is not counted."""
        cfg = self.config
        t, d, di, h, n, p = seq_len, cfg.dim, cfg.d_inner, cfg.heads, cfg.d_state, cfg.headdim
        gn, c = cfg.ngroups * n, min(cfg.chunk_size, seq_len)
        total = (2 * t * d * (2 * di + 2 * gn + h) + 2 * t * (di + 2 * gn) * cfg.d_conv
                 + t * h * (2 * c * (n + p) + 4 * n * p) + 2 * t * di * d)
        return float(batch * total)

    # -- shared pieces ----------------------------------------------------------------------------------------
    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        di, h = self.config.d_inner, self.config.heads
        return zxbcdt.split([di, zxbcdt.shape[-1] - di - h, h], dim=-1)  # z, xBC, dt

    def _ssm_inputs(self, xbc: Tensor, dt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """xBC ``[..., D_i + 2GN]`` (after conv + SiLU), dt ``[..., H]`` -> x ``[..., H, P]``, B, C ``[..., G, N]``,
        v = Δ·x ``[..., H, P]`` (dtype of x), g = Δ·A ``[..., H]`` (float32, float64 for float64)."""
        cfg = self.config
        gn = cfg.ngroups * cfg.d_state
        x, b, c = xbc.split([cfg.d_inner, gn, gn], dim=-1)
        acc = _acc(xbc.dtype)
        delta = F.softplus(dt.to(acc) + self.dt_bias.to(acc))  # Δ [..., H]
        g = delta * -torch.exp(self.A_log.to(acc))  # log-decay Δ·A <= 0
        x = x.unflatten(-1, (cfg.heads, cfg.headdim))
        v = (x * delta[..., None]).to(x.dtype)
        return x, b.unflatten(-1, (cfg.ngroups, cfg.d_state)), c.unflatten(-1, (cfg.ngroups, cfg.d_state)), v, g

    def _output(self, y: Tensor, x: Tensor, z: Tensor, out_dtype: torch.dtype) -> Tensor:
        """y, x ``[..., H, P]``, z ``[..., D_i]`` -> out_proj(RMSNorm((y + D·x) ⊙ SiLU(z))) ``[..., D]``."""
        cfg = self.config
        acc = _acc(out_dtype)
        y = (y.to(acc) + x.to(acc) * self.D.to(acc)[:, None]).flatten(-2)  # [..., D_i]
        y = (y * F.silu(z.to(acc))).unflatten(-1, (cfg.ngroups, -1))  # gated, then normed per group
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + cfg.norm_eps)
        y = y.flatten(-2) * self.norm_weight.to(acc)
        return self.out_proj(y.to(out_dtype))

    def _prepare(self, x: Tensor, key_padding_mask: Tensor | None, naive_ops: bool):
        mask = None if key_padding_mask is None else key_padding_mask[..., None].to(x.dtype)
        if mask is not None:
            x = x * mask
        z, xbc, dt = self._split(self.in_proj(x))
        xbc = F.silu(self.conv.oracle(xbc) if naive_ops else self.conv(xbc))
        xs, b, c, v, g = self._ssm_inputs(xbc, dt)
        if mask is not None:  # padded tokens: no input, no decay
            v = v * mask[..., None].to(v.dtype)
            g = g * mask.to(g.dtype)
        heads = "b t h d -> b h t d"
        return z, xs, rearrange(c, heads), rearrange(b, heads), rearrange(v, heads), rearrange(g, "b t h -> b h t")

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        z, xs, q, k, v, g = self._prepare(x, key_padding_mask, naive_ops=False)
        y, _ = chunked.chunked_ssd(q, k, v, g, chunk_size=self.config.chunk_size)
        return self._output(rearrange(y, "b h t p -> b t h p"), xs, z, x.dtype)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        z, xs, q, k, v, g = self._prepare(x, key_padding_mask, naive_ops=True)
        y, _ = naive.recurrent_ssd(q, k, v, g)
        return self._output(rearrange(y, "b h t p -> b t h p"), xs, z, x.dtype)

    # -- decoding -----------------------------------------------------------------------------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Mamba2State:
        cfg = self.config
        acc = _acc(dtype)
        return Mamba2State(length=0, conv=self.conv.init_state(batch_size, device=device, dtype=acc),
                           ssm=torch.zeros(batch_size, cfg.heads, cfg.headdim, cfg.d_state, device=device,
                                           dtype=acc))

    def _check_state(self, state: State) -> None:
        if not isinstance(state, Mamba2State):
            raise TypeError(f"state must be the Mamba2State from init_state, got {type(state).__name__}")

    def _forward_state(self, x: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """Prefill in one chunked pass: the convolution continues from its window, SSD from h (``initial_state``)."""
        self._check_state(state)
        z, xbc, dt = self._split(self.in_proj(x))
        xbc, window = self.conv.forward_state(xbc, state.conv)
        xs, b, c, v, g = self._ssm_inputs(F.silu(xbc), dt)
        heads = "b t h d -> b h t d"
        y, s = chunked.chunked_ssd(rearrange(c, heads), rearrange(b, heads), rearrange(v, heads),
                                   rearrange(g, "b t h -> b h t"), chunk_size=self.config.chunk_size,
                                   initial_state=state.ssm.mT, output_final_state=True)
        new = Mamba2State(length=state.length + x.shape[1], conv=window, ssm=s.mT.to(state.ssm.dtype))
        return self._output(rearrange(y, "b h t p -> b t h p"), xs, z, x.dtype), new

    def _step(self, x_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        self._check_state(state)
        z, xbc, dt = self._split(self.in_proj(x_t))
        xbc, window = self.conv.step(xbc, state.conv)
        xs, b, c, v, g = self._ssm_inputs(F.silu(xbc), dt)
        y, s = recurrent.ssd_step(c, b, v, g, state.ssm.mT)  # [B, H, P]
        new = Mamba2State(length=state.length + 1, conv=window, ssm=s.mT)
        return self._output(y, xs, z, x_t.dtype), new
