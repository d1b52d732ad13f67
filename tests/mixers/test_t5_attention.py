"""``position="t5"``: T5's learned relative bias (Raffel et al. 2020, Sec. 2.1) in the exact attention mixers
``softmax`` and ``tiled_softmax`` — the table they own, decoding (step, prefill, split-KV) against the forward,
equality of the two mixers through a shared state dict, and refusal by every other mixer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightformer
from lightformer import MIXERS, LanguageModel, ModelConfig
from lightformer.mixers import Mixer
from lightformer.train.optim import declared_no_decay

DIM, HEADS = 32, 4
T5_MIXERS = ("softmax", "tiled_softmax")
TOL = dict(rtol=1e-10, atol=1e-10)


def make(name, causal=True, seed=0, **options):
    """A float64 mixer with a random table (the zero init would make every position check vacuous)."""
    torch.manual_seed(seed)
    options = {**MIXERS.get(name).example_options, "t5_num_buckets": 16, "t5_max_distance": 12, **options}
    m = lightformer.create_mixer(name, dim=DIM, num_heads=HEADS, causal=causal, position="t5", **options)
    nn.init.normal_(m.rel_bias, std=1.0)
    return m.double().eval()


def inputs(b=2, t=29, seed=1):
    return torch.randn(b, t, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_only_the_exact_mixers_accept_t5():
    ours = [n for n in MIXERS.names() if MIXERS.get(n).__module__.startswith("lightformer.mixers.")]
    assert {n for n in ours if "t5" in MIXERS.get(n).capabilities.positions} == set(T5_MIXERS)


@pytest.mark.parametrize("name", [n for n in MIXERS.names() if n not in T5_MIXERS])
def test_every_other_mixer_refuses_t5(name):
    cls = MIXERS.get(name)
    causal = not cls.capabilities.non_causal  # a direction the mixer has, so only the position is wrong
    with pytest.raises(ValueError, match=r"^position='t5'"):
        lightformer.create_mixer(name, dim=DIM, num_heads=HEADS, causal=causal, position="t5", **cls.example_options)


@pytest.mark.parametrize("name", T5_MIXERS)
@pytest.mark.parametrize("causal", [False, True])
def test_the_table(name, causal):
    m = lightformer.create_mixer(name, dim=DIM, num_heads=HEADS, causal=causal, position="t5", t5_num_buckets=16,
                                 num_kv_heads=2)
    assert isinstance(m.rel_bias, nn.Parameter) and m.rel_bias.shape == (16, HEADS)  # per query head
    assert m.rel_bias.dtype == torch.float32 and (m.rel_bias == 0).all()
    assert m.rel_bucket.keywords == dict(bidirectional=not causal, num_buckets=16, max_distance=128)
    nn.init.normal_(m.rel_bias)
    m.init_weights(num_layers=4)  # the mixer's own init: a model's generic pass cannot change it
    assert (m.rel_bias == 0).all()
    assert declared_no_decay(m) == {id(m.rel_bias)}
    assert "rel_bias" in m.state_dict()
    plain = lightformer.create_mixer(name, dim=DIM, num_heads=HEADS, causal=causal)
    assert plain.rel_bias is None and "rel_bias" not in plain.state_dict()  # old checkpoints still load


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_tiled_equals_softmax_with_shared_state_dict(causal, num_kv_heads):
    sdpa = make("softmax", causal, num_kv_heads=num_kv_heads)
    tiled = make("tiled_softmax", causal, seed=1, num_kv_heads=num_kv_heads, block_size=8)
    tiled.load_state_dict(sdpa.state_dict())
    x = inputs(t=37)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 20:] = False
    for kw in ({}, {"key_padding_mask": mask}):
        y_sdpa, y_tiled = sdpa(x, **kw), tiled(x, **kw)
        torch.testing.assert_close(y_tiled[mask], y_sdpa[mask], **TOL)
        g = torch.randn_like(y_sdpa).masked_fill(~mask[..., None], 0.0)
        (grad_sdpa,) = torch.autograd.grad(y_sdpa, [sdpa.rel_bias], g)
        (grad_tiled,) = torch.autograd.grad(y_tiled, [tiled.rel_bias], g)
        torch.testing.assert_close(grad_tiled, grad_sdpa, **TOL)
        assert grad_sdpa.abs().sum() > 0


def test_the_bias_changes_the_output():
    m = make("tiled_softmax", False)
    x = inputs()
    y = m(x)
    with torch.no_grad():
        m.rel_bias[3] += 1.0  # keys 3 positions before the query (bidirectional bucket 3)
    assert not torch.allclose(m(x), y)


@pytest.mark.parametrize("name", T5_MIXERS)
@pytest.mark.parametrize("split_kv_size", [2048, 8])
def test_decode_equals_forward(name, split_kv_size):
    """Step by step (query position = cache length), with split-KV once the cache passes 8 keys; distances reach
    the far buckets (t5_max_distance=12 < T)."""
    m = make(name, split_kv_size=split_kv_size)
    x = inputs()
    y = m(x)
    state = m.init_state(2, dtype=torch.float64)
    steps = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y_t, state = m.step(x[:, t], state)
            steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, **TOL)


@pytest.mark.parametrize("name", T5_MIXERS)
@pytest.mark.parametrize("cut", [1, 13, 28])
def test_prefill_then_continue_equals_forward(name, cut):
    m = make(name)
    x = inputs()
    y = m(x)
    y0, state = m(x[:, :cut], return_state=True)
    y1, state1 = m(x[:, cut:], state=state, return_state=True)  # a second prefill after a cache
    torch.testing.assert_close(torch.cat([y0, y1], 1), y, **TOL)
    y_t, _ = m.step(x[:, cut], state)
    torch.testing.assert_close(y_t, y[:, cut], **TOL)
    assert state1.length == x.shape[1]


@pytest.mark.parametrize("option,value,causal", [("t5_num_buckets", 3, False), ("t5_num_buckets", 1, True),
                                                 ("t5_max_distance", 8, False), ("t5_max_distance", 16, True)])
def test_bad_bucket_options_name_themselves(option, value, causal):
    with pytest.raises(ValueError, match=rf"^{option} must"):
        lightformer.create_mixer("softmax", dim=DIM, num_heads=HEADS, causal=causal, position="t5",
                                 **{option: value})


def test_a_model_takes_position_t5():
    cfg = ModelConfig(vocab_size=40, dim=DIM, num_layers=2, num_heads=HEADS, mixer="tiled_softmax",
                      mixer_options={"block_size": 4}, position="t5", max_len=64)
    torch.manual_seed(0)
    model = LanguageModel(cfg).eval()
    mixers = [mod for mod in model.modules() if isinstance(mod, Mixer)]
    assert len(mixers) == 2 and all(mod.config.position == "t5" and mod.rel_bias is not None for mod in mixers)
    with torch.no_grad():
        for mod in mixers:
            nn.init.normal_(mod.rel_bias, std=1.0)
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(3))
    cached = model.generate(prompt, 12, temperature=0)
    assert torch.equal(cached, model.generate(prompt, 12, temperature=0, use_cache=False))
