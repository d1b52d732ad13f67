"""Oracle for sliding-window attention (Longformer, Beltagy et al. 2020, "Longformer: The Long-Document
Transformer", Sec. 3.1 "Sliding Window"; local attention of Child et al. 2019, "Generating Long Sequences with
Sparse Transformers").

Each query attends only to the keys of a window around its own position:

    causal:      the ``window`` most recent keys including itself, ``p_q - window + 1 <= p_k <= p_q``
    non-causal:  ``window // 2`` keys on each side plus itself, ``|p_k - p_q| <= window // 2``

Written for reading: the dense ``[T, T]`` masked score matrix of ``ops.softmax.naive.attention`` is used, so this
is O(T²) in time and memory. ``ops.local.blocked`` is the O(T·window) fast path tested against it.
Shapes and the conventions for padding, ALiBi and empty rows are those of ``ops.softmax.naive``.
"""

from __future__ import annotations

from torch import Tensor

from lightformer.ops.softmax import naive as softmax_naive


def window_bounds(window: int, causal: bool) -> tuple[int, int]:
    """``(left, right)``: a query at ``p_q`` sees keys with ``-left <= p_k - p_q <= right``.

    Raises:
        ValueError: ``window`` is not a positive int.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (number of keys a query sees), got {window!r}")
    return (window - 1, 0) if causal else (window // 2, window // 2)


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool,
                             key_padding_mask: Tensor | None = None, alibi_slopes: Tensor | None = None,
                             scale: float | None = None, key_bias: Tensor | None = None) -> Tensor:
    """Dense masked sliding-window softmax attention.

    Args:
        q, k, v: ``[B, H, T, d]`` (same T), float64 / float32 / bfloat16.
        window: positive int; causal: the ``window`` most recent keys including the query's own position;
            non-causal: ``window // 2`` keys on each side plus itself.
        causal: whether keys after the query are hidden.
        key_padding_mask: ``[B, T]`` bool, True = real key.
        alibi_slopes: ``[H]``, adds ``-slope_h · |p_q - p_k|`` to the scores.
        scale: score scale, default ``1/sqrt(d)``.
        key_bias: ``[B, T]``, added to every score of key j (ToMe's ``log s_j``; Bolya et al. 2023, Eq. 1).

    Returns:
        ``[B, H, T, d]`` in the dtype of ``q``; a query that sees no key outputs zeros.

    Raises:
        ValueError: ``window`` is not a positive int.
    """
    left, right = window_bounds(window, causal)
    return softmax_naive.attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                                   alibi_slopes=alibi_slopes, scale=scale, window=(left, right),
                                   bias=None if key_bias is None else key_bias[:, None, None, :])
