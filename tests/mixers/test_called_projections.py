"""Mixers call their projections when those are not plain ``nn.Linear`` layers: a quantised or factorised ``qkv``
(``lightformer compress``) must not be bypassed by a shortcut that reads ``qkv.weight`` (Linformer's (E X) W_kᵀ,
ProbSparse's float32 selection under autocast)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightformer import create_mixer
from lightformer.compress import LowRankLinear
from lightformer.mixers.base import plain_linear


def factorised(layer: nn.Linear, rank: int) -> tuple[LowRankLinear, nn.Linear]:
    """A rank-``rank`` factorisation of ``layer`` and the plain layer with its product as weight."""
    torch.manual_seed(1)
    low = LowRankLinear(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
    dense = copy.deepcopy(layer)
    with torch.no_grad():
        dense.weight.copy_(low.second.weight @ low.first.weight)
        if layer.bias is not None:
            low.second.bias.copy_(layer.bias)
    return low, dense


def test_plain_linear():
    layer = nn.Linear(4, 4)
    assert plain_linear(layer)
    handle = layer.register_forward_pre_hook(lambda m, a: None)
    assert not plain_linear(layer) and plain_linear(layer, allow_hooks=True)
    handle.remove()
    assert not plain_linear(LowRankLinear(4, 4, 2, bias=True))

    class Sub(nn.Linear):
        pass

    assert not plain_linear(Sub(4, 4))


@pytest.mark.parametrize("share_heads", [True, False])
def test_linformer_calls_a_factorised_qkv(share_heads):
    torch.manual_seed(0)
    mixer = create_mixer("linformer", dim=32, num_heads=4, max_len=16, proj_len=8, share_heads=share_heads).eval()
    low, dense = factorised(mixer.qkv, rank=6)
    reference = copy.deepcopy(mixer)
    reference.qkv = dense  # plain: takes the (E X) W_kᵀ shortcut when share_heads
    mixer.qkv = low
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), reference(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mixer(x), mixer.oracle(x), rtol=1e-5, atol=1e-5)


def test_linformer_calls_a_hooked_qkv():
    """The shortcut would skip a forward hook on qkv (the value residual's); with one, the layer is called."""
    torch.manual_seed(0)
    mixer = create_mixer("linformer", dim=32, num_heads=4, max_len=16, proj_len=8).eval()
    calls = []
    mixer.qkv.register_forward_hook(lambda m, a, out: calls.append(1))
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        mixer(x)
    assert calls == [1]


def test_linformer_calls_an_int8_qkv():
    pytest.importorskip("torchao", reason="the compress extra (torchao)")
    from lightformer.compress.int8 import _quantize

    torch.manual_seed(0)
    mixer = create_mixer("linformer", dim=32, num_heads=4, max_len=16, proj_len=8).eval()
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        before = mixer(x)
        _quantize(mixer, {"qkv"})
        assert not plain_linear(mixer.qkv)
        # through the layer: its forward quantises the activations; equals the projection path computed by hand
        torch.testing.assert_close(mixer(x), mixer.oracle(x), rtol=1e-5, atol=1e-5)
        assert (mixer(x) - before).abs().max() < 0.05 * before.abs().max()


def test_probsparse_selection_calls_a_factorised_qkv_under_autocast():
    torch.manual_seed(0)
    mixer = create_mixer("probsparse", dim=32, num_heads=4, causal=True, factor=2.0, sample_factor=2.0).eval()
    low, dense = factorised(mixer.qkv, rank=6)
    reference = copy.deepcopy(mixer)
    reference.qkv = dense
    mixer.qkv = low
    x = torch.randn(2, 24, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, _ = mixer.project(x, torch.arange(24))
        q32, k32 = mixer.selection_qk(x, q, k)
        rq, rk, _ = reference.project(x, torch.arange(24))
        r32, rk32 = reference.selection_qk(x, rq, rk)
        assert q32.dtype == torch.float32
        torch.testing.assert_close(q32, r32, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k32, rk32, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mixer(x).float(), reference(x).float(), rtol=0.05, atol=0.05)
