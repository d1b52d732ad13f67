"""``rwkv6``: the RWKV-6 "Finch" time mix (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and
Dynamic Recurrence", arXiv 2404.05892, Sec. 4.2).

Data-dependent token shift ("ddlerp", Eq. 13-16), with x'_t = x_{t−1} (zeros before the first token):

    lora_□(x) = λ_□ + tanh(x A_□) B_□,      ddlerp_□(x_t, x'_t) = x_t + (x'_t − x_t) ⊙ lora_□(x_t + (x'_t − x_t) ⊙ μ_x)

for □ ∈ {w, k, v, r, g} (the five λ_□ are ``time_maa_w``.., A = ``time_maa_w1`` ``[D, 5·r]``, B = ``time_maa_w2``
``[5, r, D]``, μ_x = ``time_maa_x``); r, k, v, g = W_□ ddlerp_□ (``receptance``, ``key``, ``value``, ``gate``).
Data-dependent decay (Eq. 17-18): d_t = lora_d(ddlerp_w) = w_0 + tanh(ddlerp_w A_d) B_d (``time_decay``,
``time_decay_w1``, ``time_decay_w2``), w_t = exp(−exp(d_t)) per key channel, so log w_t = −exp(d_t). Per head, the
wkv with the bonus u (``time_faaaa``, Eq. 19-20):

    S_t = Diag(w_t) S_{t−1} + k_t v_tᵀ,      o_t = (S_{t−1} + Diag(u) k_t v_tᵀ)ᵀ r_t

(the read is exclusive: the current token enters through u, not through its own decay), then
y = W_o (GroupNorm_H(o) ⊙ SiLU(g)) (Eq. 21-22, per-head GroupNorm).

Sizes and defaults: flash-linear-attention's ``RWKV6Attention`` (the reference layer): key width D·``expand_k``
= D/2, value width D·``expand_v`` = D, ``num_heads`` heads (d_k = D/(2H), d_v = D/H), token-shift LoRA rank
``proj_low_rank_dim`` 32, decay LoRA rank ``gate_low_rank_dim`` 64, GroupNorm eps 1e-5, no scaling of r.
(BlinkDL's models use key width D and heads of 64; set ``expand_k=1.0`` and ``num_heads=D/64`` for that.)

Init (``init_weights``): the reference RWKV-6 code (RWKV-LM ``RWKV_Tmix_x060``), which depends on the layer's
depth through ratio_0_to_1 = l/(L−1) and ratio_1_to_almost0 = 1 − l/L; a mixer does not know its layer index, so
both are taken at mid-depth (0.5). With ddd_i = i/D: μ_x, λ_w, λ_k = 1 − ddd^{0.5}, λ_v = 1 − (ddd^{0.5} + 0.15),
λ_r, λ_g = 1 − ddd^{0.25}; A, B, A_d, B_d ~ U(±1e-4); w_0[n] = −6 + 5·(n/(D_k−1))^{0.7 + 1.3·0.5} (decays from
exp(−e^{−6}) ≈ 0.998 to exp(−e^{−1}) ≈ 0.69); u[n] = 0.5·(1 − n/(D_k−1)) + 0.1·((n + 1) mod 3 − 1). Linear
weights keep the generic init. ``time_maa_*``, ``time_decay`` and ``time_faaaa`` are not weight-decayed.

The wkv goes through ``ops.gla`` (the exclusive read and the bonus u of ``chunked.chunk_gla``; oracle: the
recurrence ``naive.recurrent_gla(..., u=u)``); the chunked form never evaluates exp(−log w_t) of the skipped
current-token decay (fla #77's NaN). Padded tokens (``key_padding_mask``) are zeroed before the shift and get zero
keys and no decay, so they leave the state unchanged. x: ``[B, T, D]`` -> ``[B, T, D]``, causal only. Decoding
state ``RWKV6State``: the previous token x_{t−1} ``[B, D]`` and S ``[B, H, d_k, d_v]``, float32 (float64 for
float64 inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.state import State
from ..ops.gla import chunked, naive, recurrent
from .base import MIXERS, Capabilities, Mixer, MixerConfig
from .gla import check_expansions, gated_flops

#: depth ratios of the reference init taken at mid-depth (the mixer does not know its layer index)
RATIO_0_TO_1 = 0.5
RATIO_1_TO_ALMOST0 = 0.5
#: the five ddlerp targets, in the order of the reference code
TARGETS = ("w", "k", "v", "r", "g")


@dataclass(frozen=True)
class RWKV6Config(MixerConfig):
    """Options of ``rwkv6`` (causal only, so ``causal`` defaults to True).

    Attributes:
        expand_k: key (receptance, decay) width over D (> 0); D·expand_k must be a multiple of ``num_heads``.
        expand_v: value (and gate) width over D (> 0); D·expand_v must be a multiple of ``num_heads``.
        proj_low_rank_dim: rank r of the token-shift LoRA (>= 1).
        gate_low_rank_dim: rank of the decay LoRA (>= 1).
        chunk_size: tokens per chunk, a power of two.
        norm_eps: eps of the per-head GroupNorm (> 0).
    """

    causal: bool = True
    expand_k: float = 0.5
    expand_v: float = 1.0
    proj_low_rank_dim: int = 32
    gate_low_rank_dim: int = 64
    chunk_size: int = 64
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_expansions(self)
        for name in ("proj_low_rank_dim", "gate_low_rank_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.chunk_size < 1 or self.chunk_size & (self.chunk_size - 1):
            raise ValueError(f"chunk_size must be a positive power of two, got {self.chunk_size!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a positive float, got {self.norm_eps!r}")


@dataclass(frozen=True)
class RWKV6State(State):
    """Decoding state of ``rwkv6``: ``shift [B, D]`` = the last token x_{t−1} (zeros before the first), ``s [B, H,
    d_k, d_v]`` = S after ``length`` tokens; float32 (float64 for float64)."""

    shift: Tensor
    s: Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@MIXERS.register("rwkv6")
class RWKV6(Mixer):
    """RWKV-6 (Finch) time mix (Peng et al. 2024). x ``[B, T, D]`` -> ``[B, T, D]``; see the module docstring."""

    config_class = RWKV6Config
    config: RWKV6Config
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·(C·d_k + d_k·d_v)", time_exponent=1)
    example_options = {"chunk_size": 4, "proj_low_rank_dim": 8, "gate_low_rank_dim": 8}
    residual_projections = ("output.weight",)
    no_weight_decay = ("time_maa_?", "time_decay", "time_faaaa")

    def __init__(self, config: RWKV6Config) -> None:
        super().__init__(config)
        d, h, r = config.dim, config.num_heads, config.proj_low_rank_dim
        self.key_dim, self.value_dim = int(d * config.expand_k), int(d * config.expand_v)
        self.head_k_dim, self.head_v_dim = self.key_dim // h, self.value_dim // h
        self.time_maa_x = nn.Parameter(torch.zeros(d))
        for name in TARGETS:
            self.register_parameter(f"time_maa_{name}", nn.Parameter(torch.zeros(d)))
        self.time_maa_w1 = nn.Parameter(torch.zeros(d, 5 * r))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, r, d))
        self.time_decay = nn.Parameter(torch.zeros(self.key_dim))
        self.time_decay_w1 = nn.Parameter(torch.zeros(d, config.gate_low_rank_dim))
        self.time_decay_w2 = nn.Parameter(torch.zeros(config.gate_low_rank_dim, self.key_dim))
        self.time_faaaa = nn.Parameter(torch.zeros(h, self.head_k_dim))
        self.receptance = nn.Linear(d, self.key_dim, bias=False)
        self.key = nn.Linear(d, self.key_dim, bias=False)
        self.value = nn.Linear(d, self.value_dim, bias=False)
        self.gate = nn.Linear(d, self.value_dim, bias=False)
        self.ln_x = nn.GroupNorm(h, self.value_dim, eps=config.norm_eps)
        self.output = nn.Linear(self.value_dim, d, bias=False)
        self.init_weights(1)

    def init_weights(self, num_layers: int) -> None:
        """The reference RWKV-6 init at mid-depth (module docstring); ``num_layers`` is not used."""
        d, dk = self.config.dim, self.key_dim
        r01, r10 = RATIO_0_TO_1, RATIO_1_TO_ALMOST0
        with torch.no_grad():
            ddd = torch.arange(d, dtype=torch.float64) / d
            self.time_maa_x.copy_(1.0 - ddd ** r10)
            self.time_maa_w.copy_(1.0 - ddd ** r10)
            self.time_maa_k.copy_(1.0 - ddd ** r10)
            self.time_maa_v.copy_(1.0 - (ddd ** r10 + 0.3 * r01))
            self.time_maa_r.copy_(1.0 - ddd ** (0.5 * r10))
            self.time_maa_g.copy_(1.0 - ddd ** (0.5 * r10))
            for p in (self.time_maa_w1, self.time_maa_w2, self.time_decay_w1, self.time_decay_w2):
                p.uniform_(-1e-4, 1e-4)
            n = torch.arange(dk, dtype=torch.float64) / max(dk - 1, 1)
            self.time_decay.copy_(-6.0 + 5.0 * n ** (0.7 + 1.3 * r01))
            zigzag = ((torch.arange(dk) + 1) % 3 - 1).to(torch.float64) * 0.1
            self.time_faaaa.copy_((r01 * (1.0 - n) + zigzag).view_as(self.time_faaaa))

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """2·T·(D·5r + 5·r·D + D·r_d + r_d·D_k + D·(2·D_k + 2·D_v) + D_v·D) for the token-shift and decay LoRAs and
        the r, k, v, g and output projections, plus ``gla.gated_flops`` for the wkv, times ``batch``."""
        cfg = self.config
        d, r, rd = cfg.dim, cfg.proj_low_rank_dim, cfg.gate_low_rank_dim
        proj = 2.0 * seq_len * (10 * d * r + d * rd + rd * self.key_dim + d * (2 * self.key_dim + 2 * self.value_dim)
                                + self.value_dim * d)
        mix = gated_flops(seq_len, cfg.num_heads, self.head_k_dim, self.head_v_dim, cfg.chunk_size)
        return batch * (proj + mix)

    def _project(self, x: Tensor, prev: Tensor | None, mask: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x ``[B, T, D]``, prev = x_{−1} ``[B, D]`` or None (zeros) -> r, k, log w ``[B, H, T, d_k]`` (log w in
        float32/64), v ``[B, H, T, d_v]``, SiLU(g) ``[B, T, D_v]``."""
        h = self.config.num_heads
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        shifted = torch.cat([(torch.zeros_like(x[:, :1]) if prev is None else prev[:, None].to(x.dtype)),
                             x[:, :-1]], dim=1)
        xx = shifted - x  # x'_t − x_t
        xxx = torch.addcmul(x, xx, self.time_maa_x.to(x.dtype))
        lora = torch.tanh(xxx @ self.time_maa_w1.to(x.dtype)).unflatten(-1, (5, -1))  # [B, T, 5, r]
        lora = torch.einsum("btfr,frd->btfd", lora, self.time_maa_w2.to(lora.dtype))  # [B, T, 5, D]
        mixed = {}
        for name, m in zip(TARGETS, lora.unbind(2)):  # unbind: one gradient buffer, not a zeroed one per target
            mu = getattr(self, f"time_maa_{name}")
            mixed[name] = torch.addcmul(x, xx, m + mu.to(m.dtype))
        r = self.receptance(mixed["r"])
        k = self.key(mixed["k"])
        v = self.value(mixed["v"])
        g = F.silu(self.gate(mixed["g"]))
        acc = _acc(x.dtype)
        d = torch.tanh(mixed["w"] @ self.time_decay_w1.to(x.dtype)) @ self.time_decay_w2.to(x.dtype)
        logw = -torch.exp(self.time_decay.to(acc) + d.to(acc))  # log w_t = −exp(d_t)
        if mask is not None:
            keep = mask[..., None]
            k, logw = k * keep.to(k.dtype), logw * keep.to(acc)
        r, k, v, logw = (rearrange(t, "b t (h d) -> b h t d", h=h) for t in (r, k, v, logw))
        return r, k, v, logw, g

    def _output(self, o: Tensor, g: Tensor) -> Tensor:
        """o ``[B, H, T, d_v]``, SiLU(g) ``[B, T, D_v]`` -> W_o(GroupNorm_H(o) ⊙ SiLU(g)) ``[B, T, D]``."""
        b, _, t, _ = o.shape
        o = rearrange(o, "b h t d -> (b t) (h d)")
        o = self.ln_x(o.to(g.dtype)).view(b, t, -1).to(g.dtype) * g
        return self.output(o)

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        r, k, v, logw, g = self._project(x, None, key_padding_mask)
        o, _ = chunked.chunk_gla(r, k, v, logw, u=self.time_faaaa, chunk_size=self.config.chunk_size)
        return self._output(o, g)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        r, k, v, logw, g = self._project(x, None, key_padding_mask)
        o, s = naive.recurrent_gla(r, k, v, logw, u=self.time_faaaa, output_final_state=True)
        # the last token's decay only enters the final state (the read is exclusive), so at T = 1 no output depends
        # on the decay parameters; joining S_T with weight zero makes autograd report their zero gradient (as the
        # fast path does) instead of refusing them as unused
        return self._output(o + 0.0 * s.sum(), g)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> RWKV6State:
        acc, h = _acc(dtype), self.config.num_heads
        return RWKV6State(length=0, shift=torch.zeros(batch_size, self.config.dim, device=device, dtype=acc),
                          s=torch.zeros(batch_size, h, self.head_k_dim, self.head_v_dim, device=device, dtype=acc))

    def _check_state(self, state: State) -> RWKV6State:
        if not isinstance(state, RWKV6State):
            raise TypeError(f"state must be the RWKV6State from init_state, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, RWKV6State]:
        """Prefill in one chunked pass continuing from (x_{−1}, S)."""
        state = self._check_state(state)
        r, k, v, logw, g = self._project(x, state.shift, None)
        o, s = chunked.chunk_gla(r, k, v, logw, u=self.time_faaaa, chunk_size=self.config.chunk_size,
                                 initial_state=state.s, output_final_state=True)
        new = RWKV6State(length=state.length + x.shape[1], shift=x[:, -1].to(state.shift.dtype),
                         s=s.to(state.s.dtype))
        return self._output(o, g), new

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, RWKV6State]:
        state = self._check_state(state)
        r, k, v, logw, g = self._project(x_t[:, None], state.shift, None)
        o, s = recurrent.gla_step(r[:, :, 0], k[:, :, 0], v[:, :, 0], logw[:, :, 0], state.s, u=self.time_faaaa)
        y = self._output(o[:, :, None].to(x_t.dtype), g)[:, 0]
        return y, RWKV6State(length=state.length + 1, shift=x_t.to(state.shift.dtype), s=s)
