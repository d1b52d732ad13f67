"""mlstm: the layer equals xlstm's reference ``mLSTMLayer`` with the same weights (when xlstm is installed), its
paper init survives the model's generic init, and the FLOP count follows its docstring formula."""

from __future__ import annotations

import pytest
import torch

import lightformer
from lightformer import LanguageModel, ModelConfig


def test_equals_the_reference_layer():
    """Same weights in xlstm's mLSTMLayer (parallel stabilised backend): same outputs. xlstm adds eps = 1e-6 to
    its stabilised normaliser, so agreement is to ~1e-6 relative, not to rounding."""
    xlstm = pytest.importorskip("xlstm", reason="the reference layer needs pip install --no-deps xlstm==2.0.6")
    torch.manual_seed(0)
    ours = lightformer.create_mixer("mlstm", dim=32, num_heads=4, causal=True, chunk_size=8).double()
    with torch.no_grad():  # a non-trivial state of every parameter
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = xlstm.mLSTMLayer(xlstm.mLSTMLayerConfig(embedding_dim=32, context_length=29, num_heads=4,
                                                   conv1d_kernel_size=4, qkv_proj_blocksize=4,
                                                   proj_factor=2.0)).double()
    with torch.no_grad():
        ref.proj_up.weight.copy_(ours.proj_up.weight)
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(ref, name).weight.copy_(getattr(ours, name).weight)
        ref.conv1d.conv.weight.copy_(ours.conv.weight[:, None, :])
        ref.conv1d.conv.bias.copy_(ours.conv.bias)
        for gate in ("igate", "fgate"):
            getattr(ref.mlstm_cell, gate).weight.copy_(getattr(ours, gate).weight)
            getattr(ref.mlstm_cell, gate).bias.copy_(getattr(ours, gate).bias)
        ref.mlstm_cell.outnorm.weight.copy_(ours.outnorm_weight - 1.0)  # xlstm stores the weight as 1 + w
        ref.learnable_skip.copy_(ours.learnable_skip)
        ref.proj_down.weight.copy_(ours.proj_down.weight)
    x = torch.randn(2, 29, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_paper_init_survives_the_model():
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=32, dim=64, num_layers=2, num_heads=4, mixer="mlstm",
                                   max_len=16, position="learned"))
    for block in lm.backbone.blocks:
        m = block.mixer
        torch.testing.assert_close(m.fgate.bias.detach(), torch.linspace(3.0, 6.0, 4))
        assert torch.all(m.fgate.weight == 0) and torch.all(m.igate.weight == 0)
        assert m.igate.bias.abs().max() < 0.5 and torch.all(m.learnable_skip == 1)
        std = m.q_proj.weight.std().item()
        assert std == pytest.approx((2 / (5 * 64)) ** 0.5, rel=0.15)


def test_flops_formula():
    m = lightformer.create_mixer("mlstm", dim=512, num_heads=4, causal=True)
    e, h, d, c, t = 1024, 4, 256, 64, 4096
    want = 2 * t * (512 * 2 * e + e * 4 + 3 * e * 4 + 3 * e * 2 * h + e * 512) + 2 * t * h * (2 * c * d + 2 * d * d)
    assert m.flops(t) == want and m.flops(t, batch=3) == 3 * want
    assert m.inner_dim == 1024 and m.head_dim == 256
