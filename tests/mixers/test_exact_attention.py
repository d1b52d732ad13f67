"""The exact-attention family beyond the contract: shared parameters, GQA/MQA, ALiBi, RoPE and T5 on every path,
split-KV decoding, the sliding-window cache, and equality of softmax and tiled_softmax."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightformer

DIM, HEADS = 32, 4


def make(name, causal=True, seed=0, **options):
    torch.manual_seed(seed)
    m = lightformer.create_mixer(name, dim=DIM, num_heads=HEADS, causal=causal, **options).eval()
    if m.rel_bias is not None:  # position="t5": a random table, the zero init would hide the bias
        nn.init.normal_(m.rel_bias, std=1.0)
    return m


@pytest.mark.parametrize("position", ["none", "rope", "alibi", "t5"])
@pytest.mark.parametrize("num_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_equals_softmax_with_shared_state_dict(position, num_kv_heads, causal):
    sdpa = make("softmax", causal, position=position, num_kv_heads=num_kv_heads).double()
    tiled = make("tiled_softmax", causal, seed=1, position=position, num_kv_heads=num_kv_heads,
                 block_size=8).double()
    tiled.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 37, DIM, dtype=torch.float64)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 20:] = False
    torch.testing.assert_close(tiled(x), sdpa(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tiled(x, key_padding_mask=mask)[mask], sdpa(x, key_padding_mask=mask)[mask],
                               rtol=1e-10, atol=1e-10)


def test_sliding_window_wider_than_sequence_is_softmax():
    sdpa = make("softmax", True).double()
    local = make("sliding_window", True, window=64).double()
    local.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 40, DIM, dtype=torch.float64)
    torch.testing.assert_close(local(x), sdpa(x), rtol=1e-10, atol=1e-10)


def test_sliding_window_sees_only_its_window():
    m = make("sliding_window", True, window=4)
    x = torch.randn(1, 20, DIM)
    y = m(x)
    x2 = x.clone()
    x2[:, 10] += 5.0  # token 10 is inside the windows of queries 10..13 only
    changed = (m(x2) - y).abs().amax(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [10, 11, 12, 13]


@pytest.mark.parametrize("position", ["none", "rope", "alibi", "t5"])
@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_split_kv_decode_equals_plain_decode(position, num_kv_heads):
    plain = make("softmax", position=position, num_kv_heads=num_kv_heads)
    split = make("softmax", position=position, num_kv_heads=num_kv_heads, split_kv_size=8)
    split.load_state_dict(plain.state_dict())
    x = torch.randn(2, 41, DIM)
    s1, s2 = plain.init_state(2), split.init_state(2)
    with torch.no_grad():
        for t in range(41):
            y1, s1 = plain.step(x[:, t], s1)
            y2, s2 = split.step(x[:, t], s2)  # caches > 8 keys go through split-KV
            torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y1, plain(x)[:, -1], rtol=1e-5, atol=1e-6)


def test_sliding_window_cache_stays_bounded():
    m = make("sliding_window", window=6)
    state = m.init_state(1)
    x = torch.randn(1, 50, DIM)
    with torch.no_grad():
        outs = []
        for t in range(50):
            y, state = m.step(x[:, t], state)
            outs.append(y)
    assert state.storage.k.shape[2] <= 12, "the cache must keep O(window) keys"
    assert state.kept == 6 and state.nbytes() == 2 * 6 * DIM * 4
    torch.testing.assert_close(torch.stack(outs, 1), m(x), rtol=1e-5, atol=1e-6)


def test_multi_query_has_fewer_parameters():
    mha, mqa = make("softmax"), make("softmax", num_kv_heads=1)
    head_dim = DIM // HEADS
    assert sum(p.numel() for p in mha.parameters()) - sum(p.numel() for p in mqa.parameters()) == \
        2 * (HEADS - 1) * head_dim * DIM


def test_bad_options_name_themselves():
    with pytest.raises(ValueError, match="num_kv_heads"):
        make("softmax", num_kv_heads=3)
    with pytest.raises(ValueError, match="window"):
        make("sliding_window", window=0)
    with pytest.raises(ValueError, match="block_size"):
        make("tiled_softmax", block_size=-1)
    with pytest.raises(ValueError, match="position"):
        make("softmax", position="learned")
