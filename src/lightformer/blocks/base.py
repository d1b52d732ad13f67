"""The block tier's contracts: the ``BLOCKS``, ``FFNS`` and ``NORMS`` registries and their base classes.

A norm maps ``[..., D] -> [..., D]``. An FFN maps ``[..., D] -> [..., D]`` position-wise, so the same module serves
a whole sequence ``[B, T, D]`` and one decoding step ``[B, D]``. A block wires one mixer, its norms and its FFN(s)
into a residual layer; how it wires them (pre-norm, post-norm, DeepNorm, ...) is the block's whole identity, so each
wiring is one registered class whose ``compose(x, mix)`` is written once and serves ``forward``, ``prefill`` and
``step`` alike: ``mix`` is the mixer applied to a normed input, bound by the caller to a padding mask or a decoding
state.

Auxiliary losses (an MoE's load balancing) use one channel: a module sets ``aux_loss`` (a scalar tensor) and
``aux_stats`` (floats, e.g. dropped tokens) in its ``forward``; ``collect_aux_loss`` / ``collect_aux_stats`` gather
them from a model after its forward, and the trainer adds the loss to the task loss and logs the stats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from ..mixers.base import check_field_types
from ..registry import Registry

BLOCKS: Registry[type["Block"]] = Registry("block")
FFNS: Registry[type["FFN"]] = Registry("ffn")
NORMS: Registry[type[nn.Module]] = Registry("norm")


@dataclass(frozen=True)
class NormConfig:
    """``dim``: features D normalised over; ``eps``: added to the variance (or norm) for stability, > 0."""

    dim: int = 64
    eps: float = 1e-5

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.dim <= 0:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")


def create_norm(name: str, dim: int, **options: Any) -> nn.Module:
    """A registered norm of width ``dim``; ValueError for an unknown name, TypeError for an unknown option."""
    return NORMS.create(name, dim=dim, **options)


@dataclass(frozen=True)
class FFNConfig:
    """Options shared by every FFN.

    Attributes:
        dim: model width D.
        mult: hidden width as a multiple of ``dim`` before the variant's own rule (GLU variants take 2/3 of it to
            keep the parameter count; see each variant's ``hidden``).
        dropout: on the FFN's output, in [0, 1).
        bias: biases in the projections.
        hidden: the hidden width itself, overriding ``mult`` and the variant's rule (None = from ``mult``); an
            extracted MatFormer sub-model uses it to hold exactly the nested width.
    """

    dim: int = 64
    mult: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    hidden: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.dim <= 0:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if not self.mult > 0:
            raise ValueError(f"mult must be > 0, got {self.mult!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.hidden is not None and self.hidden <= 0:
            raise ValueError(f"hidden must be a positive int or None, got {self.hidden!r}")


class FFN(nn.Module):
    """Base class of every position-wise FFN: ``x [..., D] -> [..., D]``, same dtype.

    Subclasses set ``config_class`` and implement ``forward``; ``hidden(config)`` is the width of the hidden layer,
    ``residual_projections`` the parameters (relative names) that write into the residual stream, which the model
    scales by 1/sqrt(2·num_layers) at init (GPT-2), and ``init_weights(num_layers)`` what the paper prescribes
    beyond that generic init.
    """

    config_class: ClassVar[type[FFNConfig]] = FFNConfig
    registry_name: ClassVar[str]
    residual_projections: ClassVar[tuple[str, ...]] = ("fc2.weight",)
    aux_loss: Tensor | None = None

    def __init__(self, config: FFNConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def hidden(cls, config: FFNConfig) -> int:
        """Hidden width: ``config.hidden`` if given, else ``int(mult · dim)``."""
        return config.hidden if config.hidden is not None else max(1, int(config.mult * config.dim))

    def init_weights(self, num_layers: int) -> None:
        """Paper-specific init after the model's generic one; the default does nothing."""


def glu_hidden(config: FFNConfig) -> int:
    """GLU variants' width (Shazeer 2020, Sec. 2: d_ff 3072 -> 2048 to keep the parameter count): 2/3 of
    ``int(mult · dim)``, rounded to a multiple of 8 (at least 8); ``config.hidden`` if given."""
    if config.hidden is not None:
        return config.hidden
    return max(8, int(round(2 * int(config.mult * config.dim) / 3 / 8)) * 8)


@dataclass(frozen=True)
class BlockConfig:
    """Options shared by every block: ``dim`` (D). Variants add their own (DeepNorm's α and β, ...)."""

    dim: int = 64

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.dim <= 0:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")


Mix = Callable[[Tensor], Tensor]
#: a step on the residual stream between the mixer's and the FFN's sublayers that may shorten the sequence
#: (ToMe's token merging, ``models/tome.py``): ``[B, T, D] -> [B, T', D]``
Merge = Callable[[Tensor], Tensor]


class Block(nn.Module):
    """Base class of every block: one residual layer around ``mixer`` with the FFN(s) and norms it builds.

    Args:
        config: the block's frozen config.
        mixer: the layer's token mixer (a ``Mixer``), already built.
        make_ffn: builds one FFN (called once per FFN the block has: twice for macaron).
        make_norm: builds one norm of the model's kind, of width D or of the width given (``make_norm(hidden)``).
        num_layers: depth of the whole stack (DeepNorm's α and β depend on it).

    ``forward(x [B, T, D], key_padding_mask)``, ``prefill(x, state)`` and ``step(x_t [B, D], state)`` all call the
    subclass's ``compose(x, mix)``. ``final_norm`` says whether a stack ending in this block needs the model's final
    norm (False for post-norm wirings, whose output is already normed). A block with ``merges_tokens`` also takes
    ``compose(x, mix, merge)``: ``merge`` (a ``Merge``) is applied to the residual stream after the mixer's sublayer
    and before the FFN's, where ToMe merges tokens (Bolya et al. 2023, Sec. 3); wirings without such a point
    (``parallel``, ``macaron``) leave it False.
    """

    config_class: ClassVar[type[BlockConfig]] = BlockConfig
    registry_name: ClassVar[str]
    final_norm: ClassVar[bool] = True
    merges_tokens: ClassVar[bool] = False

    def __init__(self, config: BlockConfig, *, mixer: nn.Module, make_ffn: Callable[[], FFN],
                 make_norm: Callable[..., nn.Module], num_layers: int) -> None:
        super().__init__()
        self.config = config
        self.num_layers = num_layers

    def compose(self, x: Tensor, mix: Mix) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        return self.compose(x, lambda h: self.mixer(h, key_padding_mask=key_padding_mask))

    def prefill(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """``forward`` of ``x [B, T, D]`` continuing from the mixer's ``state``; returns the new state too."""
        out: list[Any] = []

        def mix(h: Tensor) -> Tensor:
            y, new_state = self.mixer(h, state=state, return_state=True)
            out.append(new_state)
            return y

        return self.compose(x, mix), out[0]

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One token ``x_t [B, D]`` -> (``[B, D]``, the mixer's new state); ``state`` is unchanged."""
        out: list[Any] = []

        def mix(h: Tensor) -> Tensor:
            y, new_state = self.mixer.step(h, state)
            out.append(new_state)
            return y

        return self.compose(x_t, mix), out[0]

    def ffns(self) -> list[tuple[str, FFN]]:
        """``(attribute name, FFN)`` of each FFN of the block."""
        return [(name, m) for name, m in self.named_children() if isinstance(m, FFN)]

    def residual_parameters(self) -> set[str]:
        """Names (relative to the block) of the parameters that write into the residual stream: the mixer's
        ``residual_projections`` and each FFN's."""
        names = {f"mixer.{p}" for p in self.mixer.residual_projections}
        for attr, ffn in self.ffns():
            names |= {f"{attr}.{p}" for p in ffn.residual_projections}
        return names

    def init_weights(self, num_layers: int) -> None:
        """The block's own init after the model's generic one and the mixer's; the default does nothing."""


def value_rows(mixer: nn.Module) -> slice | None:
    """Rows of a fused ``qkv`` projection (``AttentionMixer``: ``[q; k; v]``) that produce the values, or None
    when the mixer has no fused QKV projection. The projection may be any layer with ``out_features`` (an
    ``nn.Linear``, or its factorised replacement from ``lightformer compress``)."""
    qkv = getattr(mixer, "qkv", None)
    cfg = getattr(mixer, "config", None)
    if not isinstance(qkv, nn.Module) or not isinstance(getattr(qkv, "out_features", None), int) \
            or not hasattr(cfg, "kv_heads"):
        return None
    v = cfg.kv_heads * cfg.head_dim
    return slice(qkv.out_features - v, qkv.out_features)


def xavier_normal_gain_(weight: Tensor, gain: float, rows: slice | None = None) -> None:
    """Xavier-normal init (Glorot & Bengio 2010) of ``weight`` (or of its ``rows``), std = gain·sqrt(2/(in+out)),
    with fan-in and fan-out of the rows initialised."""
    target = weight if rows is None else weight[rows]
    fan_out, fan_in = target.shape[0], target.shape[1]
    with torch.no_grad():
        target.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def collect_aux_loss(model: nn.Module) -> Tensor | None:
    """Sum of the ``aux_loss`` set by the modules of ``model`` in its last forward, or None if none set one."""
    losses = [m.aux_loss for m in model.modules() if getattr(m, "aux_loss", None) is not None]
    return torch.stack([l.float() for l in losses]).sum() if losses else None


def collect_aux_stats(model: nn.Module) -> dict[str, float]:
    """``aux_stats`` of every module of ``model`` from its last forward, summed by key (e.g. ``moe_dropped``)."""
    out: dict[str, float] = {}
    for m in model.modules():
        for key, value in (getattr(m, "aux_stats", None) or {}).items():
            out[key] = out.get(key, 0.0) + float(value)
    return out
