"""tiled_attention (FlashAttention on the CPU) against the float64 oracle ``naive.attention``.

Tolerance (DESIGN.md, exact mixers): the error of the fast path vs the float64 oracle is at most 2x the error of
plain PyTorch math (``naive.attention`` run at the same dtype) plus a tiny absolute floor. Errors are root-mean-square
differences over outputs and the gradients of q, k, v (inputs are standard normal, so values are O(1)).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightformer.ops.softmax import naive, tiled
from lightformer.ops.softmax.tiled import tiled_attention

FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float64: 1e-12}


def _inputs(b, h, tq, tk, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for t in (tq, tk, tk))
    do = torch.randn(b, h, tq, d, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v, do)]


def _run(fn, q, k, v, do, **kw):
    """Output and input gradients of ``fn``, all as float64."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = fn(q, k, v, **kw)
    o.backward(do.to(o.dtype))
    return [x.double() for x in (o, q.grad, k.grad, v.grad)]


def _rel(x, ref):
    """RMS error (absolute: a gradient that is exactly 0, e.g. dq with a single key, has no relative error)."""
    return (x - ref).pow(2).mean().sqrt().item()


def _assert_close_to_oracle(q, k, v, do, *, block_size=None, **kw):
    dtype = q.dtype
    ref = _run(naive.attention, *(x.double() for x in (q, k, v, do)),
               **{n: (t.double() if n == "alibi_slopes" and t is not None else t) for n, t in kw.items()})
    plain = _run(naive.attention, q, k, v, do, **kw)
    fast = _run(tiled_attention, q, k, v, do, block_size=block_size, **kw)
    for name, f, p, r in zip(("out", "dq", "dk", "dv"), fast, plain, ref):
        assert torch.isfinite(f).all(), name
        assert _rel(f, r) <= 2 * _rel(p, r) + FLOOR[dtype], (name, _rel(f, r), _rel(p, r))


def _mask(b, tk, seed, empty_row):
    g = torch.Generator().manual_seed(seed + 1)
    m = torch.rand(b, tk, generator=g) > 0.3
    if empty_row:
        m[-1] = False
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [1, 7, 63, 257])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("extra", ["none", "padding", "alibi", "padding+alibi"])
def test_matches_oracle(dtype, t, causal, extra):
    q, k, v, do = _inputs(2, 3, t, t, 16, dtype, seed=t)
    kw = {"causal": causal}
    if "padding" in extra:
        kw["key_padding_mask"] = _mask(2, t, t, empty_row=not causal)  # a fully padded batch row (non-causal)
    if "alibi" in extra:
        kw["alibi_slopes"] = torch.tensor([0.5, 0.125, 1 / 64])
    _assert_close_to_oracle(q, k, v, do, **kw)


@pytest.mark.parametrize("t,block_size,causal,dtype", [
    (257, 16, True, torch.float32), (257, 16, False, torch.bfloat16),
    (129, (32, 16), False, torch.float32), (129, (16, 48), True, torch.bfloat16),
])
def test_small_blocks(t, block_size, causal, dtype):
    """Blocks much smaller than T: many key blocks per query row, online rescaling, partial last blocks."""
    q, k, v, do = _inputs(2, 2, t, t, 16, dtype, seed=3)
    mask = _mask(2, t, 3, empty_row=False)
    _assert_close_to_oracle(q, k, v, do, causal=causal, key_padding_mask=mask,
                            alibi_slopes=torch.tensor([0.25, 1 / 32]), block_size=block_size)


@pytest.mark.parametrize("tq,tk", [(1, 257), (5, 63), (40, 200), (63, 7), (7, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tq_ne_tk(tq, tk, causal, dtype):
    """Queries end-aligned at positions Tk − Tq + i (decoding chunks); Tq > Tk leaves causal rows with no key."""
    q, k, v, do = _inputs(2, 2, tq, tk, 8, dtype, seed=tq * 1000 + tk)
    _assert_close_to_oracle(q, k, v, do, causal=causal, alibi_slopes=torch.tensor([0.5, 0.0625]),
                            key_padding_mask=_mask(2, tk, tk, empty_row=False), block_size=16)


def test_float64_tight():
    q, k, v, do = _inputs(1, 2, 63, 63, 8, torch.float64, seed=9)
    kw = dict(causal=True, alibi_slopes=torch.tensor([0.3, 0.05], dtype=torch.float64), block_size=16)
    fast = _run(tiled_attention, q, k, v, do, **kw)
    kw.pop("block_size")
    ref = _run(naive.attention, q, k, v, do, **kw)
    for f, r in zip(fast, ref):
        assert _rel(f, r) < 1e-13


def test_gradcheck():
    q, k, v, _ = _inputs(1, 2, 5, 6, 3, torch.float64, seed=4)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    mask = torch.tensor([[True, False, True, True, True, True]])
    fn = lambda q, k, v: tiled_attention(q, k, v, causal=True, key_padding_mask=mask,
                                         alibi_slopes=torch.tensor([0.5, 0.1], dtype=torch.float64), block_size=2)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_rows_without_keys_are_zero_with_finite_grads():
    q, k, v, do = _inputs(2, 2, 9, 4, 8, torch.float32, seed=5)
    mask = torch.tensor([[True, True, False, True], [False] * 4])
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = tiled_attention(q, k, v, causal=True, key_padding_mask=mask, block_size=3)
    o.backward(do)
    assert (o[1] == 0).all()  # batch row 1: every key padded
    assert (o[0, :, :5] == 0).all()  # queries at positions -5..-1 precede every key
    for t in (o, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    assert (q.grad[1] == 0).all() and (k.grad[1] == 0).all() and (v.grad[1] == 0).all()


def test_block_iteration_and_causal_skipping(monkeypatch):
    """block_size=16 at T=257 runs 17 x 17 block pairs; causal visits only the 17·18/2 pairs at or left of the
    diagonal (fully masked blocks are skipped)."""
    calls = []
    original = tiled._Plan.scores

    def counting(self, *args, **kwargs):
        calls.append(args[6])  # the block kind
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tiled._Plan, "scores", counting)
    q, k, v, do = _inputs(1, 1, 257, 257, 4, torch.float32, seed=6)
    for causal, pairs in ((False, 17 * 17), (True, 17 * 18 // 2)):
        calls.clear()
        q.requires_grad_()
        tiled_attention(q, k, v, causal=causal, block_size=16).backward(do)
        assert len(calls) == 2 * pairs  # forward + backward
        # only blocks straddling the diagonal get a mask (not the last 1x1 block: its key is the query itself)
        assert calls.count("diag") == (2 * 16 if causal else 0)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_is_linear_in_t(dtype):
    """Neither the autograd graph nor any temporary of the forward or backward holds Tq·Tk elements."""
    t, d = 129, 4
    q, k, v, do = _inputs(1, 1, t, t, d, dtype, seed=7)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with _MaxNumel() as mode:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            o = tiled_attention(q, k, v, causal=True, alibi_slopes=torch.tensor([0.5]),
                                key_padding_mask=torch.ones(1, t, dtype=torch.bool), block_size=16)
        o.backward(do)
    assert saved and max(saved) <= t * d  # q, k, v, output, log-sum-exp
    assert mode.max_numel < t * t / 4  # block-sized temporaries only (largest: the [2, T, d] dK/dV accumulator)
    # the dense path does build a T x T tensor, so the probe can see one
    with _MaxNumel() as dense:
        naive.attention(q, k, v, causal=True)
    assert dense.max_numel >= t * t


def test_default_block_size_bounded():
    bq, bk = tiled.default_block_size(4096, 4096, 8)
    assert 8 * bq * bk <= tiled._BLOCK_ELEMENTS and bq >= 256 and bk >= 256
    assert tiled.default_block_size(7, 1, 6) == (7, 1)
    bq, bk = tiled.default_block_size(100_000, 100_000, 512)  # many batch·heads: smaller blocks
    assert (bq, bk) == (64, 64)  # the floor: the budget gives way to matmuls too small to pay for themselves


@pytest.mark.parametrize("bad", [
    dict(k=torch.zeros(1, 2, 5, 3)),
    dict(key_padding_mask=torch.ones(1, 4, dtype=torch.bool)),
    dict(alibi_slopes=torch.ones(3)),
    dict(block_size=0),
])
def test_rejects_bad_arguments(bad):
    args = dict(q=torch.zeros(1, 2, 5, 4), k=torch.zeros(1, 2, 5, 4), v=torch.zeros(1, 2, 5, 4))
    kw = {n: bad.pop(n) for n in list(bad) if n not in args}
    args.update(bad)
    with pytest.raises(ValueError):
        tiled_attention(args["q"], args["k"], args["v"], **kw)


def test_scale_argument():
    q, k, v, do = _inputs(1, 1, 7, 7, 4, torch.float64, seed=8)
    out = tiled_attention(q, k, v, scale=0.3, block_size=3)
    assert torch.allclose(out, naive.attention(q, k, v, scale=0.3), atol=1e-12)
