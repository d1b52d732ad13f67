"""Sliding-window (local) attention: the oracle (``naive``) and its block-by-block fast path (``blocked``)."""
