"""Checkpoints: model weights and optimizer moments as safetensors, trainer state as JSON, written atomically.

Layout of ``<out_dir>/checkpoint/``: ``model.safetensors``, ``optimizer.safetensors`` (AdamW moments keyed
``<param index>.<name>``), ``trainer.json`` (run config, step, elapsed seconds, tokens, optimizer scalars and
hyper-parameters, torch's RNG state, history, task and its options, the tokenizer of an ``lm`` run). A new checkpoint is written to ``checkpoint.tmp/`` and swapped
in with renames, so a crash leaves either the old or the new one (``checkpoint.old/`` is used if the swap was cut).
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

NAME = "checkpoint"


def _encode_bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _decode_bytes(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


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


def save(out_dir: str | pathlib.Path, model: nn.Module, optimizer: torch.optim.Optimizer,
         trainer_state: dict[str, Any]) -> pathlib.Path:
    """Write a checkpoint atomically; returns its folder."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp, old = out_dir / NAME, out_dir / f"{NAME}.tmp", out_dir / f"{NAME}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # tied weights appear under two names; safetensors refuses shared storage, so store each tensor once
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for key in list(weights):
        ptr = weights[key].data_ptr()
        if ptr in seen:
            aliases[key] = seen[ptr]
            del weights[key]
        else:
            seen[ptr] = key
    save_file(weights, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    # batches are drawn by step (Trainer.train_batch), so only torch's RNG (dropout) needs saving
    state = dict(trainer_state, optimizer=opt_meta, aliases=aliases, rng={"torch": _encode_bytes(torch.get_rng_state())})
    with open(tmp / "trainer.json", "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
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
    folder = locate(path)
    weights = load_file(str(folder / "model.safetensors"))
    for alias, source in read_state(folder).get("aliases", {}).items():
        weights[alias] = weights[source]
    model.load_state_dict(weights)


def restore(path: str | pathlib.Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load weights, optimizer and RNG state; returns the trainer state dict."""
    folder = locate(path)
    load_model_weights(folder, model)
    state = read_state(folder)
    load_optimizer(optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
    torch.set_rng_state(_decode_bytes(state["rng"]["torch"]))
    return state


def load_trained(path: str | pathlib.Path):
    """Rebuild a trained model of any task (eval mode) from a checkpoint, without loading its data.

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
    load_model_weights(path, model)
    return model.eval(), task, run_config, state
