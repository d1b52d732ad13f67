"""The state a mixer keeps per sequence to decode the next token, in numbers (floats) per layer: Zoology's
``state_size`` accounting (Arora et al. 2023, Sec. 4 and the ``state_size()`` methods of its mixers), so recall
can be plotted against memory.

A mixer that decodes is measured, not looked up: it is built at the given width, prefilled with ``seq_len`` tokens,
and its ``State`` is counted (``nbytes`` of a float32 state / 4: complex numbers count as two floats, a KV cache
counts its kept tokens). This gives Zoology's numbers for the mixers below and the state-space and recurrent
mixers' own states (e.g. Mamba's conv window plus its ``[E·D, N]`` SSM state) without a table entry each
(``persistent_memory`` counts its KV cache only: its N memory slots are parameters, shared by every sequence). The
others are counted by family:

- attention without a decode path (``reversed``, ``probsparse``, ``bigbird``, ``linformer``, ...): the KV cache a
  decoder would keep, ``2 · T · H_kv · d_head``; ``longformer``: its window and global tokens, ``2 · (w + g) · D``;
- AFT's full and local forms: their ``[T, D]`` numerator and denominator, ``2 · T · D``;
- ``hyena``: the input history its long filters read, ``T · D`` (Zoology's count for Hyena and long convolutions);
- otherwise ``None``.

A model's state (``model_state_size``) is the sum over its layers, each counted with its own mixer and options, so a
schedule (``masformer``: a KV cache in its exact layers, a window in the others) is accounted for layer by layer; a
layer that has no count makes the whole ``None``, with the reason.

Measured values agree with Zoology's formulas: softmax ``2·T·D``, sliding window ``2·min(w, T)·D``, linear attention
``H·(m·d_head + m)`` (plus SLAB's convolution window ``(K−1)·D`` for ``linear_relu``); ``aft_simple`` holds three
``[D]`` sums (numerator, denominator and their running max), ``3·D``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..mixers import MIXERS

#: attention mixers whose decoder would keep a full KV cache (their own forms have no bounded state)
ATTENTION_WITHOUT_DECODE = {"reversed", "kernel_rpe_fft", "probsparse", "reformer_lsh", "nystrom", "linformer",
                            "hilo", "bigbird", "dilated_window"}


def state_size(mixer: str, options: dict[str, Any], *, dim: int, num_heads: int, seq_len: int) -> int | None:
    """Floats of decoding state per layer and sequence after ``seq_len`` tokens (see the module docstring).

    Decoding mixers are measured (``decoding_state_size``); attention without a bounded recurrent form (bigbird,
    linformer, ...) is counted as a full KV cache, the state a decoder would keep for it; ``None`` when nothing
    sensible applies.
    """
    measured = decoding_state_size(mixer, options, dim=dim, num_heads=num_heads, seq_len=seq_len)
    if measured is not None:
        return measured
    head_dim = dim // num_heads
    kv_heads = options.get("num_kv_heads") or num_heads
    if mixer == "longformer":
        return 2 * (min(options.get("window", 256), seq_len) + options.get("num_global", 0)) * kv_heads * head_dim
    if mixer in ("aft", "aft_local"):
        return 2 * seq_len * dim
    if mixer == "hyena":
        return seq_len * dim
    if MIXERS.get(mixer).capabilities.time_exponent == 2 or mixer in ATTENTION_WITHOUT_DECODE:
        return 2 * seq_len * kv_heads * head_dim
    return None


def model_state_size(layers: Iterable[tuple[str, dict[str, Any]]], *, dim: int, num_heads: int,
                     seq_len: int) -> tuple[int | None, str | None]:
    """Floats of decoding state per sequence after ``seq_len`` tokens summed over ``layers`` (each a mixer and its
    options), and ``None`` or why the sum is ``None`` (a layer whose mixer has no finite state and no count)."""
    total = 0
    counted: dict[str, int | None] = {}
    for i, (mixer, options) in enumerate(layers):
        key = f"{mixer} {sorted(options.items())}"
        if key not in counted:
            counted[key] = state_size(mixer, options, dim=dim, num_heads=num_heads, seq_len=seq_len)
        if counted[key] is None:
            return None, f"layer {i} ({mixer}) has no finite decoding state and no family count"
        total += counted[key]
    return total, None


def decoding_state_size(mixer: str, options: dict[str, Any], *, dim: int, num_heads: int,
                        seq_len: int) -> int | None:
    """Floats in the ``State`` of a causal ``mixer`` (built with ``options`` at ``dim``/``num_heads``) after a
    prefill of ``seq_len`` tokens; ``None`` when the mixer cannot decode or be built causal."""
    caps = MIXERS.get(mixer).capabilities
    if not (caps.decode and caps.causal):
        return None
    from .. import create_mixer

    m = create_mixer(mixer, dim=dim, num_heads=num_heads, causal=True, **options).eval()
    with torch.no_grad():
        _, state = m(torch.zeros(1, seq_len, dim), return_state=True)
    return state.nbytes() // 4
