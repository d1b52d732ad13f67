"""Reversed attention: the key-blocked fast path (``ops/reversed/blocked.py``) against the dense oracle
(``ops/reversed/naive.py``), outputs and gradients, float32/bf16, odd lengths, key blocks shorter than T, padding;
and the defining property of reversed attention (Ding et al. 2023, Sec. 3.1): every key sends one unit of attention
over the queries, so the outputs sum to the sum of the values."""

from __future__ import annotations

import math

import pytest
import torch

from lightformer.ops.reversed import blocked, naive

B, H, D = 2, 2, 8
LENGTHS = (1, 7, 63, 257)


def make(t: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, t, D, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(B, t, dtype=torch.bool)
    mask[1, t // 2 + 1:] = False
    return q.to(dtype), (1.5 * k).to(dtype), v.to(dtype), mask


def run(fn, q, k, v, mask, grad_out, **kw):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    y = fn(*leaves, key_padding_mask=mask, **kw)
    return [y] + list(torch.autograd.grad(y, leaves, grad_out.to(y.dtype)))


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("padded", [False, True])
def test_blocked_matches_oracle_float64(t, padded):
    q, k, v, mask = make(t)
    mask = mask if padded else None
    g = torch.randn(B, H, t, D, dtype=torch.float64)
    for a, b in zip(run(blocked.reversed_attention, q, k, v, mask, g, block_size=16),
                    run(naive.reversed_attention, q, k, v, mask, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_error_within_twice_naive(dtype):
    t = 257
    q, k, v, mask = make(t, seed=1)
    g = torch.randn(B, H, t, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = run(naive.reversed_attention, q, k, v, mask, g)
    low = [x.to(dtype) for x in (q, k, v)]
    floor = 1e-6 if dtype == torch.float32 else 1e-3
    for a, n, e in zip(run(blocked.reversed_attention, *low, mask, g, block_size=32),
                       run(naive.reversed_attention, *low, mask, g), exact):
        err_fast, err_naive = (a.double() - e).abs().max().item(), (n.double() - e).abs().max().item()
        assert err_fast <= 2 * err_naive + floor * e.abs().max().item(), (err_fast, err_naive)


def test_each_key_sends_one_unit():
    """Σ_i out_i = Σ_j v_j over real tokens (column-normalised A); padded queries receive exactly 0."""
    q, k, v, mask = make(40)
    out = blocked.reversed_attention(q, k, v, key_padding_mask=mask, block_size=16)
    m = mask[:, None, :, None].double()
    torch.testing.assert_close((out * m).sum(2), (v * m).sum(2), rtol=1e-10, atol=1e-10)
    assert (out[1, :, 21:] == 0).all()


def test_equals_transposed_row_softmax():
    """out = Âᵀ V with Â = softmax(K Qᵀ / sqrt(d)) over its last axis (the paper's transposed form)."""
    q, k, v, _ = make(33)
    a_hat = torch.softmax(k @ q.transpose(-1, -2) / math.sqrt(D), dim=-1)  # [B, H, Tk, Tq]
    torch.testing.assert_close(blocked.reversed_attention(q, k, v, block_size=8), a_hat.transpose(-1, -2) @ v,
                               rtol=1e-10, atol=1e-12)
