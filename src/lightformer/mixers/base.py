"""The mixer contract: every token mixer maps ``x: [B, T, D] -> [B, T, D]`` behind this interface.

A mixer is built from a frozen config (``MixerConfig`` subclass) and declares what it can honour in
``Capabilities``; the contract tests, the benchmark grid and ``advise`` read those capabilities. The public entry
points (``forward``, ``init_state``, ``step``) validate their inputs here, once, and call the subclass's
``_forward`` / ``_init_state`` / ``_step`` / ``_forward_state``, so no mixer can forget a check.

Decoding (``capabilities.decode``) is a state machine over immutable ``State`` values (``nn/state.py``):
``init_state`` gives the empty state, ``forward(x, state=s, return_state=True)`` prefills T tokens in one call,
``step`` consumes one token; both return a new state and never modify the one given.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..nn.state import State
from ..registry import Registry

#: Relative position schemes a mixer applies itself (absolute ones are added to the embeddings by the model).
RELATIVE_POSITIONS = ("none", "rope", "alibi", "t5")


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` has the declared type ``hint`` (``int`` excludes ``bool``; ``float`` takes ints;
    unions and ``None`` as written; other annotations are not checked)."""
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_field_types(config: Any) -> None:
    """The one declarative check every mixer config runs first: each field's value has its annotated type.

    Raises:
        ValueError: naming the field, its declared type and the value given (``num_heads=True``,
            ``split_kv_size=2.5`` and ``window=True`` are all refused here, before any hand-written check).
    """
    hints = _field_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = hints.get(f.name, Any)
        if not _accepts(hint, value):
            name = getattr(hint, "__name__", None) or str(hint)
            raise ValueError(f"{f.name} must be {name}, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class MixerConfig:
    """Options shared by every mixer.

    Attributes:
        dim: model width D.
        num_heads: number of heads H; ``dim`` must be divisible by it (unless the config sets ``head_dim`` itself:
            ``QKVConfig.head_dim``).
        causal: position t sees only positions <= t. Decided at construction.
        dropout: dropout probability on the mixer's output (after the output projection), in [0, 1).
        position: relative position scheme the mixer applies itself: ``"none" | "rope" | "alibi" | "t5"``. The model
            sets it from ``ModelConfig.position``; a mixer that cannot apply it raises ``ValueError`` at construction.
    """

    dim: int = 64
    num_heads: int = 4
    causal: bool = False
    dropout: float = 0.0
    position: str = "none"

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.dim <= 0:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if self.num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {self.num_heads!r}")
        if self.dim % self.num_heads and not self._explicit_head_dim():
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.position not in RELATIVE_POSITIONS:
            raise ValueError(f"position must be one of {RELATIVE_POSITIONS}, got {self.position!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def _explicit_head_dim(self) -> bool:
        """Whether the config sets its head width itself (``QKVConfig.head_dim``), so that ``num_heads`` need
        not divide ``dim``."""
        return False


@dataclass(frozen=True)
class Capabilities:
    """What a mixer promises; the contract tests hold it to every ``True`` here.

    Attributes:
        exact: equals softmax attention up to floating-point error.
        causal: can be built with ``causal=True``.
        padding_mask: honours ``key_padding_mask``.
        decode: implements ``init_state``/``step`` (recurrent or cached decoding) and ``forward`` with ``state``.
        prefill: ``forward(..., state=, return_state=True)`` runs in one parallel pass (else it steps token by
            token).
        complexity: time complexity of ``forward`` in T (sequence length), d, and the mixer's own sizes, e.g.
            ``"T²·d"``, for people to read; programs read ``time_exponent`` and ``log_exponent``.
        time_exponent: the power of T in the asymptotically dominant term of ``forward``'s time (1 = linear in
            T, 2 = quadratic; ``hilo``'s T²/window and ``reformer_lsh``'s T²/bucket_size terms make them 2).
        log_exponent: the power of log T in that term (``probsparse``: T·log²T -> 2).
        max_len: longest sequence accepted (``None`` = unbounded); may depend on the config, see ``Mixer.max_len``.
        positions: relative position schemes accepted (always includes ``"none"``).
        non_causal: can be built with ``causal=False``.
        compile: ``None`` when ``torch.compile(mixer)`` (graph breaks allowed) runs and matches the eager forward
            and gradients; otherwise why it cannot, naming the failing op and the torch version it was seen with.
            ``tests/mixers/test_compile.py`` checks both promises (TorchDynamo with its eager backend for every
            mixer, AOTAutograd for the refusals); ``lightformer bench --compile`` runs inductor and skips a mixer
            with a reason (status ``unsupported``), and so does ``train --compile`` (a ``ValueError``).
    """

    exact: bool
    causal: bool
    padding_mask: bool
    decode: bool
    complexity: str
    max_len: int | None = None
    positions: frozenset[str] = field(default_factory=lambda: frozenset({"none"}))
    non_causal: bool = True
    prefill: bool = False
    time_exponent: int = field(kw_only=True)
    log_exponent: int = field(default=0, kw_only=True)
    compile: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.compile is not None and not self.compile.strip():
            raise ValueError("compile must be None (the mixer compiles) or a non-empty reason why it cannot")
        if self.time_exponent not in (1, 2):
            raise ValueError(f"time_exponent must be 1 or 2, got {self.time_exponent!r}")
        if self.log_exponent < 0:
            raise ValueError(f"log_exponent must be a non-negative int, got {self.log_exponent!r}")

    @property
    def linear_in_length(self) -> bool:
        """True when the time grows as T (times powers of log T at most): ``time_exponent == 1``."""
        return self.time_exponent == 1

    def time_scale(self, seq_len: int, measured_len: int) -> float:
        """The factor by which the time at ``measured_len`` grows to ``seq_len``: (T/T_m)^e · (log T/log T_m)^l."""
        scale = (seq_len / measured_len) ** self.time_exponent
        if self.log_exponent:
            scale *= (math.log(max(seq_len, 2)) / math.log(max(measured_len, 2))) ** self.log_exponent
        return scale


MIXERS: Registry[type["Mixer"]] = Registry("mixer")


def plain_linear(module: nn.Module, *, allow_hooks: bool = False) -> bool:
    """Whether calling ``module`` is exactly ``F.linear(x, module.weight, module.bias)``: an ``nn.Linear`` itself
    (not a subclass), with a plain float ``nn.Parameter`` weight (not a quantised tensor subclass) and no forward
    hooks (a pruning mask, Sub-LN's inner norm, the value residual).

    A mixer may read such a layer's weight for an algebraic shortcut (Linformer's (E X) W_kᵀ); for any other
    layer (quantised, factorised by ``compress``, hooked) it must call the module, or the replacement is bypassed.
    ``allow_hooks=True`` is for a caller that has already called the layer in this forward (so a pre-hook such as
    a pruning mask has set ``weight``) and reads only rows no forward hook changes (the value residual changes the
    value rows of a fused ``qkv``).
    """
    return (type(module) is nn.Linear and type(module.weight) is nn.Parameter
            and (allow_hooks or not (module._forward_hooks or module._forward_pre_hooks)))


class Mixer(nn.Module):
    """Base class of every token mixer. Subclasses set ``config_class`` and ``capabilities`` and implement
    ``_forward`` (and ``_init_state``/``_step`` when ``capabilities.decode``)."""

    config_class: ClassVar[type[MixerConfig]] = MixerConfig
    capabilities: ClassVar[Capabilities]
    registry_name: ClassVar[str] = ""
    #: small options that make the mixer meaningful at T <= 64 (used by the contract suite and the bench gate)
    example_options: ClassVar[dict[str, Any]] = {}
    #: names of this mixer's parameters that write into the residual stream; a model scales their initial
    #: std by 1/sqrt(2·num_layers) (GPT-2, Radford et al. 2019, Sec. 2.3)
    residual_projections: ClassVar[tuple[str, ...]] = ("out.weight",)
    #: shell-style patterns over this mixer's parameter names that the optimizer must not weight-decay
    #: (e.g. ``"A_log"``, ``"D"``, ``"dt_proj.bias"``); rank-1 parameters are never decayed anyway
    no_weight_decay: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        caps = self.capabilities
        name = self.registry_name or type(self).__name__
        if config.causal and not caps.causal:
            raise ValueError(f"causal=True: mixer {name!r} cannot be causal")
        if not config.causal and not caps.non_causal:
            raise ValueError(f"causal=False: mixer {name!r} is causal-only")
        if config.position not in caps.positions:
            raise ValueError(
                f"position={config.position!r}: mixer {name!r} accepts only {sorted(caps.positions)}; "
                "use an absolute scheme (learned | sinusoidal) on the model instead"
            )
        self.config = config
        self.output_dropout = nn.Dropout(config.dropout)

    # -- sizes -----------------------------------------------------------------------------------------------
    @property
    def max_len(self) -> int | None:
        """Longest T accepted by ``forward``; subclasses with a config-dependent limit override this."""
        return self.capabilities.max_len

    def flops(self, seq_len: int, batch: int = 1) -> float | None:
        """FLOPs of one ``forward`` over ``[batch, seq_len, dim]`` (a multiply-add counts 2), projections included,
        counted from this mixer's own algorithm (state-space and recurrent mixers override this). ``None``, the
        default, lets the bench count the attention family the mixer's options name (``bench/flops.py``)."""
        return None

    # -- public entry points (validated) ---------------------------------------------------------------------
    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None, state: State | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, State]:
        """Mix tokens; with ``state``/``return_state``, continue from a decoding state and hand one on (prefill).

        Args:
            x: ``[B, T, D]`` floating tensor.
            key_padding_mask: optional ``[B, T]`` bool, True = real token. Outputs at padded positions are
                unspecified (finite); outputs at real positions equal those of the unpadded sequence.
            state: the state after earlier tokens (from ``init_state``, ``step`` or an earlier ``forward``); the
                T tokens of ``x`` follow them. ``None`` with ``return_state`` = start from ``init_state``.
            return_state: also return the state after the last token of ``x``, so that ``step`` (or another
                ``forward``) continues from it. ``state`` is never modified.

        Returns:
            ``y [B, T, D]`` with the dtype of ``x``, or ``(y, new_state)`` when ``return_state``. With a state, y
            equals rows ``state.length ..`` of the causal forward of the whole sequence. Mixers with
            ``capabilities.prefill`` compute it in one parallel pass; the others step through the T tokens.

        Raises:
            ValueError: wrong rank/width of ``x``, a mask of wrong shape or dtype, a mask on a mixer without
                ``padding_mask`` capability, T above ``max_len``, a state or ``return_state`` on a mixer that
                cannot decode (or is not causal), or a state together with ``key_padding_mask``.
            TypeError: a ``state`` that is not this mixer's state type.
        """
        self._check_x(x)
        if key_padding_mask is not None:
            self._check_mask(x, key_padding_mask)
        if state is None and not return_state:
            return self.output_dropout(self._forward(x, key_padding_mask))
        self._check_decodable("state/return_state")
        if key_padding_mask is not None:
            raise ValueError("key_padding_mask cannot be combined with state/return_state: a padded token would "
                             "enter the state (prefill each prompt unpadded, or left-align them)")
        if state is None:
            state = self._init_state(x.shape[0], x.device, x.dtype)
        elif not isinstance(state, State):
            raise TypeError(f"state must be a State from init_state/step/forward, got {type(state).__name__}")
        y, new_state = self._forward_state(x, state)
        y = self.output_dropout(y)
        return (y, new_state) if return_state else y

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Any:
        """Empty decoding state for ``batch_size`` sequences. Raises ``NotImplementedError`` without decode."""
        self._check_decodable("init_state")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return self._init_state(batch_size, torch.device(device) if device is not None else torch.device("cpu"),
                                dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """Decode one token: ``x_t: [B, D] -> ([B, D], new_state)``; equals row ``state.length`` of the causal
        ``forward``. ``state`` is left unchanged (a caller may step from it again)."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.config.dim:
            raise ValueError(f"x_t must be [B, D={self.config.dim}], got shape {tuple(x_t.shape)}")
        y, state = self._step(x_t, state)
        return self.output_dropout(y), state

    def oracle(self, x: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        """The same mixer, same parameters, computed through its family's ``ops/<family>/naive.py`` oracle (the
        paper's equations written for clarity, O(T²) allowed). Run it in float64 for a reference. Output dropout is
        not applied. The contract suite and the benchmark's correctness gate compare ``forward`` against this."""
        self._check_x(x)
        if key_padding_mask is not None:
            self._check_mask(x, key_padding_mask)
        return self._oracle(x, key_padding_mask)

    def init_weights(self, num_layers: int) -> None:
        """Called by the model after its generic initialisation of every layer (``nn.Linear``/``nn.Embedding``
        weights N(0, 0.02), zero biases, ``residual_projections`` scaled by 1/sqrt(2·num_layers)): a mixer whose
        paper prescribes another init for some parameters (Mamba's dt bias and ``A_log``, decay rates) sets them
        here, so the model cannot overwrite them. The default keeps the generic init."""

    # -- to implement -------------------------------------------------------------------------------------
    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        raise NotImplementedError(f"mixer {self.registry_name!r} has no oracle")

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """``forward`` from ``state``, returning the new state (no dropout). This default steps through the tokens
        (O(T) sequential steps); mixers with a parallel form override it and set ``capabilities.prefill``."""
        ys = []
        for t in range(x.shape[1]):
            y, state = self._step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, dim=1), state

    # -- validation ---------------------------------------------------------------------------------------------
    def _check_decodable(self, what: str) -> None:
        if not self.capabilities.decode:
            raise NotImplementedError(f"{what}: mixer {self.registry_name!r} has no decode path "
                                      "(capabilities.decode=False)")
        if not self.config.causal:
            raise ValueError(f"{what}: causal=False, decoding needs a causal mixer")

    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"x must be [B, T, D] (rank 3), got rank {x.dim()} with shape {tuple(x.shape)}")
        if x.shape[-1] != self.config.dim:
            raise ValueError(f"x has D={x.shape[-1]} but the mixer was built with dim={self.config.dim}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floating point, got {x.dtype}")
        if x.shape[1] == 0:
            raise ValueError("x has T=0 tokens")
        limit = self.max_len
        if limit is not None and x.shape[1] > limit:
            raise ValueError(f"x has T={x.shape[1]} tokens, above this mixer's max_len={limit}")

    def _check_mask(self, x: Tensor, mask: Tensor) -> None:
        if not self.capabilities.padding_mask:
            raise ValueError(f"key_padding_mask: mixer {self.registry_name!r} does not support padding masks")
        if mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool (True = real token), got {mask.dtype}")
        if mask.shape != x.shape[:2]:
            raise ValueError(f"key_padding_mask must be [B, T]={tuple(x.shape[:2])}, got {tuple(mask.shape)}")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self.config).items())
