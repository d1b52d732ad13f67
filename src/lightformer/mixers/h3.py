"""``h3``: Hungry Hungry Hippos (Fu, Dao, Saab, Thomas, Rudra, Ré 2023, "Hungry Hungry Hippos: Towards Language
Modeling with State Space Models", ICLR; arXiv 2212.14052, Sec. 3.1, Algorithm 1).

Two SSMs and two multiplicative interactions, H = num_heads heads of head_dim d = D / H:

    q, k, v = W_q x, W_k x, W_v x                                    [T, D] each
    k̃ = SSM_shift(k) + D_k ⊙ k                                       the shift SSM: a learned causal filter of N taps
    kv_t[h] = k̃_t[h] ⊗ v_t[h]                                        [d, d] per head (a product when d = 1)
    s[h] = SSM_diag(kv[h]) + D[h] · kv[h]                            S4D kernel per head, shared by its d² entries
    y_t[h] = q_t[h]ᵀ s_t[h]                                          [d] per head
    out = W_out y

SSM_shift has A = the shift matrix and B = e_1, so its kernel is its C: y_t = Σ_(j<N) C_j k_(t−j), a learned causal
filter of N = ``d_state`` taps per channel of k (``shift_kernel [D, N]``, init N(0, 1) as the reference's shift C),
state = the last N−1 k's. SSM_diag is S4D (``s4d.DiagonalSSM``, S4D-Lin init, ZOH, N/2 complex modes per head).
Both run as FFT convolutions (``ops.longconv.fft``; the shift filter zero-padded, n = fast_size(T + N − 1)).
head_dim = D / num_heads: the reference's default is head_dim = 1 (num_heads = D), Zoology uses head_dim = 2;
for d > 1 the outer product makes the diagonal SSM run over H·d² channels (cost and memory grow as d²).

Causal only. Padding: a padded token's k and v are zeroed (it enters neither the shift window nor the SSM).
Decoding (``H3State``): the shift window ``[B, N−1, D]`` (the last N−1 k's, float32) and the diagonal state
``[B, d, d, H, N/2]`` complex; O(D·N + H·d²·N) per token, prefill in one pass. Oracle: the explicit convolution and
the recurrence (``ops.longconv.naive``). x: ``[B, T, D]`` -> ``[B, T, D]``; O(T·log T·H·d² + T·D² + T·H·N)
time, O(T·H·d²) memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ..nn.state import State
from ..ops.longconv import fft, kernels, naive
from .base import MIXERS, Capabilities, Mixer, MixerConfig
from .s4d import DiagonalSSM, complex_dtype


@dataclass(frozen=True)
class H3Config(MixerConfig):
    """Attributes:
        d_state: N, the taps of the shift SSM and the real state size of the diagonal SSM (N/2 complex modes);
            even, >= 2. Default 64 (the reference).
        dt_min, dt_max: range of the diagonal SSM's initial Δ (log-uniform). Default 1e-3, 1e-1.
    (head_dim = dim // num_heads.)
    """

    d_state: int = 64
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_state < 2 or self.d_state % 2:
            raise ValueError(f"d_state must be an even int >= 2, got {self.d_state!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {self.dt_min!r}, "
                             f"{self.dt_max!r}")


@dataclass(frozen=True)
class H3State(State):
    """Decoding state: ``window: [B, N−1, D]`` the last N−1 keys (float32; float64 for float64), ``x: [B, d, d, H,
    N/2]`` the diagonal SSM state of every head's d x d entries (complex64; complex128 for float64)."""

    window: Tensor
    x: Tensor


@MIXERS.register("h3")
class H3(Mixer):
    """H3 (Fu et al. 2023): shift SSM on K, diagonal SSM on K ⊗ V per head, gated by Q. x ``[B, T, D]`` ->
    ``[B, T, D]``."""

    config_class = H3Config
    config: H3Config
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·log T·H·d² + T·D² + T·H·N", time_exponent=1,
                                log_exponent=1)
    example_options = {"d_state": 6}
    residual_projections = ("output_linear.weight",)
    no_weight_decay = ("ssm.log_dt", "ssm.log_A_real", "ssm.A_imag", "D", "ssm_k_D", "shift_kernel")

    def __init__(self, config: H3Config) -> None:
        super().__init__(config)
        dim, h = config.dim, config.num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.shift_kernel = nn.Parameter(torch.randn(dim, config.d_state))  # [D, N]: tap j reads k_(t−j)
        self.ssm_k_D = nn.Parameter(torch.randn(dim))
        self.ssm = DiagonalSSM(h, config.d_state, config.dt_min, config.dt_max, "lin")
        self.D = nn.Parameter(torch.randn(h))
        self.output_linear = nn.Linear(dim, dim)

    def init_weights(self, num_layers: int) -> None:
        """The reference's inits after the model's generic pass: shift taps, D_k and D ~ N(0, 1), the diagonal SSM
        S4D-Lin."""
        with torch.no_grad():
            self.shift_kernel.normal_()
            self.ssm_k_D.normal_()
            self.D.normal_()
        self.ssm.reset_parameters()

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs: q, k, v and output projections (8·D² per token); the shift filter by FFT (per channel B
        FFTs of k, one of the filter, B inverse, ``fft.conv_flops`` with L = N) and D_k; the diagonal kernel
        (8·H·(N/2)·T, complex multiply-adds); its FFT convolution over the H·d² channels of k ⊗ v (2.5·n·log2 n per
        FFT, n = fast_size(2T − 1)); the outer product, D skip and q contraction (~5·D·d per token)."""
        cfg = self.config
        dim, h, t, n = cfg.dim, cfg.num_heads, seq_len, cfg.d_state
        d = cfg.head_dim
        token = batch * t * (8.0 * dim * dim + 2.0 * dim + 5.0 * dim * d)
        shift = dim * fft.conv_flops(t, batch, 1, batch, kernel_len=n)
        diag = 8.0 * h * (n // 2) * t + h * fft.conv_flops(t, batch * d * d, 1, batch * d * d)
        return token + shift + diag

    # -- pieces -------------------------------------------------------------------------------------------------
    def _qkv(self, x: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, D]
        if key_padding_mask is not None:
            keep = key_padding_mask[..., None].to(k.dtype)
            k, v = k * keep, v * keep
        return q, k, v

    def _kv(self, k_shift: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """k̃ = shift(k) ``[B, D, T]`` + D_k k, v ``[B, T, D]`` -> k̃ ⊗ v ``[B, d, d, H, T]``."""
        h = self.config.num_heads
        kt = k_shift + self.ssm_k_D[:, None].to(k_shift.dtype) * k.transpose(1, 2)
        kt = rearrange(kt, "b (h d) t -> b d 1 h t", h=h)
        vt = rearrange(v, "b t (h e) -> b 1 e h t", h=h)
        return kt * vt

    def _out(self, s: Tensor, kv: Tensor, q: Tensor) -> Tensor:
        """s = SSM_diag(kv), kv ``[B, d, d, H, T]``, q ``[B, T, D]`` -> W_out (qᵀ (s + D kv)) ``[B, T, D]``."""
        h = self.config.num_heads
        s = s + self.D[:, None].to(s.dtype) * kv
        qt = rearrange(q, "b t (h d) -> b d 1 h t", h=h)
        y = (qt * s).sum(1)  # [B, e, H, T]
        return self.output_linear(rearrange(y, "b e h t -> b t (h e)"))

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v = self._qkv(x, key_padding_mask)
        kv = self._kv(fft.causal_conv(k.transpose(1, 2), self.shift_kernel), k, v)
        s, _ = fft.diag_ssm(kv, *self.ssm.discretize())
        return self._out(s, kv, q)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v = self._qkv(x, key_padding_mask)
        kv = self._kv(naive.causal_conv(k.transpose(1, 2), self.shift_kernel.to(k.dtype)), k, v)
        s, _ = naive.diag_ssm(kv, *self.ssm.discretize())
        return self._out(s.to(kv.dtype), kv, q)

    # -- decoding ----------------------------------------------------------------------------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> H3State:
        cfg = self.config
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        d = cfg.head_dim
        window = torch.zeros(batch_size, cfg.d_state - 1, cfg.dim, device=device, dtype=acc)
        x = torch.zeros(batch_size, d, d, cfg.num_heads, cfg.d_state // 2, device=device, dtype=complex_dtype(acc))
        return H3State(length=0, window=window, x=x)

    def _check_state(self, state: State) -> H3State:
        if not isinstance(state, H3State):
            raise TypeError(f"state must be the H3State from init_state, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, H3State]:
        state = self._check_state(state)
        t, n = x.shape[1], self.config.d_state
        q, k, v = self._qkv(x, None)
        full = torch.cat([state.window.transpose(1, 2).to(k.dtype), k.transpose(1, 2)], dim=-1)  # [B, D, N−1+T]
        k_shift = fft.causal_conv(full, self.shift_kernel)[..., n - 1:]
        kv = self._kv(k_shift, k, v)
        dtA, b_bar, c = self.ssm.discretize()
        s, final = fft.diag_ssm(kv, dtA, b_bar, c, initial_state=state.x.to(dtA.dtype), output_final_state=True)
        window = full[..., full.shape[-1] - (n - 1):].transpose(1, 2).to(state.window.dtype)
        return self._out(s, kv, q), H3State(length=state.length + t, window=window, x=final.to(state.x.dtype))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, H3State]:
        state = self._check_state(state)
        acc = state.window.dtype
        q, k, v = (p.to(acc) for p in self._qkv(x_t[:, None], None))  # [B, 1, D] each
        full = torch.cat([state.window, k], dim=1)  # [B, N, D]; full[:, N−1−j] = k_(t−j)
        k_shift = (full.flip(1) * self.shift_kernel.T.to(acc)).sum(1)  # [B, D]
        kv = self._kv(k_shift[..., None], k, v)[..., 0]  # [B, d, d, H]
        dtA, b_bar, c = (p.to(state.x.dtype) for p in self.ssm.discretize())
        xs = kernels.cexp(dtA) * state.x + b_bar * kv[..., None]  # [B, d, d, H, N/2]
        s = 2.0 * (c * xs).sum(-1).real
        y = self._out(s[..., None], kv[..., None], q)[:, 0]
        return y.to(x_t.dtype), H3State(length=state.length + 1, window=full[:, 1:], x=xs)

