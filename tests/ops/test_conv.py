"""ops/conv: the depthwise convolution's fast path against its explicit sum over taps (outputs and gradients,
float64, every tap count up to 5, odd lengths), its causality, and the ShortConv module's prefill and step."""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.conv import depthwise as conv
from lightformer.ops.conv import naive


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
def test_depthwise_conv_matches_naive(causal, kernel):
    g = torch.Generator().manual_seed(kernel)
    for t in (1, 2, 7, 63):
        x = torch.randn(2, t, 6, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(6, kernel, generator=g, dtype=torch.float64, requires_grad=True)
        fast = conv.depthwise_conv(x, w, causal=causal)
        ref = naive.depthwise_conv(x, w, causal=causal)
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
        gy = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(fast, (x, w), gy), torch.autograd.grad(ref, (x, w), gy)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        if causal and t > 1:  # output t must not see inputs after t
            x2 = x.detach().clone()
            x2[:, t // 2:] += 5.0
            y2 = conv.depthwise_conv(x2, w.detach(), causal=True)
            torch.testing.assert_close(y2[:, :t // 2], fast.detach()[:, :t // 2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_short_conv_prefill_and_steps_equal_forward(kernel):
    from lightformer.nn.short_conv import ShortConv

    torch.manual_seed(0)
    m = ShortConv(5, kernel).double()
    x = torch.randn(2, 11, 5, dtype=torch.float64)
    full = m(x)
    torch.testing.assert_close(full, m.oracle(x), rtol=1e-12, atol=1e-12)
    window = m.init_state(2, dtype=torch.float64)
    assert window.shape == (2, kernel - 1, 5)
    head, window2 = m.forward_state(x[:, :6], window)
    assert window.abs().sum() == 0  # the given window is not modified
    ys = [head]
    for t in range(6, 11):
        y_t, window2 = m.step(x[:, t], window2)
        ys.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(ys, dim=1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(window2, x[:, 11 - (kernel - 1):], rtol=0, atol=0)


def test_short_conv_rejects_bad_sizes():
    from lightformer.nn.short_conv import ShortConv

    with pytest.raises(ValueError, match="kernel_size"):
        ShortConv(4, 0)
    with pytest.raises(ValueError, match="channels"):
        ShortConv(True, 3)
