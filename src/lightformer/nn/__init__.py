"""Shared building blocks: norms, feed-forward networks, position schemes, KV cache."""
