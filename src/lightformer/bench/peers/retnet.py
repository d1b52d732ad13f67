"""Peers of the retention mixers.

    yet_another_retnet   yet_another_retnet.retention.MultiScaleRetention, forward_chunkwise over chunks   -> retnet

yet-another-retnet (pip ``yet-another-retnet``, pure torch + einops) offers ``forward_parallel`` (the [T, T] decay
matrix: 17 s fwd+bwd at T = 4096, D = 512, one thread, and a cached [H, T, T] mask that does not fit at T = 16384)
and ``forward_chunkwise(q, k, v, start_idx, prev_state)``, one chunk per call. What a user runs for long inputs is
the chunkwise form in a loop over chunks with the state carried along; this adapter does that with
``PEER_CHUNK = 512`` tokens per call (the fastest of 64, 256, 512, 1024 at T = 4096, fwd+bwd, one thread).

Same work as ``retnet``: H = heads, key width D, value and gate width ``value_dim`` (2·D by default; the package
fixes them at D, so its v_proj, g_proj, group norm and out_proj are replaced by layers of that width, which its
forward handles unchanged), no biases (torchscale's and ours). Differences that do not change the work: its decay
schedule (1 − exp(linspace(log 1/32, log 1/512, H)), not the paper's 1 − 2^{−5−h}), no position-dependent xPos
scale in either, GroupNorm instead of RMSNorm per head.
"""

from __future__ import annotations

from .base import Peer, opt

#: tokens per ``forward_chunkwise`` call
PEER_CHUNK = 512


def _yet_another_retnet(options, seq_len, dim, heads, causal):
    from torch import cat, nn
    from yet_another_retnet.retention import MultiScaleRetention

    value_dim = opt(options, "retnet", "value_dim") or 2 * dim

    class ChunkwiseRetention(nn.Module):
        """``[B, T, D] -> [B, T, D]`` by ``forward_chunkwise`` over chunks of ``PEER_CHUNK`` tokens."""

        def __init__(self) -> None:
            super().__init__()
            m = MultiScaleRetention(embed_dim=dim, num_heads=heads, bias=False)
            m.v_proj = nn.Linear(dim, value_dim, bias=False)
            m.g_proj = nn.Linear(dim, value_dim, bias=False)
            m.group_norm = nn.GroupNorm(heads, value_dim, affine=False, eps=m.group_norm.eps)
            m.out_proj = nn.Linear(value_dim, dim, bias=False)
            self.retention = m

        def forward(self, x):
            state, outs = None, []
            for lo in range(0, x.shape[1], PEER_CHUNK):
                xc = x[:, lo:lo + PEER_CHUNK]
                o, state = self.retention.forward_chunkwise(xc, xc, xc, lo, state)
                outs.append(o)
            return cat(outs, dim=1)

    return ChunkwiseRetention()


def _unsupported(options, seq_len, dim, heads, causal):
    if not causal:
        return "retention is causal only"
    if (dim // heads) % 8:
        return f"yet_another_retnet needs dim/heads divisible by 8, got {dim // heads}"
    return None


PEERS = (
    Peer("yet_another_retnet", "yet_another_retnet", "yet-another-retnet==0.5.1", "retnet", _yet_another_retnet,
         _unsupported),
)
