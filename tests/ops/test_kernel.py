"""ops/kernel: the chunked fast path against the naive oracles (outputs and gradients, float32 and bf16, odd
lengths, chunks smaller than T, padding), the decoding step, the O(T·d) memory promise, and
FAVOR+'s error budget against exact softmax attention."""

from __future__ import annotations

import math

import pytest
import torch

from lightformer.ops.kernel import chunked, features, naive, recurrent
from lightformer.ops.softmax import naive as softmax_naive

D = 8
W16 = features.orthogonal_gaussian(16, D, torch.Generator().manual_seed(3))  # [16, D]
SHIFT = features.favor_key_shift(W16)

FEATURE_MAPS = {
    "elu": lambda x, is_query: features.elu_plus_one(x),
    "relu": lambda x, is_query: features.relu(x),
    "favor": lambda x, is_query: features.favor_plus(x, W16.to(x.dtype), is_query=is_query, key_shift=SHIFT,
                                                     scale=D ** -0.25),
    # the same map with its analytic input gradient (chunked's backward then skips autograd through it)
    "favor_analytic": features.FavorPlus(W16, key_shift=SHIFT, scale=D ** -0.25),
}


def qkv_mask(t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, t, D, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[1, max(1, t - t // 3):] = False  # right-padded second sequence
    return q, k, v, mask


def run(fn, q, k, v, g):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    y = fn(q, k, v)
    return [y.detach().double(), *[d.double() for d in torch.autograd.grad(y, (q, k, v), g.to(y.dtype))]]


def err(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("name", sorted(FEATURE_MAPS))
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype,floor", [(torch.float32, 1e-6), (torch.bfloat16, 1e-3)], ids=["fp32", "bf16"])
def test_chunked_matches_oracle(name, causal, dtype, floor):
    """error(fast at dtype vs float64 oracle) <= 2 x error(oracle at dtype vs float64 oracle) + floor, on outputs
    and the gradients of q, k, v; chunk sizes below T so that several chunks (and a ragged last one) are used."""
    fmap = FEATURE_MAPS[name]
    for t, cs in ((1, 4), (7, 3), (63, 16), (257, 32)):
        q, k, v, mask = qkv_mask(t)
        g = torch.randn(2, 3, t, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

        def oracle(q, k, v):
            return naive.kernel_attention(fmap(q, True), fmap(k, False), v, causal=causal, eps=1e-6,
                                          key_padding_mask=mask)

        def fast(q, k, v):
            return chunked.kernel_attention(q, k, v, fmap, causal=causal, eps=1e-6, chunk_size=cs,
                                            key_padding_mask=mask)[0]

        ref = run(oracle, q, k, v, g)
        lowp = [x.to(dtype) for x in (q, k, v)]
        e_fast, e_naive = err(run(fast, *lowp, g), ref), err(run(oracle, *lowp, g), ref)
        assert e_fast <= 2 * e_naive + floor, f"T={t}: fast {e_fast:.3g} vs naive {e_naive:.3g}"
        # and in float64 the two agree to rounding
        assert err(run(fast, q, k, v, g), ref) < 1e-10


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_several_groups_match_oracle(monkeypatch, causal):
    """Chunks are processed in groups bounded by GROUP_ELEMENTS; shrink it so that T = 63 with 4-token chunks
    spans many groups of 2 chunks (state carried across groups, ragged padded tail), float64, with gradients."""
    monkeypatch.setattr(chunked, "GROUP_ELEMENTS", 2 * 3 * 4 * 16 * 2)
    assert chunked.group_size(2, 3, 16, 4, 64) == 8
    for name, fmap in FEATURE_MAPS.items():
        q, k, v, mask = qkv_mask(63)
        g = torch.randn(2, 3, 63, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ref = run(lambda q, k, v: naive.kernel_attention(fmap(q, True), fmap(k, False), v, causal=causal, eps=1e-6,
                                                         key_padding_mask=mask), q, k, v, g)
        fast = run(lambda q, k, v: chunked.kernel_attention(q, k, v, fmap, causal=causal, eps=1e-6, chunk_size=4,
                                                            key_padding_mask=mask)[0], q, k, v, g)
        assert err(fast, ref) < 1e-10, name


@pytest.mark.parametrize("name", sorted(FEATURE_MAPS))
def test_causal_oracles_agree(name):
    """The recurrence of Sec. 3.4 (Eq. 16-20) equals the masked quadratic form; the plain sums of Eq. 5 equal the
    unmasked one (float64)."""
    fmap = FEATURE_MAPS[name]
    q, k, v, mask = qkv_mask(33)
    pq, pk = fmap(q, True), fmap(k, False)
    rec, _ = naive.recurrent_kernel_attention(pq, pk, v, eps=1e-6, key_padding_mask=mask)
    quad = naive.kernel_attention(pq, pk, v, causal=True, eps=1e-6, key_padding_mask=mask)
    torch.testing.assert_close(rec, quad, rtol=1e-12, atol=1e-12)
    sums = naive.noncausal_kernel_attention(pq, pk, v, eps=1e-6, key_padding_mask=mask)
    torch.testing.assert_close(sums, naive.kernel_attention(pq, pk, v, causal=False, eps=1e-6,
                                                            key_padding_mask=mask), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FEATURE_MAPS))
def test_recurrent_step_equals_causal(name):
    fmap = FEATURE_MAPS[name]
    q, k, v, _ = qkv_mask(19)
    full = chunked.kernel_attention(q, k, v, fmap, causal=True, eps=1e-6, chunk_size=5)[0]
    m = fmap(q[:, :, :1], True).shape[-1]
    s, z = torch.zeros(2, 3, m, D, dtype=torch.float64), torch.zeros(2, 3, m, dtype=torch.float64)
    outs = []
    for i in range(19):
        o, s, z = recurrent.kernel_step(fmap(q[:, :, i], True), fmap(k[:, :, i], False), v[:, :, i], s, z,
                                        eps=1e-6)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 2), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("is_query", [True, False], ids=["query", "key"])
def test_favor_analytic_gradient_equals_autograd(is_query):
    """FavorPlus.grad (dz = dφ ⊙ φ, dx = dz·W' − scale²·Σdz·x for keys; softmax backward then ·W' for queries) equals
    autograd through favor_plus, float64."""
    fmap = features.FavorPlus(W16.double(), key_shift=SHIFT, scale=D ** -0.25)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 11, D, generator=g, dtype=torch.float64, requires_grad=True)
    dphi = torch.randn(2, 3, 11, 16, generator=g, dtype=torch.float64)
    phi = fmap(x, is_query)
    (want,) = torch.autograd.grad(phi, x, dphi)
    got = fmap.grad(x.detach(), phi.detach(), dphi.clone(), is_query)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_relu_all_zero_rows_are_finite():
    """ReLU features may vanish for a whole row: eps keeps the output (0) and its gradients finite."""
    q, k, v, _ = qkv_mask(16)
    q = -q.abs().requires_grad_(True)  # every query feature is 0
    for causal in (False, True):
        y = chunked.kernel_attention(q, k, v, FEATURE_MAPS["relu"], causal=causal, eps=1e-6, chunk_size=4)[0]
        (gq,) = torch.autograd.grad(y.sum(), q)
        assert torch.isfinite(y).all() and torch.isfinite(gq).all()
        assert y.abs().max().item() == 0.0


def test_fully_padded_sequence_is_finite():
    q, k, v, _ = qkv_mask(9)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    for name, fmap in FEATURE_MAPS.items():
        y = chunked.kernel_attention(q, k, v, fmap, causal=False, eps=1e-6, chunk_size=4, key_padding_mask=mask)[0]
        assert torch.isfinite(y).all() and y.abs().max().item() == 0.0, name


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_backward_memory_is_linear_in_length(causal):
    """What autograd keeps for the backward pass is O(T·d): q, k, V̄ (no [T, m] features, no [T, T] scores).
    Counted with saved-tensor hooks at T = 2048, m = 256 features: a stored feature tensor alone would be
    B·H·T·m = 1M elements."""
    w = features.orthogonal_gaussian(256, D, torch.Generator().manual_seed(0))

    def fmap(x, is_query):
        return features.favor_plus(x, w, is_query=is_query, scale=D ** -0.25)

    t, h = 2048, 2
    q, k, v = (torch.randn(1, h, t, D, requires_grad=True) for _ in range(3))
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        y = chunked.kernel_attention(q, k, v, fmap, causal=causal, eps=1e-6, chunk_size=64)[0]
    # q, k, V̄ = (d + 1) columns, N, and the division's operands: a few [T, d + 1] tensors
    assert sum(saved) <= 8 * h * t * (D + 1), f"saved {sum(saved)} elements"
    y.sum().backward()
    assert torch.isfinite(q.grad).all()


def favor_error(m: int, t: int, d: int, radius: float, seed: int = 0) -> tuple[float, float]:
    """Relative L2 error of FAVOR+ (m orthogonal positive features) against exact softmax attention, and the
    Lemma-2 relative standard deviation of a single kernel value at the largest |x + y|² on these inputs."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 1, t, d, generator=g, dtype=torch.float64) for _ in range(2))
    # low-norm inputs: rescale so that |x'| = |q|·d^(-1/4) = radius for every query and key
    q, k = (x / x.norm(dim=-1, keepdim=True) * radius * d ** 0.25 for x in (q, k))
    v = torch.randn(1, 1, t, d, generator=g, dtype=torch.float64)
    w = features.orthogonal_gaussian(m, d, torch.Generator().manual_seed(seed + 1)).double()

    def fmap(x, is_query):
        return features.favor_plus(x, w, is_query=is_query, scale=d ** -0.25)

    approx = chunked.kernel_attention(q, k, v, fmap, causal=False, eps=1e-12, chunk_size=64)[0]
    exact = softmax_naive.attention(q, k, v)
    rel = ((approx - exact).norm() / exact.norm()).item()
    sigma = math.sqrt((math.exp((2 * radius) ** 2) - 1.0) / m)
    return rel, sigma


def test_favor_plus_error_budget_against_softmax():
    """Error budget from Choromanski et al. 2021, Lemma 2: the positive estimator of SM(x, y) = exp(xᵀy) has
    MSE = (1/m)·exp(|x+y|²)·SM²(x, y)·(1 − exp(−|x+y|²)), i.e. relative std sqrt((exp(|x+y|²) − 1)/m), and
    orthogonal features do no worse (Theorem 2). It is small for low-norm inputs, the regime where the paper says
    positive features work well (Sec. 2.3, Fig. 1 right). With |x'|, |y'| = 0.5 (|x+y|² <= 1) and m = 1024 the
    per-kernel bound is sqrt((e − 1)/1024) = 4.1%; the attention output, an average over T = 128 keys with
    normalised weights, must stay within that bound (measured 0.7%; 4.1% at m = 64 against a 16% bound), and the
    error must fall like 1/sqrt(m)
    (Lemma 2): 16x the features, at least 2.5x less error (theory 4x, measured 5.8x)."""
    rel_1024, sigma_1024 = favor_error(1024, 128, 16, 0.5)
    rel_64, sigma_64 = favor_error(64, 128, 16, 0.5)
    assert abs(sigma_1024 - math.sqrt((math.e - 1) / 1024)) < 1e-12
    assert rel_1024 < sigma_1024, f"relative error {rel_1024:.3g} above the Lemma-2 budget {sigma_1024:.3g}"
    assert rel_64 < sigma_64, f"relative error {rel_64:.3g} above the Lemma-2 budget {sigma_64:.3g}"
    assert rel_1024 < rel_64 / 2.5, f"m=1024: {rel_1024:.3g}, m=64: {rel_64:.3g}"


def test_orthogonal_features():
    """Rows within a block of d are orthogonal; row norms are chi_d (mean ≈ sqrt(d − 1/2), std ≈ 0.7 for d = 16)."""
    d, m = 16, 512
    w = features.orthogonal_gaussian(m, d, torch.Generator().manual_seed(0)).double()
    block = w[:d] / w[:d].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-6)
    assert abs(w.norm(dim=1).mean().item() - math.sqrt(d - 0.5)) < 0.1  # standard error ≈ 0.03
    again = features.orthogonal_gaussian(m, d, torch.Generator().manual_seed(0)).double()
    assert torch.equal(w, again)


def test_bad_arguments():
    q, k, v, _ = qkv_mask(4)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.kernel_attention(q, k, v, FEATURE_MAPS["elu"], causal=True, eps=1e-6, chunk_size=0)[0]
    with pytest.raises(ValueError, match="eps"):
        chunked.kernel_attention(q, k, v, FEATURE_MAPS["elu"], causal=True, eps=0.0, chunk_size=4)[0]


@pytest.mark.parametrize("name", ["elu", "favor_analytic"])
@pytest.mark.parametrize("t,chunk", [(1, 4), (7, 4), (63, 8), (257, 16)])
def test_chunked_state_handoff_matches_recurrence(name, t, chunk):
    """From an initial state to the final state: outputs, final (S, z) and the gradients of every input
    (q, k, v, S_0, z_0) under cotangents on both the output and the final state equal the recurrence's, in float64,
    at lengths that are not multiples of the chunk."""
    fmap = FEATURE_MAPS[name]
    q, k, v, mask = qkv_mask(t, seed=t)
    m = fmap(q[:, :, :1], True).shape[-1]
    g = torch.Generator().manual_seed(5)
    s0 = torch.randn(2, 3, m, D, generator=g, dtype=torch.float64)
    z0 = torch.rand(2, 3, m, generator=g, dtype=torch.float64) + 0.5  # a sum of positive features
    do = torch.randn(2, 3, t, D, generator=g, dtype=torch.float64)
    ds, dz = torch.randn(2, 3, m, D, generator=g, dtype=torch.float64), torch.randn(2, 3, m, generator=g,
                                                                                    dtype=torch.float64)

    def grads(fn):
        inputs = [x.detach().clone().requires_grad_(True) for x in (q, k, v, s0, z0)]
        o, (s, z) = fn(*inputs)
        loss = (o * do).sum() + (s * ds).sum() + (z * dz).sum()
        return [o.detach(), s.detach(), z.detach(), *torch.autograd.grad(loss, inputs)]

    ref = grads(lambda q, k, v, s0, z0: naive.recurrent_kernel_attention(
        fmap(q, True), fmap(k, False), v, eps=1e-6, key_padding_mask=mask, initial_state=(s0, z0)))
    fast = grads(lambda q, k, v, s0, z0: chunked.kernel_attention(
        q, k, v, fmap, causal=True, eps=1e-6, chunk_size=chunk, key_padding_mask=mask, initial_state=(s0, z0),
        output_final_state=True))
    for what, a, b in zip(("o", "S_T", "z_T", "dq", "dk", "dv", "dS_0", "dz_0"), fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=what)


def test_chunked_split_at_any_point_equals_one_call():
    """Prefill in two calls (state handed over at a point inside a chunk) equals one call, on outputs and state."""
    fmap = FEATURE_MAPS["elu"]
    q, k, v, _ = qkv_mask(40, seed=3)
    whole, state = chunked.kernel_attention(q, k, v, fmap, causal=True, eps=1e-6, chunk_size=8,
                                            output_final_state=True)
    for cut in (1, 13, 16, 39):
        a, mid = chunked.kernel_attention(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], fmap, causal=True, eps=1e-6,
                                          chunk_size=8, output_final_state=True)
        b, end = chunked.kernel_attention(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], fmap, causal=True, eps=1e-6,
                                          chunk_size=8, initial_state=mid, output_final_state=True)
        torch.testing.assert_close(torch.cat([a, b], dim=2), whole, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(end, state, rtol=1e-12, atol=1e-12)


def test_chunked_state_errors():
    q, k, v, _ = qkv_mask(8)
    fmap = FEATURE_MAPS["elu"]
    with pytest.raises(ValueError, match="only causal"):
        chunked.kernel_attention(q, k, v, fmap, causal=False, eps=1e-6, chunk_size=4, output_final_state=True)
    with pytest.raises(ValueError, match="initial_state must be"):
        chunked.kernel_attention(q, k, v, fmap, causal=True, eps=1e-6, chunk_size=4,
                                 initial_state=(torch.zeros(2, 3, D + 1, D, dtype=q.dtype),
                                                torch.zeros(2, 3, D + 1, dtype=q.dtype)))
