"""Peers of the attention mixers (options: window, proj_len, features, hashes).

    sdpa              torch  fused QKV Linear + F.scaled_dot_product_attention + out Linear   -> softmax (and all)
    x_transformers    x_transformers.Attention (flash=True, i.e. SDPA inside)                -> softmax
    local_attention   local_attention.LocalMHA (window_size = window causal, window//2 else) -> sliding_window
    performer_pytorch performer_pytorch.SelfAttention (nb_features = num_features)            -> performer
    linformer         linformer.LinformerSelfAttention (k = proj_len, seq_len = T)            -> linformer
    reformer_pytorch  reformer_pytorch.LSHSelfAttention (n_hashes, bucket_size)               -> reformer_lsh
"""

from __future__ import annotations

from typing import Any

from .base import SDPA, Peer, opt as _opt


def _sdpa_module(dim: int, heads: int, causal: bool) -> Any:
    import torch.nn.functional as F
    from einops import rearrange
    from torch import nn

    class SDPAAttention(nn.Module):
        """What a plain PyTorch user writes: fused QKV Linear, SDPA, output Linear (no biases)."""

        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.out = nn.Linear(dim, dim, bias=False)

        def forward(self, x):  # x [B, T, D]
            q, k, v = rearrange(self.qkv(x), "b t (n h d) -> n b h t d", n=3, h=heads)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, T, d]
            return self.out(rearrange(o, "b h t d -> b t (h d)"))

    return SDPAAttention()


def _x_transformers(options, seq_len, dim, heads, causal):
    from x_transformers import Attention
    return Attention(dim=dim, dim_head=dim // heads, heads=heads, causal=causal, flash=True)


def _local_attention(options, seq_len, dim, heads, causal):
    from local_attention import LocalMHA
    w = _opt(options, "sliding_window", "window")
    return LocalMHA(dim=dim, window_size=w if causal else max(1, w // 2), heads=heads, dim_head=dim // heads,
                    causal=causal)


def _performer(options, seq_len, dim, heads, causal):
    from performer_pytorch import SelfAttention
    return SelfAttention(dim=dim, heads=heads, dim_head=dim // heads, causal=causal,
                         nb_features=_opt(options, "performer", "num_features"))


def _linformer(options, seq_len, dim, heads, causal):
    from linformer import LinformerSelfAttention
    return LinformerSelfAttention(dim=dim, seq_len=seq_len, k=_opt(options, "linformer", "proj_len"), heads=heads,
                                  dim_head=dim // heads)


def _reformer(options, seq_len, dim, heads, causal):
    from reformer_pytorch import LSHSelfAttention
    return LSHSelfAttention(dim=dim, heads=heads, dim_head=dim // heads, causal=causal,
                            bucket_size=_opt(options, "reformer_lsh", "bucket_size"),
                            n_hashes=_opt(options, "reformer_lsh", "n_hashes"))


def _reformer_unsupported(options, seq_len, dim, heads, causal):
    c = _opt(options, "reformer_lsh", "bucket_size")
    if seq_len % (2 * c):
        return f"reformer_pytorch needs T divisible by 2·bucket_size={2 * c}, got T={seq_len}"
    return None


PEERS = (
    Peer(SDPA, "torch", "torch", "softmax", lambda o, t, d, h, c: _sdpa_module(d, h, c)),
    Peer("x_transformers", "x_transformers", "x-transformers", "softmax", _x_transformers),
    Peer("local_attention", "local_attention", "local-attention", "sliding_window", _local_attention),
    Peer("performer_pytorch", "performer_pytorch", "performer-pytorch", "performer", _performer),
    Peer("linformer", "linformer", "linformer", "linformer", _linformer,
         lambda o, t, d, h, c: "linformer's projection over the whole sequence cannot be causal" if c else None),
    Peer("reformer_pytorch", "reformer_pytorch", "reformer-pytorch", "reformer_lsh", _reformer,
         _reformer_unsupported),
)
