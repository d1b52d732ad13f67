"""Peers of the recurrent matrix-memory mixers.

    xlstm   xlstm.mLSTMLayer (NX-AI's reference, native pure-torch parallel backend)   -> mlstm

``mLSTMLayer(mLSTMLayerConfig(embedding_dim=D, context_length=T, num_heads=H, conv1d_kernel_size=4,
qkv_proj_blocksize=4, proj_factor=2.0))`` is the layer ``mlstm`` reimplements (same projections, convolution,
gates, per-head norm, skip and output gate), with the options of the ``mlstm`` cell when given. Its cell runs
``parallel_stabilized_simple``: the stabilised [B, H, T, T] decay and score matrices, O(T²) time and memory
(NX-AI/xlstm issue #8), plus a ``context_length²`` bool mask buffer built at construction; so the layer is built
for exactly the benchmarked T and the bench's memory cap reports where it runs out.

Install: ``pip install --no-deps xlstm==2.0.6`` (a 92 KB wheel, 0.8 MB installed, 1.5 s) is enough for this layer:
importing it needs only torch, numpy and packaging, which lightformer installs anyway. Its declared dependencies
would add ``mlstm_kernels`` (Triton kernels for xLSTMLarge, plus matplotlib), PyYAML and ninja, none of them used
here.
"""

from __future__ import annotations

from .base import Peer, opt


def _xlstm(options, seq_len, dim, heads, causal):
    from xlstm import mLSTMLayer, mLSTMLayerConfig

    return mLSTMLayer(mLSTMLayerConfig(
        embedding_dim=dim, context_length=seq_len, num_heads=heads,
        conv1d_kernel_size=opt(options, "mlstm", "conv1d_kernel_size") or 4,
        qkv_proj_blocksize=opt(options, "mlstm", "qkv_proj_blocksize") or 4,
        proj_factor=opt(options, "mlstm", "proj_factor") or 2.0))


def _unsupported(options, seq_len, dim, heads, causal):
    if not causal:
        return "the mLSTM is causal only"
    return None


PEERS = (
    Peer("xlstm", "xlstm", "--no-deps xlstm==2.0.6", "mlstm", _xlstm, _unsupported),
)
