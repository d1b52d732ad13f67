"""Sparse / windowed softmax attention (Longformer, BigBird, dilated window, HiLo): the oracles (``naive``), the
gathered block-sparse kernel they share (``blocked``) and one fast path per pattern."""
