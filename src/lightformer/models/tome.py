"""ToMe token merging inside a non-causal ``SequenceClassifier`` (Bolya et al. 2023, "Token Merging: Your ViT But
Faster", ICLR 2023, arXiv 2210.09461).

In every block, between the mixer's sublayer and the FFN's (Sec. 3, "Strategy"), ``r_i`` tokens are merged away by
bipartite soft matching (``ops/tome``), so block i's FFN and every later block run on fewer tokens: after L blocks
a sequence of T tokens has ``T − Σ r_i`` (``T − L·r`` for a constant r, the paper's default schedule). Each token
carries a size s (how many input tokens it stands for; 0 for padding):

* merged features are size-weighted averages and sizes add ("Tracking Token Size");
* attention is proportional, ``softmax(QKᵀ/√d + log s)`` (Eq. 1): a merged token of size s weighs as its s
  identical members would, through the mixers' ``key_bias`` (``softmax``, ``tiled_softmax``, ``sliding_window``);
* the classifier's mean pooling is size-weighted, ``Σ s_t·h_t / Σ s_t``, so with no merges it is the plain mean.

Choices where the paper (a ViT with absolute positions and a cls token) is silent:

* **Metric**: the keys as the attention uses them (after RoPE, where the model has it), averaged over the key
  heads, as ToMe's ``k.mean(1)``. The rotated key is what enters every dot product, so two tokens with equal rotated
  keys are interchangeable for every query (the case where proportional attention is exact); the rotation also
  lowers the similarity of far-apart tokens, which keeps merges local, where a size-weighted position means most.
* **Positions**: absolute ones (``learned``, ``sinusoidal``) are added to the embeddings before the first block and
  travel with the features. RoPE is applied by each mixer from token positions: a merged token sits at the
  size-weighted mean of its members' positions (fractional; ``nn.positions.Rotary`` takes ``[B, T]`` positions),
  so with no merges every position is the token's index. ALiBi and T5 compute their bias from token indices,
  which merging changes, and are refused.
* **Order**: the surviving tokens keep their original order, so a windowed mixer's window counts tokens of the
  merged sequence (``mixers/sliding_window.py``).
* **Padding**: padding tokens have size 0; they are removed first, never merged into a real token's features and
  never counted (``ops/tome/naive.py``); the padding mask is ``size > 0`` after each merge. A padded sequence
  therefore merges fewer real tokens than the same sequence unpadded: the batch loses r tokens per row either way.
* **cls pooling**: token 0 is protected (never merged away), as ToMe protects the cls token.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops.tome import bipartite, naive

#: the mixers whose attention takes a per-key log-size bias
MIXERS = ("softmax", "tiled_softmax", "sliding_window")
#: position schemes that survive merging (absolute ones ride on the features; RoPE at size-weighted positions)
POSITIONS = ("none", "learned", "sinusoidal", "rope")


def merge_schedule(r: int | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Tokens merged away after each layer's mixer: a constant ``r`` (ToMe's default) or one int per layer.

    Raises:
        ValueError: a value that is not an int >= 0, or a list whose length is not ``num_layers``."""
    if isinstance(r, (list, tuple)):
        values = tuple(r)
        if len(values) != num_layers:
            raise ValueError(f"r as a list needs one value per layer ({num_layers}), got {len(values)}: {list(r)}")
    else:
        values = (r,) * num_layers
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"r must be an int >= 0 (tokens merged per layer) or a list of them, got {r!r}")
    return values


def token_counts(schedule: Sequence[int], seq_len: int, *, protect_first: bool = False) -> list[int]:
    """``[T, T − r_0, T − r_0 − r_1, ...]``: the tokens entering each layer's FFN path and leaving the last.

    Raises:
        ValueError: a layer's r above what one bipartite step can remove (every token of set A: at most half,
            rounded up, of the tokens it gets; none when a single token is left), so merging would leave fewer
            than 1 token or ask for more than the matching offers. The message names the layer and r."""
    counts = [seq_len]
    for i, r in enumerate(schedule):
        try:
            bipartite.check_r(r, counts[-1], protect_first)
        except ValueError as err:
            raise ValueError(f"tome at layer {i} (T={seq_len} tokens in, {counts[-1]} at this layer): {err}") from None
        counts.append(counts[-1] - r)
    return counts


def check_mergeable(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the reason when ToMe cannot run in ``model``: not a ``SequenceClassifier``
    (a language model predicts at every position, so no token may disappear), a causal encoder, a layer whose
    mixer is not exact or windowed attention, a block without a point between mixer and FFN, a position scheme
    computed from token indices (ALiBi, T5), or model options that tie layers by token index (value residual,
    DenseFormer's averages)."""
    from .heads import SequenceClassifier

    if not isinstance(model, SequenceClassifier):
        raise ValueError(f"tome merges the tokens of a pooled, non-causal SequenceClassifier; {type(model).__name__} "
                         "reads an output at every position, so no token may be merged away")
    cfg = model.config
    if cfg.causal:
        raise ValueError("tome needs a non-causal encoder: this SequenceClassifier is causal (a causal-only mixer "
                         "in its schedule), and a merged token would carry later tokens into earlier ones")
    if cfg.position not in POSITIONS:
        raise ValueError(f"tome cannot merge tokens under position={cfg.position!r}: its bias is computed from "
                         f"token indices, which merging changes (supported: {', '.join(POSITIONS)})")
    if cfg.value_residual or cfg.depth_weighted_average:
        which = "value_residual" if cfg.value_residual else "depth_weighted_average"
        raise ValueError(f"tome cannot merge tokens with {which}=True: it combines layers token by token, and the "
                         "layers would hold different numbers of tokens")
    for i, block in enumerate(model.backbone.blocks):
        name = getattr(type(block.mixer), "registry_name", type(block.mixer).__name__)
        if name not in MIXERS:
            raise ValueError(f"tome needs proportional attention (a per-key log-size bias) in every layer; layer {i}'s "
                             f"mixer {name!r} has none (exact or windowed attention: {', '.join(MIXERS)})")
        if not type(block).merges_tokens:
            raise ValueError(f"tome merges between the mixer and the FFN; layer {i}'s block "
                             f"{getattr(type(block), 'registry_name', type(block).__name__)!r} has no such point")


def _attend(mixer: nn.Module, h: Tensor, mask: Tensor | None, key_bias: Tensor | None, positions: Tensor,
            oracle: bool) -> tuple[Tensor, Tensor]:
    """The mixer's forward on (possibly merged) tokens with proportional attention -> (y ``[B, T, D]``, the metric
    ``[B, T, d]``: its keys after RoPE, averaged over key heads). With ``key_bias=None`` and index positions this
    is exactly ``AttentionMixer._forward`` (+ output dropout)."""
    q, k, v = mixer.project(h, positions)
    attend = mixer.attend_oracle if oracle else mixer.attend
    o = attend(q, k, v, mask) if key_bias is None else attend(q, k, v, mask, key_bias=key_bias)
    y = mixer.output_dropout(mixer.out(rearrange(o, "b h t d -> b t (h d)")))
    return y, k.mean(dim=1)


def merged_forward(model: nn.Module, idx: Tensor, key_padding_mask: Tensor | None, schedule: Sequence[int], *,
                   oracle: bool = False) -> tuple[Tensor, Tensor]:
    """The classifier's backbone with ToMe: ids ``[B, T]`` -> (hidden ``[B, T', D]`` after the final norm, sizes
    ``[B, T']``), ``T' = T − Σ schedule``. Sizes are float32 (float64 for a float64 model); 0 marks padding.

    Args:
        model: a ``SequenceClassifier`` that ``check_mergeable`` accepts.
        idx: token ids ``[B, T]``; key_padding_mask: ``[B, T]`` bool, True = real token (None = all real).
        schedule: tokens merged away after each layer's mixer (``merge_schedule``).
        oracle: compute through the oracles (``attend_oracle``, ``ops.tome.naive``), for tests.

    Raises:
        ValueError: as ``check_mergeable``, ``token_counts`` (for this T), or the backbone's input checks.
    """
    check_mergeable(model)
    backbone = model.backbone
    if idx.dim() != 2:
        raise ValueError(f"idx must be [B, T] (rank 2), got shape {tuple(idx.shape)}")
    b, t = idx.shape
    if key_padding_mask is not None and (key_padding_mask.shape != (b, t) or key_padding_mask.dtype != torch.bool):
        raise ValueError(f"key_padding_mask must be bool [B, T] = {[b, t]}, got {key_padding_mask.dtype} "
                         f"{list(key_padding_mask.shape)}")
    protect = model.pooling == "cls"
    token_counts(schedule, t, protect_first=protect)
    backbone._check_ids(idx)
    x = backbone.embed(idx)
    pos = backbone._positions(0, t, idx.device)
    if pos is not None:
        x = x + pos
    x = backbone.drop(x)
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    ops = naive if oracle else bipartite
    # the tokens' running state: sizes (0 = padding), mask, RoPE positions ([T] indices until the first merge)
    tokens: dict[str, Any] = {
        "size": torch.ones(b, t, dtype=stat, device=x.device) if key_padding_mask is None
        else key_padding_mask.to(stat), "mask": key_padding_mask,
        "positions": torch.arange(t, device=x.device), "merged": False}
    for block, r in zip(backbone.blocks, schedule):
        metric: list[Tensor] = []

        def mix(h: Tensor, mixer: nn.Module = block.mixer) -> Tensor:
            # proportional attention only once sizes differ from 1: before, the plain path, bit for bit
            key_bias = None
            if tokens["merged"]:
                size = tokens["size"]
                key_bias = torch.where(size > 0, size, torch.ones_like(size)).log()  # padding is masked anyway
            y, m = _attend(mixer, h, tokens["mask"], key_bias, tokens["positions"], oracle)
            metric.append(m)
            return y

        def merge(h: Tensor, r: int = r) -> Tensor:
            if r == 0:
                return h
            valid = tokens["mask"]
            matching = ops.bipartite_soft_matching(metric[0], r, valid=valid, protect_first=protect)
            size = tokens["size"]
            positions = tokens["positions"]
            if positions.dim() == 1:
                positions = positions.to(stat).expand(b, -1)
            h, new_size = ops.merge_weighted(h, size, matching)
            merged_pos, _ = ops.merge_weighted(positions[..., None], size, matching)
            tokens.update(size=new_size, positions=merged_pos[..., 0], merged=True,
                          mask=None if valid is None else new_size > 0)
            return h

        x = block.compose(x, mix, merge)
    return backbone.norm(x), tokens["size"]
