"""``reformer_lsh``: multi-round angular-LSH attention with shared query/keys.

Kitaev, Kaiser, Levskaya 2020, "Reformer: The Efficient Transformer", Sec. 2-3 and App. A. x: ``[B, T, D]`` ->
``[B, T, D]``:

    qk = x W_qk, v = x W_v                      (shared-QK: keys k_j = qk_j / ‖qk_j‖, Sec. 2)
    round r: h^(r)(x) = argmax([x R_r ; −x R_r]),  R_r [d, n_buckets/2] random      (Sec. 2, LSH)
             sort by (bucket, position), chunks of ``bucket_size``, each chunk attends to itself and the previous
             chunk, only keys of the same bucket; self scored −10⁵ (used only if nothing else is valid)
    o_i = Σ_r exp(z_i^(r) − z_i) o_i^(r)        (log-sum-exp combination of the rounds, App. A)
    y = o W_out

* ``n_buckets`` per sequence = the even number that makes the average bucket hold ``bucket_size`` tokens:
  ``max(2, 2·ceil(n / (2·bucket_size)))`` with n the real tokens (``ops/lsh/hashing.py``).
* Rotations: derived from an integer seed drawn from the torch RNG at construction and stored as the buffer
  ``hash_seed`` (saved in the state dict), blockwise prefix-stable in n_buckets; so forward, oracle, repeated calls
  and a reloaded model hash identically, and batch members never influence each other's buckets. No redraw option.
* Causal: keys after the query are masked, and chunks are aligned to bucket starts (a bucket's chunk boundaries
  then depend only on its own earlier tokens, which the paper's unaligned chunks do not guarantee; see
  ``ops/lsh/naive.py``). n_buckets depends on T, so a causal prefix run differs from the full run's prefix.
* Padding: padded tokens are hashed to a sentinel bucket after all real ones and are never keys; each sequence's
  n_buckets counts its real tokens only, so real positions equal the unpadded run.
* The paper's de-duplication term N_{i,j} (App. A) is not applied (see ``ops/lsh/naive.py``).
* No decode path (capabilities.decode=False): buckets and chunks depend on the whole sequence.

Complexity: O(n_hashes·T·bucket_size·d) attention + O(n_hashes·T log T) sorting + the hash O(n_hashes·T·d·n_buckets)
= O(n_hashes·T²·d / bucket_size) with n_buckets ∝ T (small constant: below the attention cost up to T ≈ 8192 at
bucket_size 64). Memory O(n_hashes·T + T·d) per head: backward recomputes the chunk scores (``ops/lsh/chunked.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops.lsh import chunked, naive
from ..ops.lsh.hashing import lsh_buckets
from .base import MIXERS, Capabilities, Mixer, MixerConfig


@dataclass(frozen=True)
class ReformerLSHConfig(MixerConfig):
    """Reformer LSH-attention options.

    Attributes:
        n_hashes: rounds of hashing (default 4; the paper's Fig. 5 / Table 2 use 1-8).
        bucket_size: chunk length and average bucket size (default 64, the paper's chunk size).
        bias: use biases in the qk, v and output projections.
    """

    n_hashes: int = 4
    bucket_size: int = 64
    bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_hashes", "bucket_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@MIXERS.register("reformer_lsh")
class ReformerLSH(Mixer):
    """Reformer LSH self-attention. x ``[B, T, D]`` -> ``[B, T, D]``; parameters ``qk_v`` (fused W_qk, W_v) and
    ``out``."""

    config_class = ReformerLSHConfig
    config: ReformerLSHConfig
    capabilities = Capabilities(exact=False, causal=True, padding_mask=True, decode=False,
                                complexity="n_hashes·(T·bucket_size + T²/bucket_size)·d", max_len=None,
                                positions=frozenset({"none"}), time_exponent=2,
                                compile="the hash seed is read as a Python int (a graph break after the fused "
                                        "q/k/v projection) and torch 2.13's AOTAutograd fails to regenerate the "
                                        "aliased [B, H, T, d] views at that break ('shape ... is invalid for input')")
    example_options = {"n_hashes": 2, "bucket_size": 4}

    def __init__(self, config: ReformerLSHConfig) -> None:
        super().__init__(config)
        self.qk_v = nn.Linear(config.dim, 2 * config.dim, bias=config.bias)
        self.out = nn.Linear(config.dim, config.dim, bias=config.bias)
        self.register_buffer("hash_seed", torch.randint(0, 2 ** 62, (1,), device="cpu"), persistent=True)

    def _project(self, x: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.config
        qk, v = rearrange(self.qk_v(x), "b t (n h d) -> n b h t d", n=2, h=cfg.num_heads)  # [B, H, T, d] each
        buckets = lsh_buckets(qk.detach(), seed=int(self.hash_seed), n_hashes=cfg.n_hashes,
                              bucket_size=cfg.bucket_size, key_padding_mask=key_padding_mask)  # [B, H, R, T]
        return qk, v, buckets

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        qk, v, buckets = self._project(x, key_padding_mask)
        o = chunked.lsh_attention(qk, v, buckets, bucket_size=self.config.bucket_size, causal=self.config.causal,
                                  key_padding_mask=key_padding_mask)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        qk, v, buckets = self._project(x, key_padding_mask)
        o = naive.lsh_attention(qk, v, buckets, bucket_size=self.config.bucket_size, causal=self.config.causal,
                                key_padding_mask=key_padding_mask)
        return self.out(rearrange(o, "b h t d -> b t (h d)"))
