"""Low-rank attention ops (``ops/lowrank``): fast paths vs their naive oracles, and the error budgets vs exact softmax.

Tolerance for fast-vs-oracle at a dtype: the fast path's error against the float64 oracle is at most 2x the error of
the naive oracle run at the same dtype, plus a tiny floor (``FLOOR`` times the reference's largest magnitude, so that
gradients summed over many tokens, e.g. of a convolution kernel, get the same relative floor as outputs).
"""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.lowrank import linformer, naive, nystrom
from lightformer.ops.softmax import naive as softmax_naive
from oracle_check import assert_fast_matches_naive, right_padded_mask

LENGTHS = (1, 7, 63, 257)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("share_heads", [True, False])
def test_linformer_fast_equals_naive(dtype, t, share_heads):
    g = torch.Generator().manual_seed(t)
    b, h, hkv, d, k, max_len = 2, 4, 2, 16, 8, 300
    q, kk, v = (torch.randn(b, n, t, d, generator=g) for n in (h, hkv, hkv))
    e, f = (torch.randn(1 if share_heads else hkv, k, max_len, generator=g) / max_len ** 0.5 for _ in range(2))
    mask = right_padded_mask(b, t)
    assert_fast_matches_naive(lambda *a: linformer.linformer_attention(*a, key_padding_mask=mask),
           lambda *a: naive.linformer_attention(*a, key_padding_mask=mask), [q, kk, v, e, f], dtype)


def test_linformer_identity_projection_is_exact_softmax():
    """Error budget: with proj_len = T and E = F = I, Eq. 7 of Wang et al. 2020 ("Linformer") *is* Eq. 1 (exact
    softmax attention): E K = K, F V = V. Budget: float64 round-off, 1e-12."""
    g = torch.Generator().manual_seed(0)
    b, h, t, d = 2, 3, 40, 8
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for _ in range(3))
    eye = torch.eye(t, dtype=torch.float64)[None]
    exact = softmax_naive.attention(q, k, v)
    for fn in (linformer.linformer_attention, naive.linformer_attention):
        assert (fn(q, k, v, eye, eye) - exact).abs().max().item() < 1e-12


def test_linformer_padded_equals_unpadded():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=g) for _ in range(3))
    e, f = (torch.randn(1, 6, 32, generator=g) for _ in range(2))
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, :13] = True
    garbage = lambda x: torch.where(mask[:, None, :, None], x, 50 * torch.randn_like(x))  # noqa: E731
    padded = linformer.linformer_attention(q, garbage(k), garbage(v), e, f, key_padding_mask=mask)
    alone = linformer.linformer_attention(q[:, :, :13], k[:, :, :13], v[:, :, :13], e, f)
    torch.testing.assert_close(padded[:, :, :13], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", LENGTHS)
def test_nystrom_fast_equals_naive(dtype, t):
    g = torch.Generator().manual_seed(t)
    b, h, hkv, d, m = 2, 4, 2, 16, 8  # m < T except for T = 1, 7 (empty landmarks then)
    q, k, v = (torch.randn(b, n, t, d, generator=g) for n in (h, hkv, hkv))
    w = torch.randn(h, 3, generator=g) / 3
    mask = right_padded_mask(b, t)
    opts = dict(num_landmarks=m, pinv_iterations=6, key_padding_mask=mask)
    assert_fast_matches_naive(lambda *a: nystrom.nystrom_attention(*a[:3], conv_weight=a[3], **opts),
           lambda *a: naive.nystrom_attention(*a[:3], conv_weight=a[3], **opts), [q, k, v, w], dtype)


def test_nystrom_segments_match_oracle():
    """The vectorised averaging matrix forms the same balanced segments as the oracle's token loop, for T not a
    multiple of m, with padding, and with fewer real tokens than landmarks."""
    g = torch.Generator().manual_seed(0)
    for t, m in ((33, 8), (10, 4), (5, 8), (64, 64)):
        mask = torch.rand(3, t, generator=g) > 0.3
        mask[:, 0] = True
        ids = naive.segment_ids(mask, 3, t, m, torch.device("cpu"))
        avg, valid = nystrom.averaging_matrix(mask, 3, t, m, torch.device("cpu"), torch.float64)
        expected = torch.nn.functional.one_hot(ids, m + 1)[..., :m].double().transpose(1, 2)
        expected = expected / expected.sum(-1, keepdim=True).clamp_min(1)
        torch.testing.assert_close(avg, expected, rtol=0, atol=1e-15)
        assert torch.equal(valid, expected.sum(-1) > 0)
        n = mask.sum(1)
        assert torch.equal(valid.sum(1), torch.minimum(n, torch.tensor(m)))  # every real token used, no truncation


def test_iterative_pinv_converges_to_exact():
    """Eq. 16 (Razavi et al. 2014, as used by Xiong et al. 2021) converges to torch.linalg.pinv on softmax matrices
    A_S: the error shrinks with the iterations and reaches float64 round-off."""
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(4, 16, 16, generator=g, dtype=torch.float64) * 2, dim=-1)
    exact = torch.linalg.pinv(a)
    errors = [(naive.iterative_pinv(a, i) - exact).abs().max().item() for i in (2, 4, 6, 10, 30)]
    assert all(later <= earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-10, errors


def test_nystrom_all_landmarks_is_exact_softmax():
    """Error budget: with num_landmarks = T every landmark is one token, Q̃ = Q, K̃ = K, and Eq. 14 becomes
    S S⁺ S V = S V, exact softmax attention (Xiong et al. 2021, Sec. 3: the Nyström approximation is exact when all
    columns are sampled). With the iterative pinv (30 steps) the remaining error is the iteration's, < 1e-6 here;
    with the exact pinv it is round-off."""
    g = torch.Generator().manual_seed(1)
    b, h, t, d = 2, 2, 24, 8
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))
    exact = softmax_naive.attention(q, k, v)
    err_exact = (naive.nystrom_attention(q, k, v, num_landmarks=t, pinv_iterations=None) - exact).abs().max()
    err_iter = (nystrom.nystrom_attention(q, k, v, num_landmarks=t, pinv_iterations=30) - exact).abs().max()
    assert err_exact < 1e-9, err_exact
    assert err_iter < 1e-6, err_iter
