"""ToMe ops: bipartite soft matching and the size-weighted merge against their loop oracle (``ops/tome/naive.py``),
a hand-made example computed by hand, padding, and proportional attention (``key_bias``) in the exact and windowed
attention kernels against the dense oracle, including ToMe's defining property (Bolya et al. 2023, Eq. 1): a
merged token of size 2 weighs as its two identical members."""

from __future__ import annotations

import math

import pytest
import torch

from lightformer.mixers import MIXERS
from lightformer.ops.local import blocked
from lightformer.ops.softmax import naive as softmax_naive
from lightformer.ops.softmax.tiled import tiled_attention
from lightformer.ops.tome import bipartite, naive


def _matching_equal(a, b) -> None:
    assert torch.equal(a.src, b.src) and torch.equal(a.dst, b.dst) and torch.equal(a.keep, b.keep)


@pytest.mark.parametrize("t", [1, 2, 3, 7, 8, 63])
@pytest.mark.parametrize("protect_first", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_matching_and_merge_equal_the_loop_oracle(t, protect_first, padded):
    g = torch.Generator().manual_seed(t + 10 * protect_first + 100 * padded)
    metric = torch.randn(3, t, 6, generator=g, dtype=torch.float64)
    metric[1, t // 2] = metric[1, 0]  # an exact duplicate: a tie both must break the same way
    valid = torch.rand(3, t, generator=g) > 0.35 if padded else None
    x = torch.randn(3, t, 5, generator=g, dtype=torch.float64)
    size = torch.randint(1, 5, (3, t), generator=g).double()
    if valid is not None:
        size = size * valid
    top = bipartite.max_merges(t, protect_first)
    assert top == (0 if t < 2 else (t + 1) // 2 - protect_first)
    rs = range(top + 1) if t < 16 else (0, 1, top // 2, top - 1, top)  # the loop oracle is slow at T = 63
    for r in rs:
        fast = bipartite.bipartite_soft_matching(metric, r, valid=valid, protect_first=protect_first)
        slow = naive.bipartite_soft_matching(metric, r, valid=valid, protect_first=protect_first)
        _matching_equal(fast, slow)
        assert fast.keep.shape == (3, t - r)
        x_fast, s_fast = bipartite.merge_weighted(x, size, fast)
        x_slow, s_slow = naive.merge_weighted(x, size, slow)
        torch.testing.assert_close(x_fast, x_slow, rtol=1e-13, atol=1e-13)
        assert torch.equal(s_fast, s_slow)
        assert torch.equal(s_fast.sum(1), size.sum(1))  # sizes add; nothing is lost or counted twice
        if protect_first and t:
            assert (fast.keep[:, 0] == 0).all()


def test_hand_made_example():
    """Six tokens, A = {0, 2, 4}, B = {1, 3, 5}. Metrics: m0 = m1 = e0 (identical: cosine 1); m2 = e1 (orthogonal
    to every B: best score 0, the tie goes to the lowest B, token 1); m3 = e2, m5 = e3, m4 = e3 + e2/2 (cosine to
    5: 1/sqrt(1.25) = 0.894, to 3: 0.447). Ranked: 0 (1.0), 4 (0.894), 2 (0). With r = 2: 0 -> 1 and 4 -> 5."""
    e = torch.eye(4, dtype=torch.float64)
    metric = torch.stack([e[0], e[0], e[1], e[2], e[3] + 0.5 * e[2], e[3]])[None]
    m = bipartite.bipartite_soft_matching(metric, 2)
    assert m.src.tolist() == [[0, 4]] and m.dst.tolist() == [[1, 5]] and m.keep.tolist() == [[1, 2, 3, 5]]
    _matching_equal(m, naive.bipartite_soft_matching(metric, 2))
    x = torch.tensor([[[3.0], [6.0], [5.0], [7.0], [1.0], [9.0]]], dtype=torch.float64)
    size = torch.tensor([[1.0, 2.0, 1.0, 1.0, 3.0, 1.0]], dtype=torch.float64)
    out, new_size = bipartite.merge_weighted(x, size, m)
    # token 1: (1·3 + 2·6) / 3 = 5, size 3; token 5: (3·1 + 1·9) / 4 = 3, size 4; tokens 2 and 3 unchanged
    assert out[0, :, 0].tolist() == [5.0, 5.0, 7.0, 3.0]
    assert new_size.tolist() == [[3.0, 1.0, 1.0, 4.0]]
    # r = 3 also merges 2 into its best (tied at 0: the lowest B index, token 1): (3·5 + 1·5) / 4 with token 1
    m3 = bipartite.bipartite_soft_matching(metric, 3)
    assert m3.src.tolist() == [[0, 4, 2]] and m3.dst.tolist() == [[1, 5, 1]] and m3.keep.tolist() == [[1, 3, 5]]
    out3, size3 = bipartite.merge_weighted(x, size, m3)
    assert out3[0, :, 0].tolist() == [(3.0 + 12.0 + 5.0) / 4, 7.0, 3.0] and size3.tolist() == [[4.0, 1.0, 4.0]]


def test_identical_tokens_merge_first_and_ties_break_by_index():
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    m = bipartite.bipartite_soft_matching(metric, 3)
    # A = 0, 2, 4: 0 and 2 both match B 1 (tie with 5: lowest index); 4 matches B 3; all score 1 -> index order
    assert m.src.tolist() == [[0, 2, 4]] and m.dst.tolist() == [[1, 1, 3]] and m.keep.tolist() == [[1, 3, 5]]


def test_padding_is_never_merged_into_a_real_token():
    """Tokens 4, 5 are padding with metrics identical to real tokens (cosine 1). The padding A token (4) is removed
    first (size 0: it changes nothing where it lands); no real A token is matched to the padding B token (5)."""
    metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]],
                          dtype=torch.float64)
    valid = torch.tensor([[True, True, True, True, False, False]])
    m = bipartite.bipartite_soft_matching(metric, 2, valid=valid)
    _matching_equal(m, naive.bipartite_soft_matching(metric, 2, valid=valid))
    # 4 (padding) first; then 2 -> 1 (cosine 1); token 0's best real B is 3 (0.6), never 5 (cosine 1, padding)
    assert m.src.tolist() == [[4, 2]] and m.dst.tolist() == [[1, 1]]
    x = torch.tensor([[[1.0], [2.0], [4.0], [8.0], [100.0], [200.0]]], dtype=torch.float64)
    size = valid.double()
    out, new_size = bipartite.merge_weighted(x, size, m)
    assert out[0, :, 0].tolist() == [1.0, 3.0, 8.0, 200.0]  # token 1 = (2 + 4) / 2: the 100 of padding adds 0
    assert new_size.tolist() == [[1.0, 2.0, 1.0, 0.0]]
    m3 = bipartite.bipartite_soft_matching(metric, 3, valid=valid)
    assert m3.src.tolist() == [[4, 2, 0]] and m3.dst.tolist() == [[1, 1, 3]]


def test_merge_gradient_matches_the_oracle():
    g = torch.Generator().manual_seed(3)
    metric = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    m = bipartite.bipartite_soft_matching(metric, 4)
    size = torch.randint(1, 4, (2, 9), generator=g).double()
    x = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    (gf,) = torch.autograd.grad((bipartite.merge_weighted(x, size, m)[0] * w).sum(), x)
    (gs,) = torch.autograd.grad((naive.merge_weighted(x, size, m)[0] * w).sum(), x)
    torch.testing.assert_close(gf, gs, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("t,r,protect,message", [(1, 1, False, "no token of set B"), (7, 5, False, "at most 4"),
                                                 (7, 4, True, "protected first"), (7, -1, False, "int >= 0")])
def test_r_out_of_range_is_refused(t, r, protect, message):
    with pytest.raises(ValueError, match=message):
        bipartite.bipartite_soft_matching(torch.randn(1, t, 2), r, protect_first=protect)
    with pytest.raises(ValueError, match=message):
        naive.bipartite_soft_matching(torch.randn(1, t, 2), r, protect_first=protect)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="metric must be"):
        bipartite.bipartite_soft_matching(torch.randn(4, 2), 1)
    with pytest.raises(ValueError, match="valid must be bool"):
        bipartite.bipartite_soft_matching(torch.randn(1, 4, 2), 1, valid=torch.ones(1, 4))
    m = bipartite.bipartite_soft_matching(torch.randn(1, 4, 2), 1)
    with pytest.raises(ValueError, match="disagree"):
        bipartite.merge_weighted(torch.randn(1, 5, 2), torch.ones(1, 5), m)


# -- proportional attention: softmax(QKᵀ/√d + log s) ------------------------------------------------------------

def _qkv(b, h, t, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for _ in range(3)]


KERNELS = {
    "tiled": lambda q, k, v, **kw: tiled_attention(q, k, v, block_size=4, **kw),
    "blocked_window": lambda q, k, v, **kw: blocked.sliding_window_attention(q, k, v, window=5, causal=False,
                                                                            block_size=4, **kw),
}
ORACLES = {
    "tiled": lambda q, k, v, key_bias=None, **kw: softmax_naive.attention(
        q, k, v, bias=None if key_bias is None else key_bias[:, None, None, :], **kw),
    "blocked_window": lambda q, k, v, key_bias=None, **kw: softmax_naive.attention(
        q, k, v, window=(2, 2), bias=None if key_bias is None else key_bias[:, None, None, :], **kw),
}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("t", [1, 7, 13])
@pytest.mark.parametrize("padded", [False, True])
def test_key_bias_kernels_equal_the_dense_oracle(kernel, t, padded):
    q, k, v = _qkv(2, 2, t, 4, seed=t)
    g = torch.Generator().manual_seed(100 + t)
    key_bias = torch.rand(2, t, generator=g, dtype=torch.float64).mul(3).add(1).log()  # log sizes in [1, 4)
    mask = None
    if padded:
        mask = torch.rand(2, t, generator=g) > 0.3
        mask[:, 0] = True
    dout = torch.randn(2, 2, t, 4, generator=g, dtype=torch.float64)
    if mask is not None:
        dout = dout * mask[:, None, :, None]
    outs = []
    for fn in (KERNELS[kernel], ORACLES[kernel]):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves, key_padding_mask=mask, key_bias=key_bias)
        outs.append([out * (1 if mask is None else mask[:, None, :, None])]
                    + list(torch.autograd.grad(out, leaves, dout)))
    for fast, slow in zip(*outs):
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


def test_key_bias_must_be_constant_and_shaped():
    q, k, v = _qkv(1, 1, 5, 4, 0)
    for fn in KERNELS.values():
        with pytest.raises(ValueError, match="key_bias"):
            fn(q, k, v, key_bias=torch.zeros(1, 4, dtype=torch.float64))
        with pytest.raises(ValueError, match="no gradient"):
            fn(q, k, v, key_bias=torch.zeros(1, 5, dtype=torch.float64, requires_grad=True))


MIXER_OPTIONS = {"softmax": {}, "tiled_softmax": {"block_size": 4}, "sliding_window": {"window": 5, "block_size": 4}}


def _mixer(name, **options):
    torch.manual_seed(0)
    return MIXERS.create(name, dim=8, num_heads=2, causal=False, **{**MIXER_OPTIONS[name], **options}).double()


@pytest.mark.parametrize("name", sorted(MIXER_OPTIONS))
def test_sizes_one_equal_plain_attention(name):
    mixer = _mixer(name)
    q, k, v = _qkv(2, 2, 11, 4, seed=5)
    plain = mixer.attend(q, k, v, None)
    ones = mixer.attend(q, k, v, None, key_bias=torch.zeros(2, 11, dtype=torch.float64))  # log 1 = 0
    torch.testing.assert_close(ones, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixer.attend_oracle(q, k, v, None, key_bias=torch.zeros(2, 11, dtype=torch.float64)),
                               plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MIXER_OPTIONS))
def test_a_merged_token_of_size_two_weighs_as_its_two_identical_members(name):
    """ToMe's defining property (Bolya et al. 2023, Sec. 3, Eq. 1): keys/values [k0, k1, k1, k2, k3] attended
    plainly equal [k0, k1, k2, k3] with sizes [1, 2, 1, 1] attended proportionally, for every query. The window
    (sliding_window) is wide enough to see every key, so only the bias differs."""
    mixer = _mixer(name, **({"window": 64} if name == "sliding_window" else {}))
    q, k4, v4 = _qkv(1, 2, 4, 4, seed=7)
    k5, v5 = (torch.cat([x[:, :, :2], x[:, :, 1:]], dim=2) for x in (k4, v4))  # token 1 twice
    q5 = torch.cat([q[:, :, :2], q[:, :, 1:]], dim=2)
    unmerged = mixer.attend(q5, k5, v5, None)[:, :, [0, 1, 3, 4]]
    merged = mixer.attend(q, k4, v4, None, key_bias=torch.tensor([[1.0, 2.0, 1.0, 1.0]], dtype=torch.float64).log())
    torch.testing.assert_close(merged, unmerged, rtol=1e-12, atol=1e-12)
    # and the same with the oracle, by hand for query 0: weights ∝ [e^{s0}, 2·e^{s1}, e^{s2}, e^{s3}]
    scores = (q[0, :, 0:1] @ k4[0].transpose(-1, -2))[:, 0] / math.sqrt(4)  # [H, 4]
    w = scores.exp() * torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    by_hand = (w / w.sum(-1, keepdim=True))[..., None].mul(v4[0]).sum(1)  # [H, d]
    torch.testing.assert_close(merged[0, :, 0], by_hand, rtol=1e-12, atol=1e-12)
