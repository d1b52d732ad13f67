"""Each block, FFN and norm against its paper: equations written out by hand from the module's parameters,
constants, init, and the model-level connectivity options (ResFormer, DenseFormer)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightformer import LanguageModel, ModelConfig
from lightformer.blocks import FFNS, NORMS
from lightformer.blocks.base import glu_hidden
from lightformer.blocks.deepnorm import deepnorm_constants
from lightformer.blocks.sub_ln import sub_ln_gain


def build(**kw):
    cfg = dict(vocab_size=29, dim=16, num_layers=2, num_heads=2, mixer="softmax", position="none", max_len=32)
    cfg.update(kw)
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(**cfg)).double().eval()


def x_in(t=9):
    return torch.randn(2, t, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


def test_pre_norm_is_the_block_every_old_checkpoint_was_trained_with():
    m = build()
    b = m.backbone.blocks[0]
    assert [n for n, _ in b.named_children()] == ["norm1", "mixer", "norm2", "ffn"]
    assert sorted(m.state_dict())[:6] == ['backbone.blocks.0.ffn.fc1.bias', 'backbone.blocks.0.ffn.fc1.weight',
                                          'backbone.blocks.0.ffn.fc2.bias', 'backbone.blocks.0.ffn.fc2.weight',
                                          'backbone.blocks.0.mixer.out.weight', 'backbone.blocks.0.mixer.qkv.weight']
    x = x_in()
    h = x + b.mixer(F.layer_norm(x, (16,), b.norm1.weight, b.norm1.bias))
    n2 = F.layer_norm(h, (16,), b.norm2.weight, b.norm2.bias)
    ref = h + F.linear(F.gelu(F.linear(n2, b.ffn.fc1.weight, b.ffn.fc1.bias)), b.ffn.fc2.weight, b.ffn.fc2.bias)
    torch.testing.assert_close(b(x), ref, rtol=0, atol=0)
    # the init: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2L)), zero biases
    big = LanguageModel(ModelConfig(dim=256, num_layers=8, num_heads=4))
    blk = big.backbone.blocks[3]
    assert abs(blk.ffn.fc1.weight.std().item() - 0.02) < 0.001
    assert abs(blk.ffn.fc2.weight.std().item() - 0.02 / 4) < 0.0003
    assert abs(blk.mixer.out.weight.std().item() - 0.02 / 4) < 0.0003
    assert blk.ffn.fc1.bias.abs().max() == 0


def test_post_norm_sandwich_parallel_macaron_equations():
    x = x_in()
    ln = lambda norm, v: F.layer_norm(v, (16,), norm.weight, norm.bias)  # noqa: E731
    b = build(block="post_norm").backbone.blocks[0]
    h = ln(b.norm1, x + b.mixer(x))
    torch.testing.assert_close(b(x), ln(b.norm2, h + b.ffn(h)), rtol=0, atol=0)
    assert isinstance(build(block="post_norm").backbone.norm, torch.nn.Identity)
    b = build(block="sandwich").backbone.blocks[0]
    h = x + ln(b.norm1_out, b.mixer(ln(b.norm1, x)))
    torch.testing.assert_close(b(x), h + ln(b.norm2_out, b.ffn(ln(b.norm2, h))), rtol=0, atol=0)
    b = build(block="parallel").backbone.blocks[0]
    n = ln(b.norm, x)
    torch.testing.assert_close(b(x), x + b.mixer(n) + b.ffn(n), rtol=0, atol=0)
    b = build(block="macaron").backbone.blocks[0]
    h = x + 0.5 * b.ffn1(ln(b.norm1, x))
    h = h + b.mixer(ln(b.norm2, h))
    torch.testing.assert_close(b(x), h + 0.5 * b.ffn2(ln(b.norm3, h)), rtol=0, atol=0)


@pytest.mark.parametrize("layers", [6, 32, 100])
def test_deepnorm_constants_and_init(layers):
    alpha, beta = deepnorm_constants(layers)
    assert alpha == pytest.approx((2 * layers) ** 0.25) and beta == pytest.approx((8 * layers) ** -0.25)
    torch.manual_seed(0)
    m = LanguageModel(ModelConfig(dim=256, num_layers=layers, num_heads=4, block="deepnorm", max_len=16))
    b = m.backbone.blocks[layers // 2]
    assert b.alpha == pytest.approx(alpha)
    x = torch.randn(1, 5, 256)
    ln = lambda norm, v: F.layer_norm(v, (256,), norm.weight, norm.bias)  # noqa: E731
    h = ln(b.norm1, alpha * x + b.mixer(x))
    torch.testing.assert_close(b(x), ln(b.norm2, alpha * h + b.ffn(h)))
    xavier = lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))  # noqa: E731
    qkv = b.mixer.qkv.weight
    assert qkv[:256].std().item() == pytest.approx(xavier(256, 256), rel=0.03)     # q and k: gain 1
    assert qkv[256:512].std().item() == pytest.approx(xavier(256, 256), rel=0.03)
    assert qkv[512:].std().item() == pytest.approx(beta * xavier(256, 256), rel=0.03)  # v: gain beta
    assert b.mixer.out.weight.std().item() == pytest.approx(beta * xavier(256, 256), rel=0.03)
    assert b.ffn.fc1.weight.std().item() == pytest.approx(beta * xavier(256, 1024), rel=0.03)
    assert b.ffn.fc2.weight.std().item() == pytest.approx(beta * xavier(1024, 256), rel=0.03)


def test_sub_ln_puts_a_norm_before_each_output_projection_and_scales_by_gamma():
    assert sub_ln_gain(12) == pytest.approx(math.sqrt(math.log(24)))
    torch.manual_seed(0)
    ref = LanguageModel(ModelConfig(dim=256, num_layers=12, num_heads=4))
    torch.manual_seed(0)
    m = LanguageModel(ModelConfig(dim=256, num_layers=12, num_heads=4, block="sub_ln"))
    gamma = sub_ln_gain(12)
    a, b = ref.backbone.blocks[2], m.backbone.blocks[2]
    torch.testing.assert_close(b.mixer.out.weight, gamma * a.mixer.out.weight)
    torch.testing.assert_close(b.ffn.fc1.weight, gamma * a.ffn.fc1.weight)
    torch.testing.assert_close(b.mixer.qkv.weight[512:], gamma * a.mixer.qkv.weight[512:])
    torch.testing.assert_close(b.mixer.qkv.weight[:512], a.mixer.qkv.weight[:512])
    assert b.ffn_inner_norm.normalized_shape == (1024,)  # over the FFN's hidden width
    x = torch.randn(1, 5, 256)
    ln = lambda norm, v: F.layer_norm(v, v.shape[-1:], norm.weight, norm.bias)  # noqa: E731
    n = ln(b.norm2, x)
    ffn = F.linear(ln(b.ffn_inner_norm, F.gelu(F.linear(n, b.ffn.fc1.weight, b.ffn.fc1.bias))),
                   b.ffn.fc2.weight, b.ffn.fc2.bias)
    torch.testing.assert_close(b.ffn(n), ffn)


@pytest.mark.parametrize("dim,mult,hidden", [(512, 4.0, 1368), (768, 4.0, 2048), (128, 4.0, 344), (16, 1.0, 8)])
def test_glu_hidden_widths(dim, mult, hidden):
    """Shazeer 2020: d_ff 3072 -> 2048 at d_model 768 (2/3), rounded to a multiple of 8 here."""
    for name in ("swiglu", "geglu", "reglu", "bilinear"):
        cfg = FFNS.make_config(name, dim=dim, mult=mult)
        assert FFNS.get(name).hidden(cfg) == glu_hidden(cfg) == hidden
        assert FFNS.create(name, dim=dim, mult=mult).fc1.weight.shape == (2 * hidden, dim)


def test_glu_activations():
    x = torch.randn(3, 16, dtype=torch.float64)
    for name, act in (("swiglu", F.silu), ("geglu", F.gelu), ("reglu", F.relu), ("bilinear", lambda v: v)):
        f = FFNS.create(name, dim=16, mult=3.0).double()
        gate, value = (x @ f.fc1.weight.T).chunk(2, -1)
        torch.testing.assert_close(f(x), (act(gate) * value) @ f.fc2.weight.T)


def test_polycom_activations():
    x = torch.randn(3, 16, dtype=torch.float64)
    f = FFNS.create("polyrelu", dim=16, mult=2.0).double()
    with torch.no_grad():
        f.coeffs.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    r = F.relu(F.linear(x, f.fc1.weight, f.fc1.bias))
    torch.testing.assert_close(f(x), F.linear(0.1 + 0.2 * r + 0.3 * r**2 + 0.4 * r**3, f.fc2.weight, f.fc2.bias))
    f = FFNS.create("polynorm", dim=16, mult=2.0).double()
    assert f.coeffs.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])
    h = F.linear(x, f.fc1.weight, f.fc1.bias)
    rms = lambda v: v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)  # noqa: E731
    act = (rms(h) + rms(h**2) + rms(h**3)) / 3
    torch.testing.assert_close(f(x), F.linear(act, f.fc2.weight, f.fc2.bias))
    with pytest.raises(ValueError, match="order must be >= 1"):
        FFNS.create("polynorm", dim=16, order=0)


def test_scalenorm():
    norm = NORMS.create("scalenorm", dim=16).double()
    assert norm.scale.item() == pytest.approx(4.0)  # sqrt(d)
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(norm(x), 4.0 * x / x.norm(dim=-1, keepdim=True))


def test_value_residual_mixes_the_first_layers_values():
    m = build(num_layers=3, value_residual=True)
    plain = build(num_layers=3)
    plain.load_state_dict(m.state_dict())
    ids = torch.randint(0, 29, (2, 9), generator=torch.Generator().manual_seed(1))
    v1 = {}
    def keep(mod, args, out):
        v1["v"] = out[..., 32:]

    handles = [plain.backbone.blocks[0].mixer.qkv.register_forward_hook(keep)]
    for blk in list(plain.backbone.blocks)[1:]:
        handles.append(blk.mixer.qkv.register_forward_hook(
            lambda mod, a, out: torch.cat([out[..., :32], 0.5 * out[..., 32:] + 0.5 * v1["v"]], -1)))
    with torch.no_grad():
        torch.testing.assert_close(m(ids)[0], plain(ids)[0], rtol=0, atol=0)
    for h in handles:
        h.remove()
    assert not torch.allclose(m(ids)[0], plain(ids)[0])
    with pytest.raises(ValueError, match="value_residual needs a fused QKV projection"):
        build(mixer="mamba", value_residual=True)


def test_value_residual_decodes_like_forward_even_through_a_stepping_prefill():
    for mixer in ("softmax", "aft_simple"):
        m = build(mixer=mixer, num_layers=3, value_residual=True)
        ids = torch.randint(0, 29, (2, 11), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            full = m.backbone(ids)
            head, state = m.backbone.prefill(ids[:, :7])
            tail, _ = m.backbone.prefill(ids[:, 7:], state)
        torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-9, atol=1e-9)


def test_denseformer_starts_as_the_plain_model_and_learns_its_weights():
    m = build(num_layers=3, depth_weighted_average=True)
    plain = build(num_layers=3)
    state = {k: v for k, v in m.state_dict().items() if ".dwa." not in k and not k.startswith("backbone.dwa")}
    plain.load_state_dict(state)
    ids = torch.randint(0, 29, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(m(ids)[0], plain(ids)[0], rtol=0, atol=0)
    assert [tuple(d.weights.shape) for d in m.backbone.dwa] == [(2,), (3,), (4,)]
    with torch.no_grad():
        m.backbone.dwa[2].weights.copy_(torch.tensor([0.5, 0.0, 0.25, 1.0], dtype=torch.float64))
    # the last average is 0.5 * embeddings + 0.25 * block-1 output + 1.0 * block-2 output
    emb = m.backbone.embed(ids)
    h1 = m.backbone.blocks[0](emb)
    h2 = m.backbone.blocks[1](h1)
    h3 = m.backbone.blocks[2](h2)
    torch.testing.assert_close(m.backbone(ids), m.backbone.norm(0.5 * emb + 0.25 * h2 + h3))
    m.train()
    _, loss = m(ids, ids)
    loss.backward()
    assert m.backbone.dwa[1].weights.grad.abs().sum() > 0
