"""The state a mixer keeps per sequence to decode the next token, in numbers (floats) per layer: Zoology's
``state_size`` accounting (Arora et al. 2023, Sec. 4 and the ``state_size()`` methods of its mixers), so recall
can be plotted against memory.

- exact attention (``softmax``, ``tiled_softmax``, ...): the KV cache, ``2 · T · H_kv · d_head``;
- windowed attention: ``2 · min(w, T) · D`` (plus the global tokens' keys and values, where there are some);
- kernel / linear attention: per head the ``[m, d_head]`` matrix memory and the ``[m]`` normaliser,
  ``H · (m · d_head + m)`` with feature size m; plus a depthwise-convolution window where the mixer has one;
- AFT: its ``[T, D]`` numerator/denominator for the full form, ``2 · D`` for ``aft_simple``;
- otherwise ``None`` (no finite state was accounted for, e.g. low-rank projections of the whole sequence).
"""

from __future__ import annotations

from typing import Any

EXACT = {"softmax", "tiled_softmax", "reversed", "kernel_rpe_fft", "probsparse", "reformer_lsh", "nystrom",
         "linformer", "hilo", "bigbird", "dilated_window"}


def state_size(mixer: str, options: dict[str, Any], *, dim: int, num_heads: int, seq_len: int) -> int | None:
    """Floats of decoding state per layer and sequence after ``seq_len`` tokens (see the module docstring).

    Mixers without a bounded recurrent form (bigbird, linformer, ...) are counted as a full KV cache, the state a
    decoder would keep for them; ``None`` when nothing sensible applies.
    """
    head_dim = dim // num_heads
    kv_heads = options.get("num_kv_heads") or num_heads
    kv_cache = 2 * seq_len * kv_heads * head_dim
    if mixer in EXACT:
        return kv_cache
    if mixer == "sliding_window":
        return 2 * min(options.get("window", 256), seq_len) * kv_heads * head_dim
    if mixer == "longformer":
        return 2 * (min(options.get("window", 256), seq_len) + options.get("num_global", 0)) * kv_heads * head_dim
    if mixer in ("linear", "linear_relu"):
        m = head_dim
        conv = dim * (options.get("conv_kernel", 5) - 1) if mixer == "linear_relu" else 0
        return num_heads * (m * head_dim + m) + conv
    if mixer == "performer":
        m = options.get("num_features", 256)
        return num_heads * (m * head_dim + m)
    if mixer == "aft_simple":
        return 2 * dim
    if mixer in ("aft", "aft_local"):
        return 2 * seq_len * dim
    return None
