"""``probsparse``: ProbSparse self-attention of Informer (Zhou et al. 2021, "Informer: Beyond Efficient Transformer
for Long Sequence Time-Series Forecasting", Sec. 3.1, Eq. 3-4, Lemma 1).

Only the u = c·ln T "active" queries with the largest sparsity measure

    M̄(q_i) = max_j q_i·k_j/sqrt(d) − mean_j q_i·k_j/sqrt(d)          (Eq. 4 / Lemma 1, on sampled keys)

attend (softmax, Eq. 3 with Q̄ holding the active queries); the other, "lazy", queries output mean(V) (its
cumulative mean up to their position when causal). The measure uses ``sample_factor``·ln T keys per query drawn
with a fixed seeded sampling per length (``ops/probsparse/naive.py``; the seed is the ``sample_seed`` buffer drawn
from the global torch RNG at construction). Causal: queries are chosen among their prefix (see
``ops/probsparse/naive.py``: Informer's global choice would let the future select the past) and the active scores
are causally masked. Padding: padded keys are left out of the measure, of the attention and of the mean; padded
queries are never active. Q, K, V, the output projection, GQA and RoPE are the shared ``AttentionMixer`` ones.
x: ``[B, T, D]`` -> ``[B, T, D]``.

Complexity: O(T·log T·d) bidirectional (measure on s = O(log T) sampled keys, u = O(log T) active queries against
T keys), O(T·log² T·d) causal (at most u·(1 + ln(T/u)) active queries). Memory O(T·d) forward and backward
(active queries in checkpointed chunks, ``ops/probsparse/sparse.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..ops.amp import no_autocast
from ..ops.probsparse import naive, sparse
from .attention import RotaryConfig, AttentionMixer, repeat_kv
from .base import MIXERS, Capabilities, plain_linear


@dataclass(frozen=True)
class ProbSparseConfig(RotaryConfig):
    """Attributes:
        factor: c in u = c·ln T active queries (Informer's ``factor``, default 5).
        sample_factor: keys sampled per query for the measure, ``sample_factor``·ln T.
    """

    factor: float = 5.0
    sample_factor: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor <= 0:
            raise ValueError(f"factor must be a positive number, got {self.factor!r}")
        if self.sample_factor <= 0:
            raise ValueError(f"sample_factor must be a positive number, got {self.sample_factor!r}")


@MIXERS.register("probsparse")
class ProbSparseAttention(AttentionMixer):
    """Informer's ProbSparse self-attention; x ``[B, T, D]`` -> ``[B, T, D]``."""

    config_class = ProbSparseConfig
    config: ProbSparseConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False,
                                complexity="T·log²T·d", positions=frozenset({"none", "rope"}), time_exponent=1,
                                log_exponent=2)
    example_options = {"factor": 2.0, "sample_factor": 2.0}

    def __init__(self, config: ProbSparseConfig) -> None:
        super().__init__(config)
        self.register_buffer("sample_seed", torch.randint(0, 2**31, (), device="cpu"))

    def select(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The active queries (``naive.select_queries``): idx, valid ``[B, H, A]``."""
        cfg = self.config
        t = q.shape[2]
        counts = [t] * q.shape[0] if key_padding_mask is None else key_padding_mask.sum(-1).tolist()
        measure = naive.sparsity_measure(q, k, key_padding_mask=key_padding_mask, sample_factor=cfg.sample_factor,
                                         causal=cfg.causal, seed=int(self.sample_seed))
        return naive.select_queries(measure, counts, factor=cfg.factor, causal=cfg.causal)

    def selection_qk(self, x: Tensor, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q, k for the selection. Under CPU autocast the projections are bf16, whose rounding (~0.4%) is enough to
        swap near-tied queries in and out of the active set; the selection then uses float32 projections of x, so
        autocast changes the outputs only by rounding, never by a different choice of queries (costs one float32
        projection of q, k under autocast only; of the whole ``qkv`` layer when it is quantised or factorised)."""
        if not (torch.amp.is_autocast_available(q.device.type) and torch.is_autocast_enabled(q.device.type)
                and q.dtype in (torch.bfloat16, torch.float16)):
            return q, k
        cfg = self.config
        n_qk = (cfg.num_heads + cfg.kv_heads) * cfg.head_dim
        with no_autocast(q.device), torch.no_grad():
            # the q, k rows of the weight when it is a plain one (qkv ran in project(); no hook changes q, k)
            if plain_linear(self.qkv, allow_hooks=True):
                bias = None if self.qkv.bias is None else self.qkv.bias[:n_qk].float()
                qk = F.linear(x.float(), self.qkv.weight[:n_qk].float(), bias)
            else:  # quantised or factorised (lightformer compress): only calling the layer computes it
                qk = self.qkv(x.float())[..., :n_qk].float()
            qk = rearrange(qk, "b t (n d) -> b n t d", d=cfg.head_dim)
            q32, k32 = qk.split([cfg.num_heads, cfg.kv_heads], dim=1)
            if self.rotary is not None:
                positions = torch.arange(x.shape[1], device=x.device)
                q32, k32 = self.rotary(q32, positions), self.rotary(k32, positions)
        return q32, repeat_kv(k32, cfg.num_heads)

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v = self.project(x, torch.arange(x.shape[1], device=x.device))
        h = q.shape[1]
        k, v = repeat_kv(k, h), repeat_kv(v, h)
        idx, valid = self.select(*self.selection_qk(x, q, k), key_padding_mask)
        o = sparse.probsparse_attention(q, k, v, idx, valid, causal=self.config.causal,
                                        key_padding_mask=key_padding_mask)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v = self.project(x, torch.arange(x.shape[1], device=x.device))
        h = q.shape[1]
        k, v = repeat_kv(k, h), repeat_kv(v, h)
        idx, valid = self.select(q, k, key_padding_mask)
        o = naive.probsparse_attention(q, k, v, idx, valid, causal=self.config.causal,
                                       key_padding_mask=key_padding_mask)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))
