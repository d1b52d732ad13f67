"""Shared oracle check for the op tests: a fast path's outputs and input gradients against the float64 naive
oracle, allowed at most twice the error of the naive oracle run at the same dtype (plus a small floor)."""

from __future__ import annotations

import torch

FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3}


def right_padded_mask(b: int, t: int) -> torch.Tensor:
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, max(1, t - t // 3):] = False  # second sequence right-padded by a third
    return mask


def assert_fast_matches_naive(fast_fn, naive_fn, tensors, dtype):
    """Outputs and gradients of fast vs naive, each at ``dtype``, against naive in float64."""
    ref_in = [t.detach().double().requires_grad_(True) for t in tensors]
    ref = naive_fn(*ref_in)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out)
    results = {}
    for name, fn in (("fast", fast_fn), ("naive", naive_fn)):
        inp = [t.detach().to(dtype).requires_grad_(True) for t in tensors]
        out = fn(*inp)
        assert out.dtype == dtype
        grads = torch.autograd.grad(out, inp, grad_out.to(dtype))
        results[name] = [(out.double() - ref).abs().max().item()] + \
                        [(g.double() - r).abs().max().item() for g, r in zip(grads, ref_grads)]
    scales = [max(1.0, x.abs().max().item()) for x in (ref, *ref_grads)]
    for i, (f, n, s) in enumerate(zip(results["fast"], results["naive"], scales)):
        assert f <= 2 * n + FLOOR[dtype] * s, f"item {i}: fast error {f:.3g} vs naive error {n:.3g} at {dtype}"
