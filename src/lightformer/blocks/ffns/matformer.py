"""``matformer``: MatFormer's nested FFN (Devvrit et al. 2023, "MatFormer: Nested Transformer for Elastic
Inference", Sec. 3): one GELU MLP ``W2 · gelu(W1 x + b1) + b2`` of hidden width H whose first ``m_g`` hidden neurons
form the sub-FFN of granularity g, ``m_g = max(1, round(g · H))`` for each fraction g of ``granularities`` (default
1/8, 1/4, 1/2, 1: the paper's four nested widths, each half the next). Sub-FFN g uses rows ``:m_g`` of ``fc1`` (and
of its bias) and columns ``:m_g`` of ``fc2``, so every smaller FFN is nested in every larger one.

Training: each training-mode forward runs one granularity, sampled uniformly per step as the paper trains the
nested sub-models (one sub-model's loss per step rather than the sum over all g). The sample is a pure function of
``(seed, train_steps)``: ``train_steps`` is a persistent int64 buffer advanced by each training forward, saved with
the weights, so every layer of a model (same seed, same count) picks the same granularity at the same step, as the
paper's nested sub-models are whole-model widths, and a resumed run continues the exact sequence.

Eval: the full width, unless ``set_granularity(fraction)`` (or ``set_model_granularity(model, fraction)`` for every
layer) fixes another; any fraction in (0, 1] is accepted, the trained ones and, as Mix'n'Match (Sec. 3.3) uses,
widths in between.

Extraction: ``extract_submodel(model, fraction)`` returns a stand-alone copy of a model whose layers use the plain
``mlp`` FFN of the sub-width (``ffn_options={"hidden": m}``) holding the sliced weights; it equals the full model run
at that granularity and saves and loads like any model of its config.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FFN, FFNS, FFNConfig
from .mlp import MLP

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """SplitMix64's output function (Steele, Lea & Flood 2014): a fixed 64-bit mixer, the same on every platform
    and torch version, so the granularity sequence is a property of ``(seed, step)`` alone."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def granularity_index(seed: int, step: int, count: int) -> int:
    """Index in ``[0, count)`` of the granularity trained at ``step`` of a run seeded ``seed`` (uniform)."""
    return _splitmix64(((seed & 0xFFFFFFFF) << 32) ^ (step & _MASK64)) % count


def _check_fraction(fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    return float(fraction)


@dataclass(frozen=True)
class MatFormerConfig(FFNConfig):
    """Options of ``matformer``.

    Attributes:
        granularities: fractions of the hidden width trained, strictly increasing, in (0, 1], ending at 1.0 (the
            full FFN is always one of the nested models). A list is stored as a tuple.
        seed: of the per-step granularity sample.

    Raises:
        ValueError: granularities empty, unsorted, out of range or not ending at 1.0.
    """

    granularities: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        g = self.granularities
        if not isinstance(g, (tuple, list)) or not g or \
                any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in g):
            raise ValueError(f"granularities must be a non-empty list of fractions, got {g!r}")
        g = tuple(float(v) for v in g)
        if any(not 0.0 < v <= 1.0 for v in g) or any(b <= a for a, b in zip(g, g[1:])) or g[-1] != 1.0:
            raise ValueError(f"granularities must be strictly increasing fractions in (0, 1] ending at 1.0, "
                             f"got {self.granularities!r}")
        object.__setattr__(self, "granularities", g)


@FFNS.register("matformer")
class MatFormerFFN(FFN):
    """x ``[..., D]`` -> ``[..., D]`` at one nested width (see the module docstring for which).

    Attributes:
        train_steps: persistent int64 buffer, training forwards so far (the granularity schedule's clock).
        last_width: the hidden width the last forward used (None before any).
    """

    config_class = MatFormerConfig

    def __init__(self, config: MatFormerConfig) -> None:
        super().__init__(config)
        hidden = self.hidden(config)
        self.fc1 = nn.Linear(config.dim, hidden, bias=config.bias)
        self.fc2 = nn.Linear(hidden, config.dim, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.int64))
        self.granularity: float | None = None
        self.last_width: int | None = None

    @property
    def full_width(self) -> int:
        return self.fc1.out_features

    def width(self, fraction: float) -> int:
        """Hidden neurons of the sub-FFN at ``fraction`` of the full width: ``max(1, round(fraction · H))``.

        Raises:
            ValueError: ``fraction`` not in (0, 1]."""
        return max(1, round(_check_fraction(fraction) * self.full_width))

    def set_granularity(self, fraction: float | None) -> None:
        """Run eval-mode forwards at ``fraction`` of the width (None: the full width again). Training forwards
        keep following the schedule.

        Raises:
            ValueError: ``fraction`` not in (0, 1] (or None)."""
        self.granularity = None if fraction is None else _check_fraction(fraction)

    def scheduled_granularity(self, step: int) -> float:
        """The granularity a training forward at ``step`` (the value of ``train_steps``) runs."""
        g = self.config.granularities
        return g[granularity_index(self.config.seed, step, len(g))]

    def forward_width(self, x: Tensor, m: int) -> Tensor:
        """The nested FFN of the first ``m`` hidden neurons on ``x [..., D]``, without dropout."""
        bias1 = None if self.fc1.bias is None else self.fc1.bias[:m]
        h = F.gelu(F.linear(x, self.fc1.weight[:m], bias1))
        return F.linear(h, self.fc2.weight[:, :m], self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            fraction = self.scheduled_granularity(int(self.train_steps))
            with torch.no_grad():
                self.train_steps += 1
        else:
            fraction = 1.0 if self.granularity is None else self.granularity
        m = self.width(fraction)
        self.last_width = m
        return self.drop(self.forward_width(x, m))

    def extract(self, fraction: float) -> MLP:
        """A stand-alone ``mlp`` FFN of width ``width(fraction)`` holding copies of the sliced weights (fc1 rows,
        fc1 bias entries, fc2 columns), on this module's device and dtype."""
        m = self.width(fraction)
        cfg = self.config
        mlp = MLP(FFNConfig(dim=cfg.dim, mult=cfg.mult, dropout=cfg.dropout, bias=cfg.bias, hidden=m))
        mlp.to(device=self.fc1.weight.device, dtype=self.fc1.weight.dtype)
        with torch.no_grad():
            mlp.fc1.weight.copy_(self.fc1.weight[:m])
            mlp.fc2.weight.copy_(self.fc2.weight[:, :m])
            if cfg.bias:
                mlp.fc1.bias.copy_(self.fc1.bias[:m])
                mlp.fc2.bias.copy_(self.fc2.bias)
        mlp.train(self.training)
        return mlp


def matformer_modules(model: nn.Module) -> list[MatFormerFFN]:
    """Every ``MatFormerFFN`` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MatFormerFFN)]


def set_model_granularity(model: nn.Module, fraction: float | None) -> None:
    """``set_granularity(fraction)`` on every MatFormer FFN of ``model``: its eval-mode forwards run that width.

    Raises:
        ValueError: ``model`` has no MatFormer FFN, or ``fraction`` is not in (0, 1] (or None)."""
    modules = matformer_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no matformer FFN")
    for module in modules:
        module.set_granularity(fraction)


def extract_submodel(model: nn.Module, fraction: float) -> nn.Module:
    """A new stand-alone model of ``model``'s class whose FFNs are the MatFormer sub-FFNs at ``fraction``.

    ``model`` must carry its ``ModelConfig`` as ``model.config`` (every model of ``lightformer.models`` does) with
    ``ffn="matformer"`` for its layers. The copy's config is the same with ``ffn="mlp"`` and
    ``ffn_options={"hidden": m}`` (plus ``bias=False`` when the MatFormer had no biases), and each MatFormer FFN is
    replaced by an ``mlp`` holding the sliced weights; everything else is copied unchanged (the copy is in
    ``model``'s training mode). The result equals ``model`` run at ``fraction`` (``set_model_granularity``), has
    ``layers · (H - m) · (2·D + 1)`` fewer parameters (``2·D`` without biases), and a model built from its config
    loads its state dict.

    Raises:
        ValueError: ``fraction`` not in (0, 1]; ``model`` has no ``config`` or its default FFN is not
            ``matformer``; a schedule gives some layer a MatFormer of another width (it would keep it).
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "ffn", None) != "matformer":
        raise ValueError(f"extract_submodel needs a model whose config has ffn='matformer', got "
                         f"{getattr(config, 'ffn', None)!r}")
    _check_fraction(fraction)
    modules = matformer_modules(model)
    widths = {m.width(fraction) for m in modules}
    if len(widths) != 1:
        raise ValueError(f"the MatFormer FFNs of this model have different widths at {fraction} ({sorted(widths)}): "
                         f"one ffn_options table cannot describe them")
    m = widths.pop()
    options: dict[str, Any] = {"hidden": m}
    if not modules[0].config.bias:
        options["bias"] = False
    sub_config = dataclasses.replace(config, ffn="mlp", ffn_options=options)
    left = [i for i, spec in enumerate(sub_config.layer_specs()) if spec.ffn == "matformer"]
    if left:
        raise ValueError(f"layers {left} name matformer in the schedule itself; extract_submodel only rewrites the "
                         f"model's default ffn")
    sub = copy.deepcopy(model)
    for module in list(sub.modules()):
        if getattr(module, "config", None) is not None and type(module.config) is type(config) \
                and module.config == config:
            module.config = sub_config
        for name, child in list(module.named_children()):
            if isinstance(child, MatFormerFFN):
                setattr(module, name, child.extract(fraction))
    return sub
