"""``tome``: Token Merging (Bolya et al. 2023, "Token Merging: Your ViT But Faster", ICLR 2023, arXiv
2210.09461) applied to a trained non-causal ``SequenceClassifier`` at inference: after each layer's mixer, ``r``
tokens are merged away by bipartite soft matching on the attention keys, merged tokens are size-weighted averages,
and attention becomes proportional, ``softmax(QKᵀ/√d + log s)`` (Eq. 1). The model, the choices (metric, RoPE
positions, padding, window order) and their reasons: ``models/tome.py``; the matching: ``ops/tome``.

No weight changes: the checkpoint holds the same tensors, and its record (``{"r": [r_0, ..., r_{L-1}],
"tokens": [T, T − r_0, ...]}``, the counts at the task's length) makes ``load_trained`` (``eval``, ``bench``,
``suite``) set the same schedule on the rebuilt model, so it runs merged. ToMe trades accuracy for speed only; the
size before and after is the same.

Refused, with the reason, before anything is measured: a causal model or a ``LanguageModel``, a mixer other than
``softmax``, ``tiled_softmax`` or ``sliding_window``, ALiBi / T5 positions, a block without a point between mixer
and FFN, and an r that one bipartite step cannot remove from the tokens a layer gets at the task's length (which
includes any r that would leave fewer than one token). Shorter inputs are checked at each forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..models.tome import check_mergeable, merge_schedule, token_counts
from .base import COMPRESSORS, CompressConfig, Compressor


@dataclass(frozen=True)
class ToMeConfig(CompressConfig):
    """Attributes:
        r: tokens merged away after each layer's mixer: an int (ToMe's constant schedule, ``T − L·r`` tokens
            after L layers) or a list with one int per layer (e.g. a decreasing schedule).
    """

    r: int | tuple[int, ...] = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        value = tuple(self.r) if isinstance(self.r, (list, tuple)) else self.r
        values = value if isinstance(value, tuple) else (value,)
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ValueError(f"r must be an int >= 0 (tokens merged per layer) or a list of them, got {self.r!r}")
        object.__setattr__(self, "r", value)
        if self.exclude:
            raise ValueError(f"tome merges tokens, not layers: exclude={list(self.exclude)} has nothing to exclude")


@COMPRESSORS.register("tome")
class ToMe(Compressor):
    """ToMe bipartite soft matching with proportional attention in a ``SequenceClassifier``, r tokens per layer."""

    config_class = ToMeConfig
    replaces_layers = False

    def __init__(self, config: ToMeConfig) -> None:
        super().__init__(config)
        self.seq_len: int | None = None  # the task's T, read by prepare

    def prepare(self, model: nn.Module, task: Any, run_config: Any) -> None:
        self.seq_len = task.seq_len

    def apply(self, model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Any]:
        check_mergeable(model)
        schedule = merge_schedule(self.config.r, len(model.backbone.blocks))
        if not any(schedule):
            raise ValueError(f"tome with r={self.config.r!r} merges nothing; give r >= 1")
        record: dict[str, Any] = {"r": list(schedule)}
        if self.seq_len is not None:
            record["tokens"] = token_counts(schedule, self.seq_len, protect_first=model.pooling == "cls")
        model.set_token_merging(schedule)
        return record

    def restore(self, model: nn.Module, record: dict[str, Any]) -> None:
        check_mergeable(model)
        model.set_token_merging(list(record["r"]))

    def describe(self, record: dict[str, Any]) -> list[str]:
        r = record["r"]
        tokens = record.get("tokens")
        counts = f": {' -> '.join(map(str, tokens))} tokens" if tokens else ""
        return [f"ToMe merges {', '.join(map(str, r))} tokens after the mixer of layers 0..{len(r) - 1} "
                f"({sum(r)} in all{counts}); weights unchanged"]
