"""Shared building blocks: norms, feed-forward networks, position schemes, decoding states and the KV cache."""
