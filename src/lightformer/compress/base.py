"""The compression contract: a registered ``Compressor`` per method (``COMPRESSORS``), each with a frozen config.

A compressor changes a trained model in place, layer by layer, over the ``nn.Linear`` layers of the Transformer
blocks (``model.backbone.blocks``: mixers and FFNs). Embeddings, the output head (tied to the embedding in a
language model), classifiers and norms stay float. It returns a JSON-able record of what it did per layer
(``{"backbone.blocks.0.mixer.qkv": {...}}``), which the checkpoint keeps, and from which ``restore`` rebuilds the
same structure in a freshly built model before the weights are loaded.

Which layers a method may touch:

* ``exclude`` (every method's option): shell-style patterns of layer names left as they are
  (``exclude="*.dt_proj"``, or a list of patterns).
* A method that replaces or quantises a layer (``replaces_layers``) needs the model to *call* it. Some modules read
  a linear layer's weight directly instead (Mamba's ``dt_proj`` in float32, LMU's split ``W_h``, mLSTM's gates,
  MatFormer's nested slices, the MoE router), which a replaced layer would silently bypass. ``select_layers`` runs
  the model once on a batch of its task with a hook on every candidate and refuses, naming the layer, its owner and
  the reason, any candidate that was not called; the message says how to exclude it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..registry import Registry

#: the module attributes that hold hooks; a module that replaces another takes them over
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs")


@dataclass(frozen=True)
class CompressConfig:
    """Options every method takes.

    Attributes:
        exclude: shell-style patterns of layer names (``backbone.blocks.0.mixer.qkv``) to leave unchanged; a string
            or a tuple/list of strings.
    """

    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        value = self.exclude
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"exclude must be a pattern or a list of patterns, got {self.exclude!r}")
        object.__setattr__(self, "exclude", tuple(value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able options (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class Compressor:
    """Base class of a compression method. Subclasses set ``config_class`` and implement ``apply`` and
    ``restore`` (and ``finalize`` when a fine-tune must run before the result is fixed).

    Attributes:
        replaces_layers: the method swaps or quantises layers (so every layer it takes must be called, see
            ``select_layers``); pruning only edits weights in place and reads none.
        trainable: the compressed model can be fine-tuned by the trainer.
    """

    config_class: ClassVar[type] = CompressConfig
    registry_name: ClassVar[str]
    replaces_layers: ClassVar[bool] = True
    trainable: ClassVar[bool] = False

    def __init__(self, config: CompressConfig) -> None:
        self.config = config

    def check_available(self) -> None:
        """Raise ``ValueError``/``ImportError`` naming the reason when this method cannot run here (a missing
        package, a CPU without the kernel); called before any work."""

    def prepare(self, model: nn.Module, task: Any, run_config: Any) -> None:
        """Read what ``apply`` needs from the checkpoint's ``task`` (a ``Task``) and ``run_config`` before it runs,
        e.g. gradients of training batches for a Fisher score (``structured_prune``); the default reads nothing."""

    def apply(self, model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Any]:
        """Compress ``layers`` (name -> layer of ``model``) in place; returns the per-layer record."""
        raise NotImplementedError

    def finalize(self, model: nn.Module) -> None:
        """Fix the result after an optional fine-tune (e.g. make pruning masks permanent)."""

    def restore(self, model: nn.Module, record: dict[str, Any]) -> None:
        """Rebuild in a freshly built ``model`` the structure ``apply`` produced (``record`` as it returned it),
        so the compressed checkpoint's weights load into it."""

    def describe(self, record: dict[str, Any]) -> list[str]:
        """Extra lines for the command's report (e.g. sparsity, ranks)."""
        return []


COMPRESSORS: Registry[type[Compressor]] = Registry("compression method")


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The Transformer blocks of any model head (``model.backbone.blocks``) or of a bare ``Transformer``."""
    blocks = getattr(getattr(model, "backbone", model), "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no Transformer blocks (backbone.blocks) to compress")
    return blocks


def candidate_layers(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers inside the blocks, by their name in ``model``, minus the ``exclude`` patterns."""
    blocks = {id(m) for m in blocks_of(model).modules()}
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and id(m) in blocks
            and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)}


def owner_of(model: nn.Module, name: str) -> str:
    """A readable owner of layer ``name``: ``"layer 0's mixer 'mamba'"``, ``"layer 1's FFN 'matformer'"``."""
    parts = name.split(".")
    try:
        i = parts.index("blocks")
        index = int(parts[i + 1])
        block = blocks_of(model)[index]
        part = getattr(block, parts[i + 2])
    except (ValueError, IndexError, AttributeError):
        return "the model"
    kind = {"mixer": "mixer", "ffn": "FFN"}.get(parts[i + 2], parts[i + 2])
    label = getattr(type(part), "registry_name", type(part).__name__)
    return f"layer {index}'s {kind} {label!r}"


@torch.no_grad()
def called_layers(model: nn.Module, layers: dict[str, nn.Module], run: Callable[[nn.Module], Any]) -> set[str]:
    """Names of the ``layers`` whose forward runs when ``run(model)`` is called (a forward hook on each)."""
    called: set[str] = set()
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: called.add(name))
               for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        run(model)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return called


def select_layers(compressor: Compressor, model: nn.Module, run: Callable[[nn.Module], Any]) -> dict[str, nn.Linear]:
    """The layers ``compressor`` takes in ``model``: the blocks' ``nn.Linear`` layers not excluded, every one of
    them called by ``run(model)`` (one forward on a batch of the model's task) when the method replaces layers.

    Raises:
        ValueError: a layer whose weight its owner reads directly (not called; the message names it, its owner and
            the ``exclude`` option that leaves it), or no layer left to compress.
    """
    name = compressor.registry_name
    layers = candidate_layers(model, compressor.config.exclude)
    if compressor.replaces_layers and layers:
        called = called_layers(model, layers, run)
        bypassed = [n for n in layers if n not in called]
        if bypassed:
            shown = "; ".join(f"{n} ({owner_of(model, n)})" for n in bypassed[:6])
            more = f" and {len(bypassed) - 6} more" if len(bypassed) > 6 else ""
            patterns = sorted({"*." + n.rsplit(".", 1)[-1] for n in bypassed})
            raise ValueError(
                f"{name} cannot compress {shown}{more}: the model reads these nn.Linear weights directly instead of "
                f"calling the layer, so a {name} layer in their place would be bypassed. Leave them in float with "
                f"--option exclude={patterns[0]!r}" + (f" (or a list: {patterns})" if len(patterns) > 1 else ""))
    if not layers:
        raise ValueError(f"{name}: no nn.Linear layer left to compress in the blocks of {type(model).__name__}"
                         + (f" (exclude={list(compressor.config.exclude)})" if compressor.config.exclude else ""))
    return layers


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model``; it takes over the old module's hooks (Sub-LN's inner norm, the value
    residual), so the model computes what it did around the layer. Returns the old module."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    for hooks in _HOOK_DICTS:
        if hasattr(old, hooks):
            getattr(new, hooks).update(getattr(old, hooks))
    setattr(parent, attr, new)
    return old


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds: its elements, or for a tensor subclass (torchao's quantised weights) the sum of its
    inner tensors (int8 values and their scales)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s distinct parameters (tied ones counted once), quantised ones at their stored size."""
    return sum(tensor_bytes(p) for p in module.parameters())


def parameter_count(module: nn.Module) -> int:
    """Number of distinct parameter values (a quantised weight counts its logical elements)."""
    return sum(p.numel() for p in module.parameters())
