"""split_kv_attention (flash-decoding) against the float64 oracle, and the associativity of merge_partials."""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.softmax import naive
from lightformer.ops.softmax.split_kv import Partial, finalize, merge_partials, partial_attention, split_kv_attention

FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3}


def _inputs(b, h, tq, tk, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g, dtype=torch.float64).to(dtype) for t in (tq, tk, tk)]


def _rms(x, ref):
    return (x.double() - ref).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tk", [1, 7, 63, 257])
@pytest.mark.parametrize("tq", [1, 3])
@pytest.mark.parametrize("split_size", [1, 16, 64, 4096])
@pytest.mark.parametrize("causal", [True, False])
def test_equals_naive_decode(dtype, tk, tq, split_size, causal):
    tq = min(tq, tk)
    q, k, v = _inputs(2, 3, tq, tk, 8, dtype, seed=tk + tq)
    g = torch.Generator().manual_seed(tk)
    mask = torch.rand(2, tk, generator=g) > 0.3
    mask[0, -1] = True
    mask[1] = False  # a batch row whose every key is padded outputs zeros
    slopes = torch.tensor([0.5, 0.125, 1 / 64])
    kw = dict(causal=causal, key_padding_mask=mask, alibi_slopes=slopes)
    ref = naive.attention(q.double(), k.double(), v.double(), causal=causal, key_padding_mask=mask,
                          alibi_slopes=slopes.double())
    plain = naive.attention(q, k, v, **kw)
    out = split_kv_attention(q, k, v, split_size=split_size, **kw)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()
    assert _rms(out, ref) <= 2 * _rms(plain, ref) + FLOOR[dtype]


def test_plain_autograd_matches_oracle():
    q, k, v = _inputs(1, 2, 2, 50, 8, torch.float64, seed=1)
    slopes = torch.tensor([0.3, 0.05], dtype=torch.float64)
    mask = torch.ones(1, 50, dtype=torch.bool)
    mask[0, 10:20] = False
    grads = []
    for fn, kw in ((split_kv_attention, dict(split_size=7)), (naive.attention, {})):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*x, causal=True, key_padding_mask=mask, alibi_slopes=slopes, **kw).pow(2).sum().backward()
        grads.append([t.grad for t in x])
    for a, b in zip(*grads):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


def _random_partials(n, seed):
    q, k, v = _inputs(1, 2, 1, 12 * n, 4, torch.float64, seed=seed)
    parts = [partial_attention(q, k[:, :, 12 * i:12 * (i + 1)], v[:, :, 12 * i:12 * (i + 1)], start=12 * i,
                               total=12 * n, alibi_slopes=torch.tensor([0.7, 0.01], dtype=torch.float64))
             for i in range(n)]
    return q, k, v, parts


def _close(a: Partial, b: Partial):
    return all(torch.allclose(x, y, rtol=1e-12, atol=1e-12) for x, y in zip(a, b))


def test_merge_partials_is_associative_and_commutative():
    q, k, v, (a, b, c) = _random_partials(3, seed=2)
    left = merge_partials(merge_partials(a, b), c)
    right = merge_partials(a, merge_partials(b, c))
    assert _close(left, right)
    assert _close(merge_partials(a, b), merge_partials(b, a))
    # and the merged partial is the attention over all keys
    ref = naive.attention(q, k, v, alibi_slopes=torch.tensor([0.7, 0.01], dtype=torch.float64))
    assert torch.allclose(finalize(left, torch.float64), ref, atol=1e-12)


def test_merge_with_empty_partial_is_identity():
    _, _, _, (a,) = _random_partials(1, seed=3)
    empty = Partial(torch.full_like(a.m, float("-inf")), torch.zeros_like(a.l), torch.zeros_like(a.o))
    assert _close(merge_partials(a, empty), a)
    assert _close(merge_partials(empty, a), a)
    both = merge_partials(empty, empty)  # no NaN from exp(-inf - (-inf))
    assert torch.isneginf(both.m).all() and (both.l == 0).all() and (both.o == 0).all()
    assert (finalize(both, torch.float32) == 0).all()


def test_any_split_size_gives_the_same_result():
    q, k, v = _inputs(1, 2, 1, 300, 16, torch.float64, seed=4)
    outs = [split_kv_attention(q, k, v, split_size=s) for s in (1, 7, 64, 300, 1000)]
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-13)


def test_rejects_bad_arguments():
    q, k, v = _inputs(1, 2, 1, 10, 4, torch.float32, seed=5)
    with pytest.raises(ValueError, match="split_size"):
        split_kv_attention(q, k, v, split_size=0)
    with pytest.raises(ValueError):
        split_kv_attention(q, k[:, :1], v, split_size=4)
    with pytest.raises(ValueError, match="key_padding_mask"):
        split_kv_attention(q, k, v, key_padding_mask=torch.ones(1, 9, dtype=torch.bool))
