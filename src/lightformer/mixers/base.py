"""The mixer contract: every token mixer maps ``x: [B, T, D] -> [B, T, D]`` behind this interface.

A mixer is built from a frozen config (``MixerConfig`` subclass) and declares what it can honour in
``Capabilities``; the contract tests, the benchmark grid and ``advise`` read those capabilities. The public entry
points (``forward``, ``init_state``, ``step``) validate their inputs here, once, and call the subclass's
``_forward`` / ``_init_state`` / ``_step``, so no mixer can forget a check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import Registry

#: Relative position schemes a mixer applies itself (absolute ones are added to the embeddings by the model).
RELATIVE_POSITIONS = ("none", "rope", "alibi")


@dataclass(frozen=True)
class MixerConfig:
    """Options shared by every mixer.

    Attributes:
        dim: model width D.
        num_heads: number of heads H; ``dim`` must be divisible by it.
        causal: position t sees only positions <= t. Decided at construction.
        dropout: dropout probability on the mixer's output (after the output projection), in [0, 1).
        position: relative position scheme the mixer applies itself: ``"none" | "rope" | "alibi"``. The model sets it
            from ``ModelConfig.position``; a mixer that cannot apply it raises ``ValueError`` at construction.
    """

    dim: int = 64
    num_heads: int = 4
    causal: bool = False
    dropout: float = 0.0
    position: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if not isinstance(self.num_heads, int) or self.num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {self.num_heads!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.position not in RELATIVE_POSITIONS:
            raise ValueError(f"position must be one of {RELATIVE_POSITIONS}, got {self.position!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class Capabilities:
    """What a mixer promises; the contract tests hold it to every ``True`` here.

    Attributes:
        exact: equals softmax attention up to floating-point error.
        causal: can be built with ``causal=True``.
        padding_mask: honours ``key_padding_mask``.
        decode: implements ``init_state``/``step`` (recurrent or cached decoding).
        complexity: time complexity of ``forward`` in T (sequence length), d, and the mixer's own sizes, e.g. ``"T²·d"``.
        max_len: longest sequence accepted (``None`` = unbounded); may depend on the config, see ``Mixer.max_len``.
        positions: relative position schemes accepted (always includes ``"none"``).
        non_causal: can be built with ``causal=False``.
    """

    exact: bool
    causal: bool
    padding_mask: bool
    decode: bool
    complexity: str
    max_len: int | None = None
    positions: frozenset[str] = field(default_factory=lambda: frozenset({"none"}))
    non_causal: bool = True

    @property
    def linear_in_length(self) -> bool:
        """True when the declared complexity has no T² (or T·T) term."""
        c = self.complexity.replace(" ", "")
        return "T²" not in c and "T^2" not in c and "T·T" not in c


MIXERS: Registry[type["Mixer"]] = Registry("mixer")


class Mixer(nn.Module):
    """Base class of every token mixer. Subclasses set ``config_class`` and ``capabilities`` and implement
    ``_forward`` (and ``_init_state``/``_step`` when ``capabilities.decode``)."""

    config_class: ClassVar[type[MixerConfig]] = MixerConfig
    capabilities: ClassVar[Capabilities]
    registry_name: ClassVar[str] = ""
    #: small options that make the mixer meaningful at T <= 64 (used by the contract suite and the bench gate)
    example_options: ClassVar[dict[str, Any]] = {}

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

    # -- public entry points (validated) ---------------------------------------------------------------------
    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None) -> Tensor:
        """Mix tokens.

        Args:
            x: ``[B, T, D]`` floating tensor.
            key_padding_mask: optional ``[B, T]`` bool, True = real token. Outputs at padded positions are
                unspecified (finite); outputs at real positions equal those of the unpadded sequence.

        Returns:
            ``[B, T, D]`` with the dtype of ``x``.

        Raises:
            ValueError: wrong rank/width of ``x``, a mask of wrong shape or dtype, a mask on a mixer without
                ``padding_mask`` capability, or T above ``max_len``.
        """
        self._check_x(x)
        if key_padding_mask is not None:
            self._check_mask(x, key_padding_mask)
        return self.output_dropout(self._forward(x, key_padding_mask))

    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Any:
        """Empty decoding state for ``batch_size`` sequences. Raises ``NotImplementedError`` without decode."""
        if not self.capabilities.decode:
            raise NotImplementedError(f"mixer {self.registry_name!r} has no decode path (capabilities.decode=False)")
        if not self.config.causal:
            raise ValueError("causal=False: decoding needs a causal mixer")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return self._init_state(batch_size, torch.device(device) if device is not None else torch.device("cpu"),
                                dtype)

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Decode one token: ``x_t: [B, D] -> ([B, D], new_state)``; equals row t of the causal ``forward``."""
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

    # -- to implement -------------------------------------------------------------------------------------
    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        raise NotImplementedError(f"mixer {self.registry_name!r} has no oracle")

    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def _step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    # -- validation ---------------------------------------------------------------------------------------------
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
