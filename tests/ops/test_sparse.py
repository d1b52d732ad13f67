"""ops/sparse: every fast path against its dense-mask oracle (outputs and gradients, float64 exactly; float32 and
bfloat16 within 2x the oracle's own rounding error), both memory paths of the blocked kernel (one pass, and
checkpointed chunks), padding, and the patterns' limits where they equal exact softmax."""

from __future__ import annotations

import pytest
import torch

from lightformer.ops.softmax import naive as softmax_naive
from lightformer.ops.sparse import bigbird_local, blocked, longformer, naive
from lightformer.ops.sparse.bigbird import bigbird_attention, block_valid, random_blocks
from lightformer.ops.sparse.dilated import dilated_window_attention
from lightformer.ops.sparse.hilo import hilo_attention
from lightformer.ops.sparse.longformer import global_rows_attention, longformer_attention

H, D = 4, 8
LENGTHS = (1, 7, 63, 257)
FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3}  # RMS; values are O(1): at most a few ulps of each dtype


def _bigbird(fast: bool):
    def run(q, k, v, *, causal, key_padding_mask=None, **kw):
        bs, g, r = kw.pop("block_size"), kw.pop("num_global"), kw.pop("num_random")
        nb = -(-q.shape[2] // bs)
        valid = None if key_padding_mask is None else block_valid(key_padding_mask, bs)
        table = random_blocks(7, nb, num_global=g, num_random=r, causal=causal, block_valid=valid)
        op = bigbird_attention if fast else naive.bigbird_attention
        return op(q, k, v, block_size=bs, num_global=g, random_blocks=table, causal=causal,
                  key_padding_mask=key_padding_mask)
    return run


def _drop(op, *names):
    """The oracle has no ``block_size`` (a fast-path tuning knob): drop it."""
    def run(q, k, v, **kw):
        return op(q, k, v, **{n: val for n, val in kw.items() if n not in names})
    return run


# name -> (fast, oracle, options with blocks smaller than T)
PATTERNS = {
    "longformer": (longformer_attention, _drop(naive.longformer_attention, "block_size"),
                   dict(window=9, num_global=3, block_size=4)),
    "longformer_noglobal": (longformer_attention, _drop(naive.longformer_attention, "block_size"),
                            dict(window=6, num_global=0, block_size=5)),
    "bigbird": (_bigbird(True), _bigbird(False), dict(block_size=4, num_global=1, num_random=2)),
    "bigbird_odd": (_bigbird(True), _bigbird(False), dict(block_size=5, num_global=2, num_random=3)),
    "dilated_window": (dilated_window_attention, _drop(naive.dilated_window_attention, "block_size"),
                       dict(window=5, dilation=3, block_size=4)),
    "hilo": (hilo_attention, naive.hilo_attention, dict(window=6, num_lofi=2)),
}


def qkv(t: int, b: int = 2, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, H, t, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
            for _ in range(3)]


def out_and_grads(op, q, k, v, grad_out, **kw):
    o = op(q, k, v, **kw)
    return [o, *torch.autograd.grad(o, (q, k, v), grad_out.to(o.dtype))]


def padding_mask(t: int) -> torch.Tensor:
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[1, max(1, t // 2):] = False
    return mask


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked_checkpointed"])
def test_equals_oracle_float64(name, causal, chunked, monkeypatch):
    """Same result as the dense-mask oracle to float64 rounding, with and without padding, for both memory
    paths of the gathered kernel: all blocks at once, and chunks of a few blocks under activation checkpointing;
    for BigBird's local blocks in one group and in groups of one block (index and fold offsets across groups);
    and for longformer's merge with its global keys in one chunk of rows, and in several (the last one partial)."""
    if chunked:
        monkeypatch.setattr(blocked, "CHECKPOINT_BYTES", 20000)  # several chunks per call at T = 257
        monkeypatch.setattr(longformer, "MERGE_ROWS", 7)  # several merge chunks from T = 63
        monkeypatch.setattr(bigbird_local, "_GROUP_SCORES", 500)  # one local block per group
    fast, oracle, opts = PATTERNS[name]
    for t in LENGTHS:
        q, k, v = qkv(t)
        grad_out = torch.randn(2, H, t, D, dtype=torch.float64)
        for mask in (None, padding_mask(t)):
            got = out_and_grads(fast, q, k, v, grad_out, causal=causal, key_padding_mask=mask, **opts)
            ref = out_and_grads(oracle, q, k, v, grad_out, causal=causal, key_padding_mask=mask, **opts)
            for what, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
                err = (a - b).abs().max().item()
                assert err < 1e-11, f"{name} T={t} mask={mask is not None} {what}: {err:.3g}"


def rel_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Root-mean-square error (stable where a max over few elements is not; defined where ``ref`` is 0, e.g. the
    query gradient at T = 1)."""
    return ((a.double() - ref).square().mean().sqrt()).item()


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_low_precision_error_within_twice_the_oracles(name, dtype):
    """RMS error vs the float64 oracle <= 2x that of the same oracle run in ``dtype`` (+ a few-ulp floor), for the
    output and every input gradient."""
    fast, oracle, opts = PATTERNS[name]
    for causal in (False, True):
        for t in LENGTHS:
            q64, k64, v64 = qkv(t, seed=t)
            grad_out = torch.randn(2, H, t, D, dtype=torch.float64)
            ref = out_and_grads(oracle, q64, k64, v64, grad_out, causal=causal, **opts)
            low = [x.detach().to(dtype).requires_grad_(True) for x in (q64, k64, v64)]
            got = out_and_grads(fast, *low, grad_out, causal=causal, **opts)
            base = out_and_grads(oracle, *low, grad_out, causal=causal, **opts)
            for what, a, b, r in zip(("out", "dq", "dk", "dv"), got, base, ref):
                assert a.dtype == dtype
                err_fast = rel_error(a, r)
                err_naive = rel_error(b, r)
                assert err_fast <= 2 * err_naive + FLOOR[dtype], \
                    f"{name} causal={causal} T={t} {what}: fast {err_fast:.3g} vs oracle {err_naive:.3g}"


def test_longformer_window_covering_the_sequence_is_exact_softmax():
    """Longformer with window >= 2T (every key inside the window) is exact softmax attention: Beltagy et al. 2020,
    Sec. 3.1 — the window is a restriction of full attention, so a window covering the sequence removes it."""
    t = 63
    q, k, v = qkv(t)
    for causal in (False, True):
        got = longformer_attention(q, k, v, window=2 * t, num_global=4, causal=causal, block_size=8)
        ref = softmax_naive.attention(q, k, v, causal=causal)
        assert (got - ref).abs().max().item() < 1e-12


def test_global_rows_are_the_first_rows_of_dense_softmax():
    """``global_rows_attention`` (the global query rows of Longformer and BigBird) equals the first g rows of dense
    softmax attention, outputs and gradients in float64, with causality and padding (including a row whose only
    visible keys are padded: 0)."""
    t, g = 37, 5
    q, k, v = qkv(t)
    mask = padding_mask(t)
    mask[1, :2] = False  # row 0 of batch 1 sees no real key when causal
    grad_out = torch.randn(2, H, g, D, dtype=torch.float64)
    for causal in (False, True):
        got = out_and_grads(lambda a, b, c: global_rows_attention(a, b, c, g, causal=causal, key_padding_mask=mask),
                            q, k, v, grad_out)
        ref = out_and_grads(lambda a, b, c: softmax_naive.attention(a, b, c, causal=causal,
                                                                    key_padding_mask=mask)[:, :, :g],
                            q, k, v, grad_out)
        for what, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
            assert (a - b).abs().max().item() < 1e-12, f"causal={causal} {what}"
    with pytest.raises(ValueError, match="num_rows"):
        global_rows_attention(q, k, v, t + 1, causal=False)


def test_dilation_one_is_the_sliding_window():
    """dilated_window with dilation 1 is plain sliding-window attention (Hassani & Shi 2022, Sec. 3: δ = 1 reduces
    dilated neighborhood attention to neighborhood attention), checked against the shared softmax oracle."""
    t = 57
    q, k, v = qkv(t)
    for causal, bounds in ((False, (3, 3)), (True, (6, 0))):
        got = dilated_window_attention(q, k, v, window=7, dilation=1, causal=causal)
        ref = softmax_naive.attention(q, k, v, causal=causal, window=bounds)
        assert (got - ref).abs().max().item() < 1e-12


def test_dilated_window_is_a_sliding_window_per_residue_class():
    """Query i sees exactly keys i + δ·o: output at i depends only on tokens of its residue class."""
    t, delta = 40, 4
    q, k, v = qkv(t)
    base = dilated_window_attention(q, k, v, window=5, dilation=delta, causal=False)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 1::delta] += 5.0  # perturb residue class 1 only
    v2[:, :, 1::delta] -= 3.0
    moved = dilated_window_attention(q, k2, v2, window=5, dilation=delta, causal=False)
    changed = (moved - base).abs().amax(dim=(0, 1, 3)) > 1e-9
    assert changed[1::delta].all() and not changed[0::delta].any() and not changed[2::delta].any()


def test_bigbird_covering_pattern_is_exact_softmax():
    """BigBird whose window + global + random blocks cover every block is full attention (Zaheer et al. 2020,
    Sec. 2: the sparse graph is a subgraph of the complete one); with 8 blocks, 1 global and r = 5 random blocks
    every non-global block sees all 8."""
    t, bs = 61, 8
    q, k, v = qkv(t)
    table = random_blocks(3, 8, num_global=1, num_random=5, causal=False)
    got = bigbird_attention(q, k, v, block_size=bs, num_global=1, random_blocks=table, causal=False)
    ref = softmax_naive.attention(q, k, v)
    assert (got - ref).abs().max().item() < 1e-12


def test_bigbird_random_blocks_are_prefix_consistent_and_exclude_window():
    """The random choice of a block does not depend on blocks that do not exist (so padding does not change it),
    never repeats the window or a global block, and is causal (past only) when asked."""
    short = random_blocks(11, 12, num_global=2, num_random=3, causal=True)
    long = random_blocks(11, 30, num_global=2, num_random=3, causal=True)
    assert torch.equal(short[0], long[0, :12])
    table = random_blocks(11, 30, num_global=2, num_random=3, causal=False)[0]
    n = torch.arange(30)[:, None]
    picked = table >= 0
    assert ((table[picked] >= 2)).all()
    assert ((table - n).abs()[picked] > 1).all()
    assert (picked[2:].sum(-1) == 3).all() and not picked[:2].any()
    assert (long[0][long[0] >= 0] < torch.arange(30)[:, None].expand(30, 3)[long[0] >= 0] - 1).all()


def test_hilo_limits_are_exact_softmax():
    """HiLo (Pan et al. 2022, Sec. 3.2): with window >= T the Hi-Fi heads are full attention, and with window 1 the
    Lo-Fi pools are the tokens themselves, so the Lo-Fi heads are full attention too."""
    t = 45
    q, k, v = qkv(t)
    ref = softmax_naive.attention(q, k, v)
    hi = hilo_attention(q, k, v, window=t, num_lofi=0, causal=False)
    lo = hilo_attention(q, k, v, window=1, num_lofi=H, causal=False)
    assert (hi - ref).abs().max().item() < 1e-12
    assert (lo - ref).abs().max().item() < 1e-12


def test_hilo_causal_lofi_sees_only_completed_windows():
    """Causal Lo-Fi: a query before the end of the first window has no pooled context (outputs 0) and changing a
    token never changes a Lo-Fi output before the end of that token's window."""
    t, w = 24, 6
    q, k, v = qkv(t)
    out = hilo_attention(q, k, v, window=w, num_lofi=H, causal=True)
    assert out[:, :, :w - 1].abs().max().item() == 0.0
    v2 = v.detach().clone()
    v2[:, :, 8] += 10.0  # inside window 1 = positions 6..11, completed at position 11
    out2 = hilo_attention(q, k, v2, window=w, num_lofi=H, causal=True)
    changed = (out2 - out).abs().amax(dim=(0, 1, 3)) > 1e-12
    assert not changed[:11].any() and changed[11:].all()


def test_bad_arguments_name_the_argument():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="window"):
        longformer_attention(q, k, v, window=0, num_global=1, causal=False)
    with pytest.raises(ValueError, match="num_global"):
        longformer_attention(q, k, v, window=3, num_global=-1, causal=False)
    with pytest.raises(ValueError, match="dilation"):
        dilated_window_attention(q, k, v, window=3, dilation=0, causal=False)
    with pytest.raises(ValueError, match="num_lofi"):
        hilo_attention(q, k, v, window=3, num_lofi=H + 1, causal=False)
    with pytest.raises(ValueError, match="random_blocks"):
        bigbird_attention(q, k, v, block_size=4, num_global=1, random_blocks=torch.zeros(1, 5, 1, dtype=torch.long),
                          causal=False)
    with pytest.raises(ValueError, match="key_padding_mask"):
        longformer_attention(q, k, v, window=3, num_global=1, causal=False,
                             key_padding_mask=torch.ones(2, 9, dtype=torch.bool))
