"""``ModelConfig``: every choice of a Transformer in one frozen, hashable, serialisable dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..nn.positions import SCHEMES
from .schedule import FFN_ALIASES, resolve_schedule
from .spec import LayerSpec, Options

_OPTION_TABLES = ("mixer_options", "block_options", "ffn_options", "norm_options")
#: values of ``ModelConfig.linear``
LINEARS = ("linear", "bitlinear")


@dataclass(frozen=True)
class ModelConfig:
    """A Transformer: embeddings, ``num_layers`` blocks, a final norm, each layer a registered block around a
    registered mixer and FFN.

    Attributes:
        vocab_size: token vocabulary size.
        dim: width D; num_layers: blocks; num_heads: heads of the mixers.
        mixer: the registered mixer of every layer the schedule does not change (``lightformer list``);
            mixer_options: its options (not dim, num_heads, causal, dropout or position, which come from this
            config).
        block: registered block (``pre_norm`` default; ``post_norm``, ``deepnorm``, ``sub_ln``, ``sandwich``,
            ``parallel``, ``macaron``); block_options: its options (e.g. DeepNorm's ``alpha``).
        ffn: registered FFN (``mlp`` GELU default; ``swiglu``, ``geglu``, ``reglu``, ``bilinear``, ``polyrelu``,
            ``polynorm``, ``moe``, ``matformer``; ``gelu`` is read as ``mlp``, its name in older checkpoints);
            ffn_options: its options; ffn_mult: hidden width as a multiple of ``dim`` before the FFN's own rule
            (GLU variants take 2/3 of it, rounded to a multiple of 8).
        norm: registered norm (``layernorm``, ``rmsnorm``, ``scalenorm``); norm_options: its options.
        schedule: per-layer choices in the syntax of ``models/schedule.py``, e.g. ``"sliding_window; softmax@0,6"``
            (exact attention at layers 0 and 6), ``"(mamba2 mamba2 mamba2 softmax)*"`` (an interleave), or a preset
            name (``masformer``, ``mamba_hybrid``). Empty: every layer is the fields above.
        position: ``"learned" | "sinusoidal"`` (added to embeddings), ``"rope" | "alibi" | "t5"`` (applied by the
            mixer) or ``"none"``.
        max_len: longest sequence for absolute positions (and the generation window).
        dropout: on embeddings, mixer output and FFN output.
        tie_weights: share the token embedding with the LM head (Press & Wolf 2017).
        causal: causal mixers (language model) or bidirectional (classifier).
        value_residual: ResFormer's value residual (Zhou et al. 2024, "Value Residual Learning"): every layer after
            the first attends over ½·V_n + ½·V_1, its own values mixed with the first layer's. Needs mixers with a
            fused QKV projection (the attention mixers).
        depth_weighted_average: DenseFormer (Pagliardini et al. 2024, Eq. 2): after block i the stream is a learned
            weighted average of the embeddings and every block output so far, initialised to the identity.
        linear: the linear layers inside the blocks (the mixers' and FFNs' projections): ``"linear"``
            (``nn.Linear``) or ``"bitlinear"`` (BitLinear b1.58, ``nn/bitlinear.py``: ternary weights and 8-bit
            activations trained from scratch; Ma et al. 2024). Embeddings, output head and classifier stay float.
            A layer that its owner reads instead of calling it is refused by name (``models/transformer.py``).

    Option tables are stored as read-only ``Options`` (dicts given are frozen), so the config is hashable and cannot
    change after construction.

    Raises:
        ValueError: a non-positive size, an unknown registry name, a malformed schedule, mixer options that set a
            model-level field, or a feature the chosen mixers cannot carry.
        TypeError: an unknown option of a mixer, block, FFN or norm (the message names it).
    """

    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mixer: str = "softmax"
    mixer_options: Mapping[str, Any] = field(default_factory=Options)
    block: str = "pre_norm"
    block_options: Mapping[str, Any] = field(default_factory=Options)
    ffn: str = "mlp"
    ffn_options: Mapping[str, Any] = field(default_factory=Options)
    ffn_mult: float = 4.0
    norm: str = "layernorm"
    norm_options: Mapping[str, Any] = field(default_factory=Options)
    schedule: str = ""
    position: str = "learned"
    max_len: int = 256
    dropout: float = 0.0
    tie_weights: bool = True
    causal: bool = True
    value_residual: bool = False
    depth_weighted_average: bool = False
    linear: str = "linear"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in _OPTION_TABLES:
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must be a table of options, got {value!r}")
            object.__setattr__(self, name, Options(value))
        object.__setattr__(self, "ffn", FFN_ALIASES.get(self.ffn, self.ffn))
        if self.position not in SCHEMES:
            raise ValueError(f"position must be one of {SCHEMES}, got {self.position!r}")
        if not isinstance(self.ffn_mult, (int, float)) or isinstance(self.ffn_mult, bool) or self.ffn_mult <= 0:
            raise ValueError(f"ffn_mult must be positive, got {self.ffn_mult!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.schedule, str):
            raise ValueError(f"schedule must be a string, got {self.schedule!r}")
        for name in ("tie_weights", "causal", "value_residual", "depth_weighted_average"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.linear not in LINEARS:
            raise ValueError(f"linear must be one of {LINEARS}, got {self.linear!r}")
        for spec in self.layer_specs():
            _check_layer(spec, self)

    @property
    def default_layer(self) -> LayerSpec:
        """The layer every position gets unless the schedule says otherwise."""
        return LayerSpec(mixer=self.mixer, mixer_options=self.mixer_options, block=self.block,
                         block_options=self.block_options, ffn=self.ffn, ffn_options=self.ffn_options,
                         ffn_mult=self.ffn_mult, norm=self.norm, norm_options=self.norm_options)

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        """One resolved ``LayerSpec`` per layer (the schedule applied to ``default_layer``)."""
        return resolve_schedule(self.schedule, self.default_layer, self.num_layers)

    @property
    def mixers(self) -> tuple[str, ...]:
        """The mixer of each layer."""
        return tuple(spec.mixer for spec in self.layer_specs())

    @property
    def architecture(self) -> str:
        """A name for the whole stack, as reports show it: the schedule (or its preset name) when there is one,
        else the mixer."""
        return self.schedule.strip() or self.mixer

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the default layer's FFN."""
        from ..blocks import FFNS

        cfg = FFNS.make_config(self.ffn, dim=self.dim, mult=float(self.ffn_mult), **self.ffn_options)
        return FFNS.get(self.ffn).hidden(cfg)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-ready dict (option tables as dicts)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Options) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of ``to_dict``; also reads configs saved before blocks and schedules existed (flat ``mixer``,
        ``mixer_options``, ``ffn`` = ``gelu`` | ``swiglu``, ``ffn_mult``, ``norm``): every missing field takes its
        default, which is the block those checkpoints were trained with.

        Raises:
            TypeError: an unknown key (the message lists the valid ones)."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise TypeError(f"unknown model option(s) {unknown}; valid options: {sorted(valid)}")
        return cls(**data)


def _check_layer(spec: LayerSpec, config: ModelConfig) -> None:
    from ..blocks import BLOCKS, FFNS, NORMS
    from ..mixers import MIXERS

    if spec.mixer not in MIXERS:
        MIXERS.get(spec.mixer)  # raises, listing the registered mixers
    reserved = {"dim", "num_heads", "causal", "dropout", "position"} & set(spec.mixer_options)
    if reserved:
        raise ValueError(f"mixer_options may not set {sorted(reserved)}: set them on the model config")
    reserved = {"dim", "mult", "dropout"} & set(spec.ffn_options)
    if reserved:
        raise ValueError(f"ffn_options may not set {sorted(reserved)}: set dim, ffn_mult and dropout on the model")
    if "dim" in spec.block_options or "dim" in spec.norm_options:
        raise ValueError("block_options and norm_options may not set dim: set it on the model config")
    from ..nn.positions import RELATIVE

    relative = config.position if config.position in RELATIVE else "none"
    MIXERS.make_config(spec.mixer, dim=config.dim, num_heads=config.num_heads, causal=config.causal,
                       dropout=config.dropout, position=relative, **spec.mixer_options)
    BLOCKS.make_config(spec.block, dim=config.dim, **spec.block_options)
    FFNS.make_config(spec.ffn, dim=config.dim, mult=float(spec.ffn_mult), **spec.ffn_options)
    NORMS.make_config(spec.norm, dim=config.dim, **spec.norm_options)
