"""``aft_simple``: AFT-simple, the attention-free mixer of Zhai et al. 2021, "An Attention Free Transformer", Eq. 5.

    Y_t = σ(Q_t) ⊙ Σ_t' softmax_t'(K)_t' ⊙ V_t'                     (t' <= t when causal)

Q, K, V come from the shared fused projection of ``AttentionMixer`` (heads are only a reshape: AFT mixes each of
the D channels on its own), Y goes through the output projection ``out``. x: ``[B, T, D]`` -> ``[B, T, D]``.

Complexity O(T·d) time and memory (the softmax over positions is a per-channel weighted sum; causal: prefix sums
stabilised by a running max, ``ops/aft/simple.py``). Decoding keeps a recurrent state of three ``[B, D]`` tensors
(running max of K, numerator, denominator). Padding: padded keys are excluded from the sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from ..nn.state import State
from ..ops.aft import naive, simple
from .attention import QKVConfig, AttentionMixer
from .base import MIXERS, Capabilities, Mixer


@dataclass(frozen=True)
class AftSimpleConfig(QKVConfig):
    """AFT-simple has no options beyond ``QKVConfig`` (``position`` must be ``"none"``)."""


@dataclass(frozen=True)
class AftSimpleState(State):
    """Decoding state after ``length`` tokens: running max ``m``, numerator ``n``, denominator ``z`` (``[B, D]``,
    float32 or float64)."""

    m: Tensor
    n: Tensor
    z: Tensor


def qkv_channels(mixer: AttentionMixer, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x ``[B, T, D]`` -> q, k, v ``[B, T, H·d]`` straight from the fused projection (AFT mixes channels on their
    own, so the heads need no ``[B, H, T, d]`` permute); grouped K/V heads are repeated as ``repeat_kv`` does."""
    cfg = mixer.config
    h, hkv, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    q, k, v = mixer.qkv(x).split([h * d, hkv * d, hkv * d], dim=-1)
    if hkv != h:
        k, v = (rearrange(rearrange(z, "b t (g d) -> b t g d", d=d).repeat_interleave(h // hkv, dim=2),
                          "b t g d -> b t (g d)") for z in (k, v))
    return q, k, v


@MIXERS.register("aft_simple")
class AftSimple(AttentionMixer):
    """AFT-simple (Zhai et al. 2021, Eq. 5); x ``[B, T, D]`` -> ``[B, T, D]``, O(T·d)."""

    config_class = AftSimpleConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=True, complexity="T·d",
                                time_exponent=1)
    example_options: dict = {}

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        y = simple.aft_simple(*qkv_channels(self, x), causal=self.config.causal, key_padding_mask=key_padding_mask)
        return self.out(y)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        y = naive.aft_simple(*qkv_channels(self, x), causal=self.config.causal, key_padding_mask=key_padding_mask)
        return self.out(y)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> AftSimpleState:
        sd = torch.float64 if dtype == torch.float64 else torch.float32
        d = self.config.dim
        return AftSimpleState(length=0, m=torch.full((batch_size, d), float("-inf"), device=device, dtype=sd),
                              n=torch.zeros(batch_size, d, device=device, dtype=sd),
                              z=torch.zeros(batch_size, d, device=device, dtype=sd))

    # no parallel prefill (capabilities.prefill is False): step through the tokens, not the KV-cache prefill of
    # AttentionMixer, whose projections AFT shares but whose state it does not
    _forward_state = Mixer._forward_state

    def _step(self, x_t: Tensor, state: AftSimpleState) -> tuple[Tensor, AftSimpleState]:
        if not isinstance(state, AftSimpleState):
            raise TypeError(f"state must be the AftSimpleState from init_state, got {type(state).__name__}")
        q, k, v = (z[:, 0] for z in qkv_channels(self, x_t[:, None, :]))  # [B, D]
        y, (m, n, z) = simple.aft_simple_step(q, k, v, (state.m, state.n, state.z))
        return self.out(y), AftSimpleState(state.length + 1, m, n, z)
