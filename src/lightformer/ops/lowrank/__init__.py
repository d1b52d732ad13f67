"""Low-rank attention: Linformer and Nyströmformer. ``naive`` is the oracle; ``linformer`` and ``nystrom`` are the
fast paths (same signatures)."""
