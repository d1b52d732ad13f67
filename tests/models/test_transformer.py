"""The Transformer backbone and its heads: decode paths, pooling, init, tying, and errors that name arguments."""

from __future__ import annotations

import math

import pytest
import torch

from lightformer import MIXERS, LanguageModel, ModelConfig, SequenceClassifier

DECODE_MIXERS = [n for n in MIXERS.names() if MIXERS.get(n).capabilities.decode]


def lm(mixer="softmax", position="learned", **kw):
    options = dict(MIXERS.get(mixer).example_options)
    options.update(kw.pop("mixer_options", {}))
    cfg = ModelConfig(vocab_size=40, dim=32, num_layers=2, num_heads=4, mixer=mixer, mixer_options=options,
                      position=position, max_len=64, **kw)
    torch.manual_seed(0)
    return LanguageModel(cfg).eval()


@pytest.mark.parametrize("mixer", DECODE_MIXERS)
@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_greedy_with_cache_equals_full_reforward(mixer, position):
    if position in ("rope", "alibi") and position not in MIXERS.get(mixer).capabilities.positions:
        pytest.skip(f"{mixer} does not take {position} positions")
    model = lm(mixer, position)
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(3))
    cached = model.generate(prompt, 20, temperature=0)
    full = model.generate(prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    # the step path also reproduces the parallel logits
    logits, _ = model(cached)
    state = model.init_state(2)
    for t in range(cached.shape[1]):
        step_logits, state = model.step(cached[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], rtol=1e-4, atol=1e-4)
    # and so does a prefill of a prefix, continued by a second prefill, in float64 (hidden states: the logits are
    # float32 by design)
    backbone = model.double().backbone
    with torch.no_grad():
        full_hidden = backbone(cached)
        head, state = backbone.prefill(cached[:, :9])
        assert state.length == 9 and state.nbytes() > 0
        tail, end = backbone.prefill(cached[:, 9:], state)
        assert end.length == cached.shape[1]
        head_logits, _ = model.prefill(cached[:, :9])
    torch.testing.assert_close(torch.cat([head, tail], dim=1), full_hidden, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(head_logits, model(cached)[0][:, :9], rtol=1e-5, atol=1e-5)


def test_sampling_respects_top_k_and_seed():
    model = lm()
    prompt = torch.zeros(1, 1, dtype=torch.int64)
    a = model.generate(prompt, 30, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    greedy = model.generate(prompt, 30, temperature=0)
    assert torch.equal(a, greedy), "top_k=1 sampling is greedy decoding"
    b = model.generate(prompt, 30, temperature=1.5, generator=torch.Generator().manual_seed(7))
    c = model.generate(prompt, 30, temperature=1.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(b, c)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_padding_aware(pooling):
    cfg = ModelConfig(vocab_size=40, dim=32, num_layers=2, num_heads=4, causal=False, max_len=32)
    torch.manual_seed(0)
    clf = SequenceClassifier(cfg, num_classes=3, pooling=pooling).eval()
    idx = torch.randint(0, 40, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    batched = clf(idx, key_padding_mask=mask)
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched[1], clf(idx[1:, :7])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[0], clf(idx[:1])[0], rtol=1e-5, atol=1e-5)


def test_gpt2_init_and_weight_tying():
    model = lm()
    backbone = model.backbone
    assert model.head.weight is backbone.embed.weight
    out_std = backbone.blocks[0].mixer.out.weight.std().item()
    expected = 0.02 / math.sqrt(2 * 2)
    assert abs(out_std - expected) / expected < 0.15
    assert abs(backbone.blocks[0].mixer.qkv.weight.std().item() - 0.02) / 0.02 < 0.15


@pytest.mark.parametrize("ffn,norm", [("swiglu", "rmsnorm"), ("gelu", "layernorm")])
def test_block_variants_train(ffn, norm):
    model = lm(ffn=ffn, norm=norm).train()
    idx = torch.randint(0, 40, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert abs(loss.item() - math.log(40)) < 0.5, "a fresh model predicts near-uniformly"


def test_errors_name_the_argument():
    model = lm()
    with pytest.raises(ValueError, match="idx must be \\[B, T\\]"):
        model(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_len=64"):
        model(torch.zeros(1, 65, dtype=torch.int64))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 4), 40))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 4, dtype=torch.int64), torch.zeros(1, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 60, dtype=torch.int64), 10)
    with pytest.raises(ValueError, match="unknown mixer"):
        lm("nope")
    with pytest.raises(TypeError, match="windw"):
        lm(mixer_options={"windw": 3})
    with pytest.raises(ValueError, match="mixer_options may not set"):
        ModelConfig(mixer_options={"dim": 3})
    with pytest.raises(ValueError, match="position"):
        ModelConfig(position="relative")
    with pytest.raises(ValueError, match="causal"):
        LanguageModel(ModelConfig(causal=False))


def test_mixer_that_cannot_take_the_position_scheme_says_so():
    names = [n for n in MIXERS.names() if "alibi" not in MIXERS.get(n).capabilities.positions]
    if not names:
        pytest.skip("every registered mixer accepts alibi")
    with pytest.raises(ValueError, match="position='alibi'"):
        lm(names[0], position="alibi")
