"""Exact softmax attention: the oracle (``naive``) and its fast paths (``tiled``, ``split_kv``)."""
