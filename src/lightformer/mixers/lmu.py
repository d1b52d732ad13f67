"""``lmu``: the Legendre Memory Unit in its parallel (feed-forward) form (Voelker, Kajić, Eliasmith 2019, "Legendre
Memory Units: Continuous-Time Representation in Recurrent Neural Networks", NeurIPS; Chilkuri & Eliasmith 2021,
"Parallelizing Legendre Memory Unit Training", ICML, arXiv 2102.11417, Sec. 3; the token mixer of LMUFormer, Liu,
Datta, Li, Beerel 2024, ICLR, arXiv 2402.04882).

A fixed (untrained) linear time-invariant memory compresses the last θ steps of each input signal onto ``order``
Legendre polynomials (Voelker et al. 2019, Eq. 1-2, ``ops.longconv.kernels.legendre_lti``):

    A_ij = (2i+1)/θ · (−1 if i < j else (−1)^(i−j+1)),    B_i = (2i+1)·(−1)^i / θ

discretised by zero-order hold at dt = 1 (``kernels.zoh``: the matrix exponential of [[A, B], [0, 0]], computed with
``torch.linalg.matrix_exp`` in float64). With memory_d inputs per token (LMUFormer: one):

    u_t = ReLU(W_u x_t)                        [memory_d]
    m_t = Ā m_(t−1) + B̄ u_t                     [memory_d, order] (each input its own memory)
    h_t = ReLU(W_h [m_t; x_t])                  [D]   (the mixer's output)

Without a memory-to-memory or hidden-to-memory connection the memory is an LTI filter of u, so the whole sequence
runs in parallel as m = H * u with the impulse response H[:, t] = Ā^t B̄ (Chilkuri & Eliasmith 2021, Eq. 10-12),
an FFT convolution (``ops.longconv.fft.lti_memory``). H is computed in float64 for the actual T (by doubling, no
fixed ``seq_len`` buffer) and cached per (T, device, dtype).

Defaults: ``order = 256`` and ``memory_d = 1`` as LMUFormer (memory_size = dim = 256 there), ``theta = 256``
(LMUFormer sets θ = seq_len = 128 for Speech Commands; the window is a config option here because T is not known at
construction; 256 covers the CPU-sized tasks' contexts and costs nothing at longer T). W_u, W_h are ``nn.Linear``
with bias (generic init).

Causal only. Padding: a padded token's u is zeroed. Decoding: the recurrence itself, state m ``[B, memory_d,
order]`` (``LMUState``; float32, float64 for float64), O(memory_d·order²) per token; prefill in one pass (the
convolution plus the free response Ā^(t+1) m_0 of the state). Oracle: the recurrence
(``ops.longconv.naive.lti_memory``). x: ``[B, T, D]`` -> ``[B, T, D]``; O(T·log T·memory_d·order + T·D·(memory_d·order
+ D)) time, O(T·memory_d·order) memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.state import State
from ..ops.longconv import fft, kernels, naive
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class LMUConfig(MixerConfig):
    """Attributes:
        order: d, Legendre polynomials per memory (LMUFormer's ``memory_size``), >= 1. Default 256.
        theta: θ, the length of the window the memory represents, in tokens, > 0. Default 256.
        memory_d: input signals u per token (each with its own memory of ``order``), >= 1. Default 1.
    """

    order: int = 256
    theta: float = 256.0
    memory_d: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order < 1:
            raise ValueError(f"order must be a positive int, got {self.order!r}")
        if not self.theta > 0:
            raise ValueError(f"theta must be a positive float, got {self.theta!r}")
        if self.memory_d < 1:
            raise ValueError(f"memory_d must be a positive int, got {self.memory_d!r}")


@dataclass(frozen=True)
class LMUState(State):
    """Decoding state: ``m: [B, memory_d, order]``, the Legendre memory after ``length`` tokens (float32; float64
    for float64)."""

    m: Tensor


@MIXERS.register("lmu")
class LMU(Mixer):
    """Parallel LMU (Chilkuri & Eliasmith 2021) as a token mixer. x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = LMUConfig
    config: LMUConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·log T·memory_d·order + T·D·(memory_d·order + D)",
                                time_exponent=1, log_exponent=1)
    example_options = {"order": 6, "theta": 8.0, "memory_d": 2}
    residual_projections = ("W_h.weight",)

    def __init__(self, config: LMUConfig) -> None:
        super().__init__(config)
        d, m = config.dim, config.memory_d
        self.W_u = nn.Linear(d, m)
        self.W_h = nn.Linear(m * config.order + d, d)
        a, b = kernels.legendre_lti(config.order, config.theta, dtype=torch.float64)
        self._lti64 = kernels.zoh(a, b, 1.0)  # (Ā, B̄) in float64 on the CPU; fixed, never trained
        self._cache: dict[tuple, Tensor] = {}

    def lti(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(Ā ``[order, order]``, B̄ ``[order]``) on ``device`` in ``dtype`` (float32 for bf16)."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        key = ("lti", device, dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device=device, dtype=dtype) for t in self._lti64)
        return self._cache[key]

    def impulse(self, length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """H ``[order, length]`` = Ā^t B̄, computed in float64 and cached (the latest length per device, dtype)."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        key = ("impulse", device, dtype)
        h = self._cache.get(key)
        if h is None or h.shape[1] < length:
            ab, bb = self.lti(device, torch.float64)
            h = kernels.lti_impulse(ab, bb, length).to(dtype)
            self._cache[key] = h
        return h[:, :length]

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs: W_u (2·D·memory_d per token), the FFT convolution (memory_d FFTs of u and order FFTs of H,
        memory_d·order inverse FFTs and products, per ``fft.conv_flops``: 2.5·n·log2 n per FFT, n = fast_size(2T−1);
        H itself is cached, not counted), W_h (2·(memory_d·order + D)·D per token) and the two ReLUs."""
        cfg = self.config
        d, m, o, t = cfg.dim, cfg.memory_d, cfg.order, seq_len
        conv = fft.conv_flops(t, batch * m, o, batch * m * o)
        token = batch * t * (2.0 * d * m + 2.0 * (m * o + d) * d + m + d)
        return conv + token

    # -- forward ------------------------------------------------------------------------------------------------
    def _input(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = F.relu(self.W_u(x))  # [B, T, M]
        if key_padding_mask is not None:
            u = u * key_padding_mask[..., None].to(u.dtype)
        return u.transpose(1, 2)  # [B, M, T]

    def _output(self, m: Tensor, x: Tensor) -> Tensor:
        """m ``[B, M, d, T]``, x ``[B, T, D]`` -> ReLU(W_h [m; x]) ``[B, T, D]`` (W_h split instead of a concat)."""
        md = self.config.memory_d * self.config.order
        m = m.flatten(1, 2).transpose(1, 2)  # [B, T, M·d]
        w = self.W_h.weight
        return F.relu(F.linear(m, w[:, :md]) + F.linear(x, w[:, md:], self.W_h.bias))

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = self._input(x, key_padding_mask)
        ab, bb = self.lti(x.device, x.dtype)
        m, _ = fft.lti_memory(u, ab, bb, impulse=self.impulse(x.shape[1], x.device, x.dtype))
        return self._output(m, x)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = self._input(x, key_padding_mask)
        ab, bb = self.lti(x.device, x.dtype)
        m, _ = naive.lti_memory(u, ab.to(u.dtype), bb.to(u.dtype))
        return self._output(m, x)

    # -- decoding ----------------------------------------------------------------------------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LMUState:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        return LMUState(length=0, m=torch.zeros(batch_size, self.config.memory_d, self.config.order,
                                                device=device, dtype=acc))

    def _check_state(self, state: State) -> LMUState:
        if not isinstance(state, LMUState):
            raise TypeError(f"state must be the LMUState from init_state, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, LMUState]:
        state = self._check_state(state)
        u = self._input(x, None).to(state.m.dtype)  # the memory and its final value in the state's precision
        ab, bb = self.lti(x.device, state.m.dtype)
        m, final = fft.lti_memory(u, ab, bb, impulse=self.impulse(x.shape[1], x.device, state.m.dtype),
                                  initial_state=state.m)
        return self._output(m, x), LMUState(length=state.length + x.shape[1], m=final.to(state.m.dtype))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, LMUState]:
        state = self._check_state(state)
        ab, bb = self.lti(x_t.device, state.m.dtype)
        u = F.relu(self.W_u(x_t)).to(state.m.dtype)  # [B, M]
        m = state.m @ ab.mT + u[..., None] * bb  # [B, M, d]
        y = self._output(m[..., None].to(x_t.dtype), x_t[:, None])[:, 0]
        return y, LMUState(length=state.length + 1, m=m)
