"""``linear``: linear attention with the elu(x) + 1 feature map (Katharopoulos, Vyas, Pappas, Fleuret 2020,
"Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention"), and the shared base of the
kernel-attention mixers (``performer``, ``linear_relu``).

Softmax's exp(qᵀk/sqrt(d)) is replaced by a kernel sim(q, k) = φ(q)ᵀφ(k) (Eq. 3-4), so that by associativity
(Eq. 5-6)

    V'_i = φ(Q_i)ᵀ (Σ_j φ(K_j) V_jᵀ) / (φ(Q_i)ᵀ Σ_j φ(K_j) + eps),      φ(x) = elu(x) + 1   (Eq. 7)

costs O(T·d²) instead of O(T²·d). Causal (Eq. 8-11): the sums run over j <= i; computed in chunks of
``chunk_size`` tokens (masked quadratic form inside a chunk, running [d, d] state across chunks), and decoded token
by token through the recurrence of Sec. 3.4 (Eq. 16-20) with state S = Σ φ(k)vᵀ ``[B, H, d, d]``, z = Σ φ(k).

x: ``[B, T, D]`` -> ``[B, T, D]``; the QKV and output projections are those of ``AttentionMixer`` (same parameter
names as ``softmax``; ``num_kv_heads`` gives grouped keys/values). Complexity O(T·d²) time, O(T·d) memory in the
forward and the backward pass (features are recomputed per chunk, ``ops.kernel.chunked``).

``eps`` (default 1e-6) is added to the denominator; elu + 1 > 0 keeps it positive anyway, eps only guards rows
whose keys are all padded. The oracle is ``ops.kernel.naive``: the recurrence when causal, the two plain sums of
Eq. 5 otherwise. The config is a ``QKVConfig`` (grouped key/value heads, biases): RoPE and split-KV decoding do
not apply here (positions: ``none`` only; decoding keeps no cache to split), so their options are not accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from ..ops.kernel import chunked, naive, recurrent
from ..ops.kernel.chunked import FeatureMap
from ..ops.kernel.features import elu_plus_one
from .attention import QKVConfig, AttentionMixer, repeat_kv
from ..nn.state import State
from .base import MIXERS, Capabilities

@dataclass(frozen=True)
class LinearAttentionConfig(QKVConfig):
    """Options of the kernel-attention mixers.

    Attributes:
        chunk_size: tokens per chunk of the causal chunked form (the intra-chunk part is quadratic in it, the
            inter-chunk part is a running state). Chunks are processed in groups whose size bounds memory
            (``ops.kernel.chunked.GROUP_ELEMENTS``); the non-causal form has no intra-chunk part and only uses groups.
        eps: positive constant added to the attention denominator (keeps all-zero feature rows finite).
    """

    chunk_size: int = 64
    eps: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be a positive float, got {self.eps!r}")


@dataclass(frozen=True)
class KernelState(State):
    """Decoding state: ``s: [B, H, m, d]`` = Σ φ(k)vᵀ, ``z: [B, H, m]`` = Σ φ(k) over the ``length`` tokens seen,
    and ``conv: [B, K−1, H·d]`` the last values (``linear_relu`` only, else None). float32 (float64 for float64)."""

    s: Tensor
    z: Tensor
    conv: Tensor | None = None


class KernelAttentionMixer(AttentionMixer):
    """Base of the kernel-attention mixers: subclasses give ``feature_map`` (and may override ``num_features``,
    ``attention_oracle`` and ``mix_values``)."""

    config_class = LinearAttentionConfig
    config: LinearAttentionConfig

    @property
    def num_features(self) -> int:
        """m, the width of φ(x)."""
        return self.config.head_dim

    def feature_map(self) -> FeatureMap:
        """``(x [..., d], is_query) -> φ(x) [..., m]``, token-local and differentiable."""
        raise NotImplementedError

    def mix_values(self, o: Tensor, v: Tensor, key_padding_mask: Tensor | None, naive_ops: bool) -> Tensor:
        """Hook after attention: o, v ``[B, H, T, d]`` -> ``[B, H, T, d]`` (``linear_relu`` adds its convolution)."""
        return o

    def attention_oracle(self, phi_q: Tensor, phi_k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """The oracle of the attention part: the recurrence (causal) or the plain sums (non-causal)."""
        if self.config.causal:
            return naive.recurrent_kernel_attention(phi_q, phi_k, v, eps=self.config.eps, key_padding_mask=mask)[0]
        return naive.noncausal_kernel_attention(phi_q, phi_k, v, eps=self.config.eps, key_padding_mask=mask)

    def _qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.project(x, positions)  # [B, H, T, d], [B, H_kv, T, d] x 2
        h = self.config.num_heads
        return q, repeat_kv(k, h), repeat_kv(v, h)

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        cfg = self.config
        q, k, v = self._qkv(x, torch.arange(x.shape[1], device=x.device))
        o, _ = chunked.kernel_attention(q, k, v, self.feature_map(), causal=cfg.causal, eps=cfg.eps,
                                        chunk_size=cfg.chunk_size, key_padding_mask=key_padding_mask)
        o = self.mix_values(o, v, key_padding_mask, naive_ops=False)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v = self._qkv(x, torch.arange(x.shape[1], device=x.device))
        fmap = self.feature_map()
        o = self.attention_oracle(fmap(q, True), fmap(k, False), v, key_padding_mask)
        o = self.mix_values(o, v, key_padding_mask, naive_ops=True)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KernelState:
        h, m, d = self.config.num_heads, self.num_features, self.config.head_dim
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # sums of many terms: keep >= float32
        return KernelState(length=0, s=torch.zeros(batch_size, h, m, d, device=device, dtype=acc),
                           z=torch.zeros(batch_size, h, m, device=device, dtype=acc))

    def _forward_state(self, x: Tensor, state: KernelState) -> tuple[Tensor, KernelState]:
        """Prefill in one chunked pass: the kernel op continues from (S, z) and returns the final (S, z)."""
        if not isinstance(state, KernelState):
            raise TypeError(f"state must be the KernelState from init_state, got {type(state).__name__}")
        cfg = self.config
        t = x.shape[1]
        q, k, v = self._qkv(x, torch.arange(state.length, state.length + t, device=x.device))
        o, (s, z) = chunked.kernel_attention(q, k, v, self.feature_map(), causal=True, eps=cfg.eps,
                                             chunk_size=cfg.chunk_size, initial_state=(state.s, state.z),
                                             output_final_state=True)
        new = KernelState(length=state.length + t, s=s.to(state.s.dtype), z=z.to(state.z.dtype), conv=state.conv)
        o, new = self.prefill_values(o, v, state, new)
        return self.out(rearrange(o, "b h t d -> b t (h d)")), new

    def prefill_values(self, o: Tensor, v: Tensor, old: KernelState, new: KernelState
                       ) -> tuple[Tensor, KernelState]:
        """Prefill counterpart of ``mix_values`` (o, v ``[B, H, T, d]``) continuing from ``old``."""
        return o, new

    def _step(self, x_t: Tensor, state: KernelState) -> tuple[Tensor, KernelState]:
        if not isinstance(state, KernelState):
            raise TypeError(f"state must be the KernelState from init_state, got {type(state).__name__}")
        q, k, v = self._qkv(x_t[:, None, :], torch.tensor([state.length], device=x_t.device))
        fmap = self.feature_map()
        acc = state.s.dtype
        o, s, z = recurrent.kernel_step(fmap(q[:, :, 0].to(acc), True), fmap(k[:, :, 0].to(acc), False),
                                        v[:, :, 0], state.s, state.z, eps=self.config.eps)  # [B, H, d]
        new = KernelState(length=state.length + 1, s=s, z=z, conv=state.conv)
        o, new = self.step_values(o, v[:, :, 0], new)
        return self.out(rearrange(o.to(x_t.dtype), "b h d -> b (h d)")), new

    def step_values(self, o: Tensor, v_t: Tensor, state: KernelState) -> tuple[Tensor, KernelState]:
        """Decoding counterpart of ``mix_values``: o, v_t ``[B, H, d]``."""
        return o, state


@MIXERS.register("linear")
class LinearAttention(KernelAttentionMixer):
    """Linear attention, φ(x) = elu(x) + 1 (Katharopoulos et al. 2020). x ``[B, T, D]`` -> ``[B, T, D]``;
    O(T·d²) time, O(T·d) memory."""

    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=True, complexity="T·d²",
                                prefill=True, time_exponent=1)
    example_options = {"chunk_size": 4}

    def feature_map(self) -> FeatureMap:
        return lambda x, is_query: elu_plus_one(x)
