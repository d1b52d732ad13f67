"""The in-place softmax helpers (``ops/softmax/inplace.py``) and the tiled kernel's device branches: the fused CPU
path and the public path every other device takes agree with each other and with autograd, and the mixers that use
them give the same output and gradients on either path."""

from __future__ import annotations

import pytest
import torch

import lightformer
from lightformer.ops.softmax import inplace, naive, tiled
from lightformer.ops.softmax.tiled import tiled_attention


def _scores(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, 5, 17, generator=g) * 4
    s[0, 1, 3:] = -torch.inf  # a masked tail
    return s.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_both_paths_equal_torch_softmax(monkeypatch, dtype):
    s = _scores(dtype)
    ref = torch.softmax(s.float(), -1)
    fused = inplace.softmax_(s.clone())
    monkeypatch.setattr(inplace, "FUSED_DEVICES", ())
    public = inplace.softmax_(s.clone())
    tol = 1e-6 if dtype == torch.float32 else 4e-3
    assert fused.dtype == public.dtype == dtype
    torch.testing.assert_close(fused.float(), ref, rtol=0, atol=tol)
    torch.testing.assert_close(public.float(), ref, rtol=0, atol=tol)
    assert fused[0, 1, 3:].eq(0).all() and public[0, 1, 3:].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_backward_both_paths_equal_autograd(monkeypatch, dtype):
    s = _scores(dtype).float().requires_grad_()
    p = torch.softmax(s, -1)
    dp = torch.randn(p.shape, generator=torch.Generator().manual_seed(1))
    (ref,) = torch.autograd.grad(p, s, dp)
    p_low, dp_low = p.detach().to(dtype), dp.to(dtype)
    fused = inplace.softmax_backward_(dp_low.clone(), p_low, dtype)
    monkeypatch.setattr(inplace, "FUSED_DEVICES", ())
    public = inplace.softmax_backward_(dp_low.clone(), p_low, dtype)
    tol = 1e-6 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(fused.float(), ref, rtol=0, atol=tol)
    torch.testing.assert_close(public.float(), ref, rtol=0, atol=tol)


def test_non_contiguous_buffers_take_the_public_path():
    s = _scores(torch.float32).transpose(1, 2)  # a non-contiguous out= is wrong in ATen's fused softmax
    ref = torch.softmax(s, -1)
    torch.testing.assert_close(inplace.softmax_(s), ref)


def _mixer_grads(name, **options):
    torch.manual_seed(0)
    mixer = lightformer.create_mixer(name, dim=32, num_heads=4, causal=True, **options)
    x = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y = mixer(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
    return [y.detach(), x.grad, *(p.grad for p in mixer.parameters() if p.grad is not None)]


@pytest.mark.parametrize("name,options", [("sliding_window", {"window": 8}), ("longformer", {"window": 8}),
                                          ("bigbird", {}), ("performer", {})])
def test_mixers_agree_on_the_public_path(monkeypatch, name, options):
    fused = _mixer_grads(name, **options)
    monkeypatch.setattr(inplace, "FUSED_DEVICES", ())
    public = _mixer_grads(name, **options)
    for a, b in zip(fused, public, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra", ["alibi", "padding"])
def test_tiled_rescale_every_block_equals_the_lazy_rescale(monkeypatch, extra):
    """An accelerator rescales every key block (no host read); the result is the lazy CPU path's and the oracle's."""
    g = torch.Generator().manual_seed(4)
    q, k, v, do = (torch.randn(2, 3, 97, 16, generator=g) * 3 for _ in range(4))
    kw = {"causal": True}
    if extra == "alibi":
        kw["alibi_slopes"] = torch.tensor([0.5, 0.125, 1 / 64])
    else:
        kw["key_padding_mask"] = torch.rand(2, 97, generator=g) > 0.3

    def run(fn, **extra_kw):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        o = fn(qq, kk, vv, **kw, **extra_kw)
        o.backward(do)
        return [o.detach(), qq.grad, kk.grad, vv.grad]

    lazy = run(tiled_attention, block_size=16)
    monkeypatch.setattr(tiled, "LAZY_RESCALE_DEVICES", ())
    eager = run(tiled_attention, block_size=16)
    ref = run(naive.attention)
    for a, b, r in zip(lazy, eager, ref, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b, r, rtol=1e-4, atol=1e-4)


def test_flush_denormals_keeps_the_callers_setting():
    denormal = torch.tensor(1e-39)
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-denormal mode")
    with tiled.flush_denormals(torch.device("cpu")):
        assert (denormal * 1.0).item() == 0.0
    assert (denormal * 1.0).item() != 0.0  # switched off again
    torch.set_flush_denormal(True)
    try:
        with tiled.flush_denormals(torch.device("cpu")):
            pass
        assert (denormal * 1.0).item() == 0.0  # the caller's "on" survives the kernel
    finally:
        torch.set_flush_denormal(False)
    with tiled.flush_denormals(torch.device("meta")):  # not a CPU thread's mode: untouched
        assert (denormal * 1.0).item() != 0.0
