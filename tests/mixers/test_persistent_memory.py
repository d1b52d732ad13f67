"""``persistent_memory`` beyond the registry-wide contract: fast path against its oracle (outputs, gradients of the
input and of every parameter, float64) at T in {1, 7, 63, 257}; the mixer against an independent reading of the
all-attention equation (RoPE on the sequence keys only); decoding, split-KV and prefill against the forward; the
state counts the KV cache only; the memory is always visible, never decayed, initialised as in the paper;
``num_memory=0`` is refused; the FLOP count."""

from __future__ import annotations

import fnmatch
import math

import pytest
import torch
from einops import rearrange

import lightformer
from lightformer.nn.positions import Rotary

DIM, HEADS, N = 32, 4, 6


def make(causal=True, seed=0, **options):
    torch.manual_seed(seed)
    options = {"num_memory": N, "num_heads": HEADS, **options}
    return lightformer.create_mixer("persistent_memory", dim=DIM, causal=causal, **options).eval()


def inputs(b, t, seed=1, dtype=torch.float64):
    return torch.randn(b, t, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def right_padded(b, t):
    mask = torch.ones(b, t, dtype=torch.bool)
    if b > 1:
        mask[1, max(1, t - t // 3):] = False
    return mask


def reference(m, x, mask=None):
    """The layer read off the paper's equation, independently of ``ops/``: per head, softmax over the scaled
    memory keys and the (RoPE-rotated) sequence keys, one row at a time. Multi-head only (no grouped heads)."""
    cfg = m.config
    b, t, _ = x.shape
    d, n = cfg.head_dim, cfg.num_memory
    q, k, v = rearrange(m.qkv(x), "b t (three h d) -> three b h t d", three=3, h=cfg.num_heads)
    if cfg.position == "rope":
        rot, pos = Rotary(d, cfg.rope_base).double(), torch.arange(t)
        q, k = rot(q, pos), rot(k, pos)  # the memory is not rotated
    mem_k, mem_v = m.memory_keys * math.sqrt(d), m.memory_values * math.sqrt(n)  # the paper's scaling
    out = torch.zeros_like(q)
    for i in range(t):
        visible = torch.ones(b, t, dtype=torch.bool) if mask is None else mask.clone()
        if cfg.causal:
            visible[:, i + 1:] = False
        for h in range(cfg.num_heads):
            scores = torch.cat([q[:, h, i] @ mem_k[h].T, torch.einsum("bd,btd->bt", q[:, h, i], k[:, h])], dim=1)
            scores = scores / math.sqrt(d)
            scores[:, n:] = scores[:, n:].masked_fill(~visible, float("-inf"))
            w = scores.softmax(-1)
            out[:, h, i] = w[:, :n] @ mem_v[h] + torch.einsum("bt,btd->bd", w[:, n:], v[:, h])
    return m.out(rearrange(out, "b h t d -> b t (h d)"))


@pytest.mark.parametrize("t", [1, 7, 63, 257])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_fast_path_equals_oracle_in_float64(t, causal, padded):
    m = make(causal, position="rope").double()
    x = inputs(2, t).requires_grad_(True)
    mask = right_padded(2, t) if padded else None
    y = m(x, key_padding_mask=mask)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = m.oracle(x_ref, key_padding_mask=mask)
    real = torch.ones(2, t, dtype=torch.bool) if mask is None else mask  # padded rows: unspecified outputs
    torch.testing.assert_close(y[real], y_ref[real], rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y) * real[..., None]
    params = dict(m.named_parameters())
    assert {"memory_keys", "memory_values", "qkv.weight", "out.weight"} <= set(params)
    grads = torch.autograd.grad(y, [x, *params.values()], g)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *params.values()], g)
    for name, a, b in zip(["x", *params], grads, grads_ref):
        assert b.abs().sum() > 0, f"{name}: the oracle gives no gradient"
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("num_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_heads_fast_path_equals_oracle(num_kv_heads, causal):
    m = make(causal, num_kv_heads=num_kv_heads).double()
    assert m.memory_keys.shape == (num_kv_heads or HEADS, N, DIM // HEADS)
    x, mask = inputs(2, 29), right_padded(2, 29)
    for kpm in (None, mask):
        real = torch.ones(2, 29, dtype=torch.bool) if kpm is None else kpm
        torch.testing.assert_close(m(x, key_padding_mask=kpm)[real], m.oracle(x, key_padding_mask=kpm)[real],
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("position", ["none", "rope"])
@pytest.mark.parametrize("causal", [False, True])
def test_the_mixer_is_the_papers_equation(position, causal):
    m = make(causal, position=position).double()
    x, mask = inputs(2, 19), right_padded(2, 19)
    torch.testing.assert_close(m(x), reference(m, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(x, key_padding_mask=mask)[mask], reference(m, x, mask)[mask], rtol=1e-10,
                               atol=1e-10)


def test_the_memory_is_visible_from_every_position():
    m = make(True).double()
    x = inputs(1, 5)
    y = m(x)
    with torch.no_grad():
        m.memory_values[:, 0] += 1.0  # one slot changes: every output, the first token's included, moves
    moved = (m(x) - y).abs().amax(-1)[0]
    assert (moved > 1e-6).all(), moved
    # a fully padded row still attends to the memory: finite, and the memory is all it sees
    pad = torch.zeros(1, 5, dtype=torch.bool)
    out = m(x, key_padding_mask=pad)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, m.oracle(x, key_padding_mask=pad), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("num_memory", [0, -3])
def test_num_memory_zero_is_refused(num_memory):
    with pytest.raises(ValueError, match="num_memory"):
        make(num_memory=num_memory)


def test_alibi_is_refused():
    with pytest.raises(ValueError, match="position='alibi'"):
        make(position="alibi")


@pytest.mark.parametrize("position", ["none", "rope"])
@pytest.mark.parametrize("num_kv_heads", [None, 2])
@pytest.mark.parametrize("split_kv_size", [2048, 5])
def test_decode_and_prefill_equal_forward(position, num_kv_heads, split_kv_size):
    m = make(True, position=position, num_kv_heads=num_kv_heads, split_kv_size=split_kv_size).double()
    x = inputs(2, 21)
    with torch.no_grad():
        full = m(x)
        state, steps = m.init_state(2, dtype=torch.float64), []
        for i in range(21):
            y, state = m.step(x[:, i], state)
            steps.append(y)
        torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-10, atol=1e-10)
        head, state = m(x[:, :8], return_state=True)
        tail, _ = m(x[:, 8:], state=state, return_state=True)  # queries after a cached prefix: the masked path
        torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-10, atol=1e-10)


def test_state_counts_the_cache_only():
    m = make(True, num_kv_heads=2).double()
    with torch.no_grad():
        _, state = m(inputs(3, 11), return_state=True)
    d = DIM // HEADS
    assert state.nbytes() == 2 * 3 * 2 * 11 * d * 8  # K and V x B x H_kv x T x d x float64
    assert m.init_state(3, dtype=torch.float64).nbytes() == 0
    assert m.memory_keys.numel() == 2 * N * d  # a parameter, not counted above


def test_memory_is_not_decayed_and_keeps_the_papers_init():
    m = make(False, num_memory=512, num_heads=2)  # d_h = 16
    names = [n for n, _ in m.named_parameters() if any(fnmatch.fnmatchcase(n, p) for p in m.no_weight_decay)]
    assert sorted(names) == ["memory_keys", "memory_values"]
    # stored: keys N(0, 1/d_h), values N(0, 1/N); as used: unit variance
    assert m.memory_keys.std().item() == pytest.approx(1 / math.sqrt(16), rel=0.1)
    assert m.memory_values.std().item() == pytest.approx(1 / math.sqrt(512), rel=0.1)
    keys, values = m.memory()
    assert keys.std().item() == pytest.approx(1.0, rel=0.1) and values.std().item() == pytest.approx(1.0, rel=0.1)
    # init_weights (run by the model after its generic init) redraws them with the paper's init
    with torch.no_grad():
        m.memory_keys.fill_(3.0)
    m.init_weights(num_layers=4)
    assert m.memory_keys.std().item() == pytest.approx(1 / math.sqrt(16), rel=0.1)


def test_default_num_memory():
    m = lightformer.create_mixer("persistent_memory", dim=64, num_heads=4)
    assert m.config.num_memory == 256 and m.memory_values.shape == (4, 256, 16)


@pytest.mark.parametrize("causal", [False, True])
def test_flops(causal):
    m = make(causal, num_kv_heads=2)
    t, d = 100, DIM // HEADS
    proj = 2 * t * DIM * (HEADS + 2 * 2) * d + 2 * t * DIM * DIM
    keys = N + ((t + 1) / 2 if causal else t)
    assert m.flops(t, batch=3) == 3 * (proj + 4 * t * HEADS * d * keys)
