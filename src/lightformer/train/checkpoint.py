"""Checkpoints: model weights and optimizer moments as safetensors, trainer state as JSON, written atomically.

Layout of ``<out_dir>/checkpoint/``: ``model.safetensors``, ``optimizer.safetensors`` (AdamW moments keyed
``<param index>.<name>``), ``trainer.json`` (run config, step, elapsed seconds, tokens, optimizer scalars and
hyper-parameters, torch's RNG states (CPU, and CUDA for a CUDA run; one per rank of a multi-process run), history,
task and its options, the tokenizer of an ``lm`` run). A new checkpoint is written to ``checkpoint.tmp/`` and
swapped in with renames, so a crash leaves either the old or the new one (``checkpoint.old/`` is used if the swap
was cut).

A compressed checkpoint (``lightformer compress``) has the same layout without ``optimizer.safetensors``; its
``trainer.json`` adds ``compression`` (the method, its options and what it changed), from which ``load_trained``
rebuilds the compressed layers before loading the weights. Weights held as tensor subclasses (torchao's quantised
tensors) are stored as their plain inner tensors, ``<key>.<inner name>`` (e.g. ``.qdata``, ``.scale``), listed in
``trainer.json``'s ``packed``, and rebuilt on load around the model's own (rebuilt) tensors.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

NAME = "checkpoint"


def _encode_bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _decode_bytes(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state(device: torch.device | str = "cpu") -> dict[str, str]:
    """torch's RNG states as JSON text: the CPU generator's (``"torch"``) and, when ``device`` is a CUDA device,
    that device's (``"cuda"``). Batches are drawn by step (``Trainer.train_batch``), so these are what dropout
    draws from."""
    device = torch.device(device)
    state = {"torch": _encode_bytes(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda"] = _encode_bytes(torch.cuda.get_rng_state(device))
    return state


def set_rng_state(state: dict[str, str], device: torch.device | str = "cpu") -> None:
    """Restore what ``rng_state`` saved: the CPU generator, and the CUDA one on ``device`` when both the checkpoint
    and ``device`` have one (a CUDA run resumed on CPU keeps only the CPU state, and vice versa)."""
    device = torch.device(device)
    torch.set_rng_state(_decode_bytes(state["torch"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(_decode_bytes(state["cuda"]), device)


def _fsync(path: pathlib.Path) -> None:
    """Flush a file (or a directory's entries) to disk, so a renamed checkpoint survives a power cut, not only a
    killed process."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able scalars."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = float(value)
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = torch.tensor(value)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def unpack_subclasses(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Replace every tensor subclass (``__tensor_flatten__`` protocol, e.g. torchao's ``Int8Tensor``) by its plain
    inner tensors under ``<key>.<inner name>``; returns the plain tensors and ``{key: [inner names]}``.

    Raises:
        ValueError: a nested subclass, or an inner name that collides with another key."""
    plain: dict[str, torch.Tensor] = {}
    packed: dict[str, list[str]] = {}
    for key, value in state_dict.items():
        if not is_traceable_wrapper_subclass(value):
            plain[key] = value
            continue
        names, _ = value.__tensor_flatten__()
        packed[key] = list(names)
        for name in names:
            inner = getattr(value, name)
            if is_traceable_wrapper_subclass(inner):
                raise ValueError(f"{key}: the inner tensor {name!r} of {type(value).__name__} is itself a subclass")
            plain[f"{key}.{name}"] = inner
    collisions = [k for k in packed for n in packed[k] if f"{k}.{n}" in state_dict]
    if collisions:
        raise ValueError(f"packed tensor names collide with state-dict keys: {collisions}")
    return plain, packed


def repack_subclasses(weights: dict[str, torch.Tensor], packed: dict[str, list[str]],
                      templates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``unpack_subclasses``: rebuild each packed key's subclass from its inner tensors in ``weights``
    and the metadata of ``templates[key]`` (the model's own tensor of that key, built by the same method).

    Raises:
        ValueError: the model's tensor is not a subclass, or has other inner tensors than the checkpoint's."""
    out = dict(weights)
    for key, names in packed.items():
        template = templates.get(key)
        if template is None or not is_traceable_wrapper_subclass(template):
            raise ValueError(f"the checkpoint stores {key} as a packed tensor ({', '.join(names)}) but the model "
                             f"holds {'nothing' if template is None else 'a plain tensor'} there (was it rebuilt "
                             "with the recorded compression?)")
        model_names, context = template.__tensor_flatten__()
        if list(model_names) != names:
            raise ValueError(f"{key}: the checkpoint packs {names}, the model's {type(template).__name__} holds "
                             f"{list(model_names)}")
        inner = {name: out.pop(f"{key}.{name}") for name in names}
        out[key] = type(template).__tensor_unflatten__(inner, context, template.size(), template.stride())
    return out


def _storage_key(t: torch.Tensor) -> tuple | None:
    """Tensors with equal keys are the same tensor (tied weights); None for empty tensors (address 0, not shared)."""
    if t.numel() == 0:
        return None
    return t.data_ptr(), t.dtype, tuple(t.shape), t.stride()


def save(out_dir: str | pathlib.Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
         trainer_state: dict[str, Any]) -> pathlib.Path:
    """Write a checkpoint atomically; returns its folder. ``optimizer=None`` (a compressed model) writes no
    optimizer state, so the checkpoint can be evaluated and sampled but not resumed. ``trainer_state["rng"]``
    (``rng_state``, or the trainer's per-rank states) is stored as given; without it, this process's CPU RNG.

    Atomic: the files are written and flushed in ``checkpoint.tmp/``, then renamed over ``checkpoint/``; a process
    killed at any point leaves a complete ``checkpoint/`` or ``checkpoint.old/`` (which ``locate`` falls back to).
    In multi-process training only rank 0 calls this (``Trainer.save``)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp, old = out_dir / NAME, out_dir / f"{NAME}.tmp", out_dir / f"{NAME}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # tensor subclasses report data_ptr() 0 (and safetensors takes plain tensors only): store their inner tensors
    weights, packed = unpack_subclasses({k: v.detach() for k, v in model.state_dict().items()})
    weights = {k: v.contiguous() for k, v in weights.items()}
    # tied weights appear under two names; safetensors refuses shared storage, so store each tensor once
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for key in list(weights):
        ident = _storage_key(weights[key])
        if ident is not None and ident in seen:
            aliases[key] = seen[ident]
            del weights[key]
        elif ident is not None:
            seen[ident] = key
    save_file(weights, str(tmp / "model.safetensors"))
    _fsync(tmp / "model.safetensors")
    extra: dict[str, Any] = {"packed": packed} if packed else {}
    if optimizer is not None:
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        _fsync(tmp / "optimizer.safetensors")
        extra["optimizer"] = opt_meta
    # batches are drawn by step (Trainer.train_batch), so only torch's RNG (dropout) needs saving
    state = dict(trainer_state, **extra, aliases=aliases, rng=trainer_state.get("rng") or rng_state())
    with open(tmp / "trainer.json", "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def locate(path: str | pathlib.Path) -> pathlib.Path:
    """The checkpoint folder for ``path`` (an out_dir or the checkpoint folder itself). FileNotFoundError if none."""
    path = pathlib.Path(path)
    for candidate in (path, path / NAME, path / f"{NAME}.old"):
        if (candidate / "trainer.json").is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint under {str(path)!r} (expected {NAME}/trainer.json)")


def read_state(path: str | pathlib.Path) -> dict[str, Any]:
    with open(locate(path) / "trainer.json") as f:
        return json.load(f)


def load_model_weights(path: str | pathlib.Path, model: nn.Module) -> None:
    """Load a checkpoint's weights into ``model`` (which must already have the checkpoint's structure: for a
    compressed checkpoint, the layers ``compress.restore_structure`` rebuilds)."""
    folder = locate(path)
    state = read_state(folder)
    weights = load_file(str(folder / "model.safetensors"))
    for alias, source in state.get("aliases", {}).items():
        weights[alias] = weights[source]
    if state.get("packed"):
        weights = repack_subclasses(weights, state["packed"], model.state_dict())
    model.load_state_dict(weights)


def restore(path: str | pathlib.Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load weights, optimizer and RNG state (the CPU generator's, and ``device``'s when it is CUDA and the
    checkpoint has one); returns the trainer state dict.

    Raises:
        ValueError: a compressed checkpoint (no optimizer state; it is evaluated and sampled, not resumed)."""
    folder = locate(path)
    state = read_state(folder)
    if "compression" in state or "optimizer" not in state:
        method = state.get("compression", {}).get("method", "?")
        raise ValueError(f"checkpoint {str(folder)!r} was compressed ({method}) and holds no optimizer state: it "
                         "cannot be resumed; evaluate or sample it, or compress the original with a fine-tune")
    load_model_weights(folder, model)
    load_optimizer(optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
    set_rng_state(state["rng"], device)
    return state


def load_trained(path: str | pathlib.Path):
    """Rebuild a trained model of any task (eval mode) from a checkpoint, without loading its data.

    A compressed checkpoint (``trainer_state["compression"]``) gets its compressed layers (quantised, factorised)
    rebuilt from the recorded method before its weights are loaded.

    Returns:
        ``(model, task, run_config, trainer_state)``; for an ``lm`` checkpoint ``task.tokenizer`` is the tokenizer
        it was trained with (``task.corpus`` loads the data only when asked for).
    """
    from ..tasks.text import tokenizer_from_json
    from .config import RunConfig

    state = read_state(path)
    run_config = RunConfig.from_dict(state["config"])
    kwargs = {"tokenizer": tokenizer_from_json(state["tokenizer"])} if "tokenizer" in state else {}
    task = run_config.build_task(**kwargs)
    model = task.build_model(run_config.model)
    if "compression" in state:
        from ..compress import restore_structure  # compress builds on train; imported only for its checkpoints

        restore_structure(model, state["compression"])
    load_model_weights(path, model)
    return model.eval(), task, run_config, state
