"""``ops/softmax/persistent`` (attention over persistent memory slots and the sequence) against the float64 oracle
``naive.memory_attention``: every route of the SDPA fast path (no mask, placeholder-query causal, materialised
mask), grouped heads, and the split-KV decode; the oracle itself reduces to ``naive.attention`` plus the memory.

Tolerance (DESIGN.md, exact mixers), as for the other softmax ops (``test_softmax_tiled``): the error of the fast
path vs the float64 oracle is at most 2x the error of the oracle run at the same dtype plus a small floor, errors
being root-mean-square differences over the output and the gradients of q, k, v and both memories.
"""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.softmax import naive
from lightformer.ops.softmax.persistent import memory_attention, memory_decode, memory_mask

from oracle_check import right_padded_mask

B, H, D, N = 2, 3, 8, 5
FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3}


def _tensors(tq, tk, *, h_kv=H, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return rand(B, H, tq, D), rand(B, h_kv, tk, D), rand(B, h_kv, tk, D), rand(h_kv, n, D), rand(h_kv, n, D)


def _run(fn, tensors, grad_out, **kw):
    """Output and the gradients of every input of ``fn``, all as float64."""
    inputs = [x.detach().clone().requires_grad_() for x in tensors]
    out = fn(*inputs, **kw)
    assert out.dtype == tensors[0].dtype
    return [x.double() for x in (out, *torch.autograd.grad(out, inputs, grad_out.to(out.dtype)))]


def _rms(x, ref):
    return (x - ref).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [1, 7, 63, 257])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_fast_matches_naive(dtype, t, causal, padded):
    kw = dict(causal=causal, key_padding_mask=right_padded_mask(B, t) if padded else None)
    tensors = _tensors(t, t, seed=t)
    grad_out = torch.randn(B, H, t, D, generator=torch.Generator().manual_seed(t + 1), dtype=torch.float64)
    ref = _run(naive.memory_attention, tensors, grad_out, **kw)
    plain = _run(naive.memory_attention, [x.to(dtype) for x in tensors], grad_out, **kw)
    fast = _run(memory_attention, [x.to(dtype) for x in tensors], grad_out, **kw)
    for name, f, p, r in zip(("out", "dq", "dk", "dv", "dmemory_k", "dmemory_v"), fast, plain, ref):
        assert torch.isfinite(f).all(), name
        assert _rms(f, r) <= 2 * _rms(p, r) + FLOOR[dtype], (name, _rms(f, r), _rms(p, r))


@pytest.mark.parametrize("tq,tk", [(1, 9), (4, 9), (9, 9)])
@pytest.mark.parametrize("h_kv", [H, 1])
def test_end_aligned_queries_and_grouped_heads(tq, tk, h_kv):
    q, k, v, mk, mv = _tensors(tq, tk, h_kv=h_kv, seed=tq)
    rep = lambda x, dim: x.repeat_interleave(H // h_kv, dim=dim)  # noqa: E731
    for causal in (False, True):
        ref = naive.memory_attention(q, rep(k, 1), rep(v, 1), rep(mk, 0), rep(mv, 0), causal=causal)
        torch.testing.assert_close(memory_attention(q, k, v, mk, mv, causal=causal), ref, rtol=1e-12, atol=1e-12)


def test_oracle_is_attention_over_the_concatenated_keys():
    q, k, v, mk, mv = _tensors(7, 7)
    keys = torch.cat([mk.expand(B, -1, -1, -1), k], 2)
    values = torch.cat([mv.expand(B, -1, -1, -1), v], 2)
    visible = torch.ones(B, N + 7, dtype=torch.bool)
    visible[1, N + 4:] = False
    out = naive.memory_attention(q, k, v, mk, mv, key_padding_mask=visible[:, N:])
    torch.testing.assert_close(out, naive.attention(q, keys, values, key_padding_mask=visible), rtol=1e-12,
                               atol=1e-12)


def test_mask_sees_every_slot():
    pad = torch.tensor([[True, True, False]])
    m = memory_mask(2, 3, 2, causal=True, key_padding_mask=pad)
    assert m.shape == (1, 1, 2, 5)
    assert m[0, 0].tolist() == [[True, True, True, True, False], [True, True, True, True, False]]
    assert memory_mask(3, 3, 1, causal=True)[0, 0].tolist() == [[True, True, False, False],
                                                                 [True, True, True, False],
                                                                 [True, True, True, True]]


@pytest.mark.parametrize("tk", [1, 7, 63, 257])
@pytest.mark.parametrize("split_size", [1, 16, 4096])
@pytest.mark.parametrize("tq", [1, 3])
def test_decode_matches_naive(tk, split_size, tq):
    tq = min(tq, tk)
    q, k, v, mk, mv = _tensors(tq, tk, seed=tk)
    ref = naive.memory_attention(q, k, v, mk, mv, causal=True)
    torch.testing.assert_close(memory_decode(q, k, v, mk, mv, split_size=split_size), ref, rtol=1e-12, atol=1e-12)


def test_errors_name_the_argument():
    q, k, v, mk, mv = _tensors(4, 4)
    with pytest.raises(ValueError, match="N=0"):
        memory_attention(q, k, v, mk[:, :0], mv[:, :0])
    with pytest.raises(ValueError, match="N=0"):
        naive.memory_attention(q, k, v, mk[:, :0], mv[:, :0])
    with pytest.raises(ValueError, match="memory_k"):
        memory_attention(q, k, v, mk[:1], mv[:1])
    with pytest.raises(ValueError, match="key_padding_mask"):
        memory_attention(q, k, v, mk, mv, key_padding_mask=torch.ones(B, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="split_size"):
        memory_decode(q, k, v, mk, mv, split_size=0)
