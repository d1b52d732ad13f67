"""``nn.heads.split_heads``: the views and gradients of rearrange + split, with a one-copy backward."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from lightformer.nn.heads import split_heads


@pytest.mark.parametrize("sizes", [(4, 4, 4), (4, 1, 1), (2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_heads_matches_rearrange_split(sizes, dtype):
    torch.manual_seed(0)
    d = 8
    y = torch.randn(2, 5, sum(sizes) * d, dtype=dtype, requires_grad=True)
    ref = y.detach().clone().requires_grad_(True)
    got = split_heads(y, sizes, d)
    want = rearrange(ref, "b t (n d) -> b n t d", d=d).split(list(sizes), dim=1)
    grads = [torch.randn(w.shape, dtype=dtype) for w in want]
    for g_, w in zip(got, want):
        assert g_.shape == w.shape
        torch.testing.assert_close(g_, w, rtol=0, atol=0)
    # one output unused: its gradient slot is zero
    torch.autograd.backward(list(got[:-1]), grads[:-1])
    torch.autograd.backward(list(want[:-1]), grads[:-1])
    torch.testing.assert_close(y.grad, ref.grad, rtol=0, atol=0)
    assert y.grad.is_contiguous()


def test_split_heads_without_grad_and_bad_shape():
    y = torch.randn(1, 3, 24)
    q, k = split_heads(y, (2, 1), 8)
    assert q.shape == (1, 2, 3, 8) and k.shape == (1, 1, 3, 8)
    with pytest.raises(ValueError, match=r"y must be \[B, T, 3·4\], got \(1, 3, 24\)"):
        split_heads(y, (2, 1), 4)
