"""Registry-wide contract of blocks, FFNs and norms: every registered variant gets these checks by being registered.

Blocks are checked inside a whole model (they need a mixer and an FFN): shape kept, a gradient on every parameter,
causality through the stack, decode (prefill + step) equals the parallel forward, bf16 autocast close to fp32, and
bad options refused with a message that names them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightformer import LanguageModel, ModelConfig
from lightformer.blocks import BLOCKS, FFNS, NORMS

#: one exact-attention, one linear-attention and one recurrent mixer: blocks must not depend on the mixer kind
MIXERS_FOR_BLOCKS = ["softmax", "linear", "mamba"]


def model(block="pre_norm", ffn="mlp", norm="layernorm", mixer="softmax", **kw):
    cfg = ModelConfig(vocab_size=23, dim=16, num_layers=3, num_heads=2, mixer=mixer, block=block, ffn=ffn,
                      norm=norm, ffn_mult=2.0, position="none" if mixer != "softmax" else "rope", max_len=64, **kw)
    torch.manual_seed(0)
    return LanguageModel(cfg)


def ids(b=2, t=11, seed=1):
    return torch.randint(0, 23, (b, t), generator=torch.Generator().manual_seed(seed))


def check_model(m: LanguageModel) -> None:
    x = ids()
    logits, loss = m(x, x)
    assert logits.shape == (2, 11, 23) and torch.isfinite(logits).all()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no finite gradient on {name}"
        if p.numel() > 1 and "pos_embed" not in name:
            assert p.grad.abs().sum() > 0, f"zero gradient on {name}"
    m.eval()
    with torch.no_grad():
        # causality: changing the future leaves the past unchanged
        y = x.clone()
        y[:, 7:] = (y[:, 7:] + 5) % 23
        torch.testing.assert_close(m(y)[0][:, :7], m(x)[0][:, :7], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", MIXERS_FOR_BLOCKS)
@pytest.mark.parametrize("block", BLOCKS.names())
def test_block_contract(block, mixer):
    check_model(model(block=block, mixer=mixer))


@pytest.mark.parametrize("mixer", MIXERS_FOR_BLOCKS)
@pytest.mark.parametrize("block", BLOCKS.names())
def test_block_decode_equals_forward(block, mixer):
    m = model(block=block, mixer=mixer).double().eval()
    x = ids(t=13)
    with torch.no_grad():
        full = m.backbone(x)
        head, state = m.backbone.prefill(x[:, :6])
        rows = [head]
        for t in range(6, 13):
            h, state = m.backbone.step(x[:, t], state)
            rows.append(h[:, None])
    torch.testing.assert_close(torch.cat(rows, 1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block", BLOCKS.names())
def test_block_bf16_autocast_close_to_fp32(block):
    m = model(block=block).eval()
    x = ids()
    with torch.no_grad():
        ref = m(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x)[0]
    assert low.dtype == torch.float32  # the LM head returns fp32 logits
    err = (low - ref).abs().max() / ref.abs().max()
    assert err < 0.05, f"bf16 relative error {err:.3f}"


@pytest.mark.parametrize("ffn", FFNS.names())
def test_ffn_contract(ffn):
    m = model(ffn=ffn)
    check_model(m)
    layer = m.backbone.blocks[0].ffn
    layer.eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        seq = layer(x)
        # position-wise: one decoding step [B, D] equals the same row of a sequence
        torch.testing.assert_close(layer(x[:, 2]), seq[:, 2], rtol=1e-5, atol=1e-6)
        assert seq.shape == x.shape and seq.dtype == x.dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = layer(x)
    assert ((low.float() - seq).abs().max() / seq.abs().max()) < 0.05


@pytest.mark.parametrize("norm", NORMS.names())
def test_norm_contract(norm):
    check_model(model(norm=norm))
    layer = NORMS.create(norm, dim=16).double()
    x = torch.randn(4, 16, dtype=torch.float64) * 3 + 1
    y = layer(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    # every norm is invariant to the scale of its input (up to eps)
    torch.testing.assert_close(layer(7 * x), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("registry,name", [(BLOCKS, n) for n in BLOCKS.names()] + [(FFNS, n) for n in FFNS.names()]
                         + [(NORMS, n) for n in NORMS.names()])
def test_unknown_option_is_named(registry, name):
    with pytest.raises(TypeError, match="no_such_option"):
        registry.make_config(name, dim=16, no_such_option=1)
    fields = {f.name for f in dataclasses.fields(registry.get(name).config_class)}
    assert "dim" in fields


def test_model_config_names_bad_choices():
    with pytest.raises(ValueError, match="unknown block 'pre_nrom'"):
        ModelConfig(block="pre_nrom")
    with pytest.raises(ValueError, match="unknown ffn"):
        ModelConfig(ffn="glu2")
    with pytest.raises(ValueError, match="unknown norm"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(TypeError, match="'alpha2'"):
        ModelConfig(block="deepnorm", block_options={"alpha2": 1.0})
    with pytest.raises(ValueError, match="alpha must be > 0"):
        ModelConfig(block="deepnorm", block_options={"alpha": -1.0})
    with pytest.raises(ValueError, match="ffn_options may not set"):
        ModelConfig(ffn_options={"dim": 3})
    with pytest.raises(ValueError, match="block='sub_ln' needs exactly one linear output projection"):
        LanguageModel(ModelConfig(block="sub_ln", mixer="poolformer", position="none"))
