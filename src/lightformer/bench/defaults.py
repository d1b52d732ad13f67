"""Bench default options per mixer: the settings of the paper / peer implementation each mixer is compared with.

They apply to a bench cell unless the user overrides the option (``--option sliding_window.window=128``). An option
whose value is the string ``"T"`` is replaced by the cell's sequence length (Linformer's ``max_len``: its projection
is sized for exactly the benchmarked length); every mixer with a ``max_len`` option gets ``max_len = "T"`` unless the
user sets it, so mixers whose parameters are sized by ``max_len`` (Linformer, AFT) are built for the measured
length and nothing else. Options not accepted by the registered mixer are dropped, so a mixer
whose config has no such field is not broken by this table; nothing here restricts which mixers are benchmarked.
"""

from __future__ import annotations

from typing import Any

#: Sentinel option value meaning "the cell's sequence length T".
SEQ_LEN = "T"

BENCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "sliding_window": {"window": 256},
    "longformer": {"window": 256, "num_global": 16},
    "bigbird": {"block_size": 64, "num_global": 2, "num_random": 3},
    "dilated_window": {"window": 256, "dilation": 2},
    "hilo": {"window": 256},
    "performer": {"num_features": 256},
    "linformer": {"proj_len": 256, "max_len": SEQ_LEN},
    "reformer_lsh": {"n_hashes": 4, "bucket_size": 64},
    # LMUFormer sets the memory's window theta to the sequence length
    "lmu": {"theta": SEQ_LEN},
    # the all-attention paper's N at the bench's width (512, 8 heads): its 18-layer character models
    "persistent_memory": {"num_memory": 1024},
}


def bench_options(mixer: str, overrides: dict[str, Any] | None = None,
                  valid: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options a cell of ``mixer`` uses: ``BENCH_DEFAULTS[mixer]`` updated by ``overrides``.

    Args:
        mixer: registry name.
        overrides: user options; they win over the defaults and are never dropped.
        valid: the mixer's option names (``MIXERS.options(mixer)``); defaults not in it are dropped.
            ``None`` keeps every default.
    """
    out = {k: v for k, v in BENCH_DEFAULTS.get(mixer, {}).items() if valid is None or k in valid}
    if valid is not None and "max_len" in valid:
        out.setdefault("max_len", SEQ_LEN)
    out.update(overrides or {})
    return dict(sorted(out.items()))


def resolve_options(options: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """Replace the ``"T"`` sentinel by ``seq_len`` (tokens)."""
    return {k: (seq_len if v == SEQ_LEN else v) for k, v in options.items()}
