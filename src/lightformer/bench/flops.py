"""Analytic FLOP counts of a bench cell (a multiply-add counts 2 FLOPs).

Every implementation (lightformer mixer or peer) is counted with the formula of the mixer family it implements, so
achieved GFLOP/s compare like with like. For ``x: [B, T, D]`` with H heads of width d = D/H:

    forward = projections + mixing
    projections = 8·B·T·D²             fused QKV (D -> 3D) and output (D -> D) Linear layers
    mixing      = 4·B·T·D·K            Q·Kᵀ and A·V over H heads (2·2·T·K·d per head), K = "keys per query"

A mixer that counts its own FLOPs (``Mixer.flops``, e.g. every state-space and recurrent mixer) is counted by that
method instead (family ``own``), and so are its peers. Otherwise K by family, chosen from the cell's options first and the mixer's declared ``Capabilities.time_exponent``
second:

    window        option ``window`` (sliding_window, longformer, local_attention): the exact mean number of keys
                  a query sees — causal min(t+1, w), non-causal the keys with |Δ| <= w//2 inside [0, T) — plus
                  ``num_global`` when present (longformer's global tokens)
    block_sparse  options ``block_size`` b and ``num_random`` r (bigbird): b·(3 + num_global + r)
    kernel        option ``num_features`` m (performer): 2·m  (feature maps of q and k, then φ(K)ᵀV and φ(Q)·S)
    low_rank      option ``proj_len`` k (linformer): 2·k  (E·K and F·V projections, then attention to k keys)
    lsh           options ``bucket_size`` c, ``n_hashes`` n (reformer): 2·c·n  (each chunk sees itself and the
                  previous chunk, per hash round)
    landmarks     option ``num_landmarks`` m (nystrom): 3·m  (three products through the m landmarks)
    exact         ``time_exponent == 2`` (or unknown): T, or (T+1)/2 when causal (only the unmasked half is useful
                  work)
    linear        ``time_exponent == 1``: d  (a d×d state per head: φ(K)ᵀV then φ(Q)·S); this is also
                  the fallback for a new family not in this table, so its GFLOP/s are indicative only

fwd+bwd counts 3× forward (backward = two matmuls per forward matmul). decode counts one token after a context of T:
the growth of the causal forward's count from T to T + 16 tokens, per token.
"""

from __future__ import annotations

from typing import Any, Callable

#: tokens decoded per timed ``decode`` run, after a prefill of ``seq_len`` tokens (``bench/cell.py``)
DECODE_STEPS = 16


def window_keys(window: int, seq_len: int, causal: bool) -> float:
    """Mean keys per query of a sliding window of ``window`` keys (causal) or ±``window//2`` (non-causal)."""
    t = seq_len
    if causal:
        w = min(window, t)
        # queries 0..w-1 see t+1 keys, the rest see w
        total = w * (w + 1) / 2 + (t - w) * w
    else:
        r = window // 2
        total = sum(min(p + r, t - 1) - max(p - r, 0) + 1 for p in range(t)) if t <= 4 * r + 4 else \
            t * (2 * r + 1) - r * (r + 1)
    return total / t


def keys_per_query(options: dict[str, Any], seq_len: int, dim: int, heads: int, causal: bool,
                   time_exponent: int | None) -> tuple[float, str]:
    """``(K, family)`` as documented in the module docstring. ``time_exponent=None`` (unknown) counts as exact."""
    o = options
    if isinstance(o.get("window"), int):
        extra = o.get("num_global") if isinstance(o.get("num_global"), int) else 0
        return min(float(seq_len), window_keys(o["window"], seq_len, causal) + extra), "window"
    if isinstance(o.get("num_random"), int) and isinstance(o.get("block_size"), int):
        g = o.get("num_global") if isinstance(o.get("num_global"), int) else 0
        return min(float(seq_len), o["block_size"] * (3.0 + g + o["num_random"])), "block_sparse"
    if isinstance(o.get("num_features"), int):
        return 2.0 * o["num_features"], "kernel"
    if isinstance(o.get("proj_len"), int):
        return 2.0 * min(o["proj_len"], seq_len), "low_rank"
    if isinstance(o.get("bucket_size"), int):
        return 2.0 * min(o["bucket_size"], seq_len) * int(o.get("n_hashes", 1)), "lsh"
    if isinstance(o.get("num_landmarks"), int):
        return 3.0 * min(o["num_landmarks"], seq_len), "landmarks"
    if time_exponent is None or time_exponent >= 2:
        return ((seq_len + 1) / 2 if causal else float(seq_len)), "exact"
    return float(dim // heads), "linear"


def forward_flops(options: dict[str, Any], seq_len: int, batch: int, dim: int, heads: int, causal: bool,
                  time_exponent: int | None) -> tuple[float, str]:
    """FLOPs of one forward pass over ``[batch, seq_len, dim]`` and the family used."""
    k, family = keys_per_query(options, seq_len, dim, heads, causal, time_exponent)
    proj = 8.0 * batch * seq_len * dim * dim
    mix = 4.0 * batch * seq_len * dim * k
    return proj + mix, family


def cell_flops(options: dict[str, Any], seq_len: int, batch: int, dim: int, heads: int, causal: bool, mode: str,
               time_exponent: int | None, own: Callable[[int], float | None] | None = None) -> tuple[float, str]:
    """FLOPs of one timed run of ``mode`` (``fwd``, ``fwd+bwd`` = 3× fwd, ``decode`` = one token at context T).
    ``own``: ``seq_len -> forward FLOPs or None``, the mixer's own count (``Mixer.flops``), used when it answers."""
    if own is not None and own(seq_len) is not None:
        if mode == "decode":
            return (own(seq_len + DECODE_STEPS) - own(seq_len)) / DECODE_STEPS, "own"
        return (3.0 if mode == "fwd+bwd" else 1.0) * own(seq_len), "own"
    if mode == "decode":  # one token after a context of seq_len: the causal forward's growth per token
        n = DECODE_STEPS
        grown, family = forward_flops(options, seq_len + n, batch, dim, heads, True, time_exponent)
        base, _ = forward_flops(options, seq_len, batch, dim, heads, True, time_exponent)
        return (grown - base) / n, family
    flops, family = forward_flops(options, seq_len, batch, dim, heads, causal, time_exponent)
    return (3.0 * flops if mode == "fwd+bwd" else flops), family
