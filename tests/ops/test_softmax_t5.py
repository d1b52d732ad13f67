"""T5's learned relative bias in the softmax ops: ``tiled_attention(rel_bias=, rel_bucket=)``, which builds the bias
block by block from the bucket table and scatter-adds ``dS`` by bucket for the table's gradient, against the naive
oracle given the dense ``[1, H, Tq, Tk]`` bias (``bias.bucketed_bias``); and split-KV decoding with that bias.

Float64 comparisons are tight (the two differ only in the order of floating-point operations); fp32/bf16 follow
DESIGN.md's rule for exact paths: at most twice the error of the naive oracle run at the same dtype.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightformer.nn.positions import t5_bucket
from lightformer.ops.softmax import naive, tiled
from lightformer.ops.softmax.bias import bucketed_bias
from lightformer.ops.softmax.split_kv import split_kv_attention
from lightformer.ops.softmax.tiled import tiled_attention

FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3}


def _bucket(causal: bool, num_buckets: int = 32, max_distance: int = 24):
    # a short max_distance, so that T = 63 and 257 reach the last bucket and blocks of one bucket occur
    return functools.partial(t5_bucket, bidirectional=not causal, num_buckets=num_buckets, max_distance=max_distance)


def _inputs(b, h, tq, tk, d, seed, num_buckets=32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for t in (tq, tk, tk))
    do = torch.randn(b, h, tq, d, generator=g, dtype=torch.float64)
    table = torch.randn(num_buckets, h, generator=g, dtype=torch.float64)
    return q, k, v, do, table


def _mask(b, tk, seed, empty_row):
    m = torch.rand(b, tk, generator=torch.Generator().manual_seed(seed)) > 0.3
    m[:, 0] = True
    if empty_row:
        m[-1] = False  # a batch row whose every key is padded
    return m


def _run(fn, q, k, v, do, table, *, dtype, table_dtype=None, **kw):
    """Output and the gradients of q, k, v and the table, all as float64."""
    q, k, v = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    table = table.detach().to(table_dtype or dtype).requires_grad_()
    o = fn(q, k, v, table, **kw)
    o.backward(do.to(o.dtype))
    return [x.double() for x in (o, q.grad, k.grad, v.grad, table.grad)]


def _tiled(q, k, v, table, *, causal, key_padding_mask=None, bucket, block_size=None):
    return tiled_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, rel_bias=table,
                           rel_bucket=bucket, block_size=block_size)


def _naive(q, k, v, table, *, causal, key_padding_mask=None, bucket):
    bias = bucketed_bias(table, bucket, q.shape[2], k.shape[2])
    return naive.attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, bias=bias)


NAMES = ("out", "dq", "dk", "dv", "d_table")


@pytest.mark.parametrize("t", [1, 7, 63, 257])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_size", [5, 16, (24, 40)])  # none divides 7, 63 or 257
def test_tiled_equals_naive_float64(t, causal, block_size):
    q, k, v, do, table = _inputs(2, 3, t, t, 8, seed=t)
    kw = dict(causal=causal, key_padding_mask=_mask(2, t, t, empty_row=not causal), bucket=_bucket(causal))
    fast = _run(_tiled, q, k, v, do, table, dtype=torch.float64, block_size=block_size, **kw)
    ref = _run(_naive, q, k, v, do, table, dtype=torch.float64, **kw)
    for name, f, r in zip(NAMES, fast, ref):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-11, msg=name)
    if t > 1:  # (one key has weight 1 whatever its bias: no gradient)
        assert ref[-1].abs().sum() > 0  # the table does get a gradient


@pytest.mark.parametrize("tq,tk", [(1, 257), (5, 63), (63, 7), (7, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_equals_naive_end_aligned_queries(tq, tk, causal):
    """Queries at positions Tk − Tq + i (a prefill after a cache); Tq > Tk leaves causal rows with no key."""
    q, k, v, do, table = _inputs(2, 2, tq, tk, 4, seed=tq * 1000 + tk)
    kw = dict(causal=causal, key_padding_mask=_mask(2, tk, tk, empty_row=False), bucket=_bucket(causal))
    fast = _run(_tiled, q, k, v, do, table, dtype=torch.float64, block_size=(4, 9), **kw)
    ref = _run(_naive, q, k, v, do, table, dtype=torch.float64, **kw)
    for name, f, r in zip(NAMES, fast, ref):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-11, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_within_twice_plain_math(dtype, causal):
    """A float32 table with 16/32-bit q, k, v (the mixer under bf16 autocast)."""
    q, k, v, do, table = _inputs(2, 2, 129, 129, 16, seed=11)
    kw = dict(causal=causal, key_padding_mask=_mask(2, 129, 3, empty_row=False), bucket=_bucket(causal, 32, 128))
    ref = _run(_naive, q, k, v, do, table, dtype=torch.float64, **kw)
    plain = _run(_naive, q, k, v, do, table, dtype=dtype, table_dtype=torch.float32, **kw)
    fast = _run(_tiled, q, k, v, do, table, dtype=dtype, table_dtype=torch.float32, block_size=32, **kw)
    for name, f, p, r in zip(NAMES, fast, plain, ref):
        err, plain_err = (f - r).abs().max().item(), (p - r).abs().max().item()
        assert err <= 2 * plain_err + FLOOR[dtype] * max(1.0, r.abs().max().item()), (name, err, plain_err)


def test_gradcheck_with_the_table():
    q, k, v, _, table = _inputs(1, 2, 6, 6, 3, seed=4, num_buckets=8)
    args = tuple(x.requires_grad_() for x in (q, k, v, table))
    mask = torch.tensor([[True, False, True, True, True, True]])
    bucket = _bucket(False, num_buckets=8, max_distance=4)
    fn = lambda q, k, v, t: tiled_attention(q, k, v, key_padding_mask=mask, rel_bias=t, rel_bucket=bucket,
                                            block_size=(2, 3))
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("causal", [False, True])
def test_blocks_of_one_bucket_skip_the_dense_bias(monkeypatch, causal):
    """T = 257, blocks of 16, max distance 24: a block pair |j − i| >= 3 block-diagonals apart sees distances >= 33
    only, all in the last bucket of its direction (``const``: a per-row term, no [H, 16, 16] bias); the pairs within
    two block-diagonals (causal: those at or below the diagonal) gather the dense bias (``diag``), except the last
    1x1 block (query 256, key 256: distance 0 only, one bucket)."""
    kinds = []
    original = tiled._Plan.scores

    def counting(self, *args, **kwargs):
        kinds.append(args[6])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tiled._Plan, "scores", counting)
    q, k, v, do, table = _inputs(1, 2, 257, 257, 4, seed=6)
    q.requires_grad_()
    _tiled(q, k, v, table, causal=causal, bucket=_bucket(causal), block_size=16).backward(do)
    pairs, near = (17 * 18 // 2, 17 + 16 + 15 - 1) if causal else (17 * 17, 17 + 2 * 16 + 2 * 15 - 1)
    assert kinds.count("diag") == 2 * near  # forward + backward
    assert kinds.count("const") == 2 * (pairs - near)


class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor produced by any op (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_no_dense_bias_is_built(causal):
    """Neither the forward nor the backward makes a tensor of Tq·Tk (or H·Tq·Tk) elements: the bias and the
    table's gradient are made block by block from O(T) bucket ids."""
    t, h = 129, 2
    q, k, v, do, table = _inputs(1, h, t, t, 4, seed=7)
    q, k, v, table = (x.float().requires_grad_() for x in (q, k, v, table))
    with _MaxNumel() as mode:
        o = _tiled(q, k, v, table, causal=causal, bucket=_bucket(causal), block_size=16,
                   key_padding_mask=torch.ones(1, t, dtype=torch.bool))
        o.backward(do.float())
    assert torch.isfinite(table.grad).all() and table.grad.abs().sum() > 0
    assert mode.max_numel < t * t / 4
    with _MaxNumel() as dense:
        _naive(q, k, v, table, causal=causal, bucket=_bucket(causal))
    assert dense.max_numel >= h * t * t  # the probe does see the oracle's dense bias


def test_rejects_bad_arguments():
    q = k = v = torch.zeros(1, 2, 5, 4)
    bucket = _bucket(False)
    with pytest.raises(ValueError, match="rel_bias must be"):
        tiled_attention(q, k, v, rel_bias=torch.zeros(32, 3), rel_bucket=bucket)
    with pytest.raises(ValueError, match="come together"):
        tiled_attention(q, k, v, rel_bias=torch.zeros(32, 2))
    with pytest.raises(ValueError, match="one relative position bias"):
        tiled_attention(q, k, v, rel_bias=torch.zeros(32, 2), rel_bucket=bucket, alibi_slopes=torch.ones(2))
    with pytest.raises(ValueError, match="outside the table"):
        tiled_attention(q, k, v, rel_bias=torch.zeros(8, 2), rel_bucket=bucket)  # ids up to 31


@pytest.mark.parametrize("tk", [1, 7, 63])
@pytest.mark.parametrize("split_size", [1, 16, 4096])
def test_split_kv_decode_with_the_bias(tk, split_size):
    """Decoding queries (the last Tq positions) against a cache, the bias end-aligned like the oracle's."""
    tq = min(3, tk)
    q, k, v, do, table = _inputs(2, 3, tq, tk, 8, seed=tk)
    bias = bucketed_bias(table, _bucket(True), tq, tk)
    out = split_kv_attention(q, k, v, causal=True, split_size=split_size, bias=bias)
    torch.testing.assert_close(out, naive.attention(q, k, v, causal=True, bias=bias), rtol=1e-12, atol=1e-12)
