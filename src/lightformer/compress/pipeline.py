"""One pipeline for every method: load a trained checkpoint, compress it, optionally fine-tune, evaluate before and
after on the checkpoint's own task, and write a checkpoint that ``eval`` and ``sample`` load directly.

The compressed checkpoint is the training layout (``model.safetensors`` + ``trainer.json``, no pickle) without
optimizer state; ``trainer.json`` keeps the run's config (with ``train.bf16 = false``: a compressed model is
evaluated in its own precision, never under bf16 autocast) and adds ``compression``: the method, its options, the
per-layer record the method returned (from which ``restore_structure`` rebuilds the compressed layers on load), the
sizes and the validation metrics before and after.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..tasks.base import Task, batch_to
from ..train import checkpoint
from ..train.config import RunConfig
from ..train.evaluate import evaluate
from .base import COMPRESSORS, Compressor, parameter_bytes, parameter_count, select_layers

MIB = 2**20


@dataclass(frozen=True)
class Finetune:
    """A short fine-tune of the compressed model on the checkpoint's task (methods with ``trainable``).

    Attributes:
        steps: optimizer steps (> 0).
        lr: peak learning rate; None = the run's ``min_lr`` (where its schedule ended).
    """

    steps: int
    lr: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps <= 0:
            raise ValueError(f"finetune steps must be a positive int, got {self.steps!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"finetune lr must be positive or None, got {self.lr!r}")


@dataclass
class CompressResult:
    """What ``compress_checkpoint`` did and measured. Sizes in MiB (2²⁰ bytes); metrics are the task's validation
    metrics (``loss`` in nats per scored unit, ...) on its canonical validation set, in float32.

    Attributes:
        param_mib_*: bytes of the model's distinct parameters (a quantised weight at its stored size: int8 values
            and their scales); num_params_*: their number of values (a quantised weight counts its logical size).
        file_mib_*: size of ``model.safetensors``.
        layers_mib_*: the compressed layers' parameters (weights and biases); layers: how many.
        details: the method's own report lines (sparsity, ranks ...); record: its per-layer record.
        model: the compressed model in memory (eval mode), as written to ``checkpoint``.
    """

    method: str
    options: dict[str, Any]
    source: str
    checkpoint: str
    task: str
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    param_mib_before: float
    param_mib_after: float
    num_params_before: int
    num_params_after: int
    file_mib_before: float
    file_mib_after: float
    layers: int
    layers_mib_before: float
    layers_mib_after: float
    details: list[str] = field(default_factory=list)
    finetune: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def val_loss_delta(self) -> float | None:
        """Validation loss after minus before (nats per scored unit); None when the task has no loss."""
        if "loss" not in self.metrics_before or "loss" not in self.metrics_after:
            return None
        return self.metrics_after["loss"] - self.metrics_before["loss"]

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (without the per-layer record)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("record", "model")}
        out["val_loss_delta"] = self.val_loss_delta
        return out

    def lines(self) -> list[str]:
        """A human-readable report."""
        def ratio(before: float, after: float) -> str:
            return f"{before / after:.2f}x smaller" if after > 0 and after < before else \
                ("unchanged" if after == before else f"{after / before:.2f}x larger")

        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        out = [f"{self.method} ({opts}) on {self.source} -> {self.checkpoint}",
               f"parameters      {self.param_mib_before:9.3f} MiB -> {self.param_mib_after:9.3f} MiB "
               f"({ratio(self.param_mib_before, self.param_mib_after)}; {self.num_params_before:,} -> "
               f"{self.num_params_after:,} values)",
               f"file            {self.file_mib_before:9.3f} MiB -> {self.file_mib_after:9.3f} MiB "
               f"({ratio(self.file_mib_before, self.file_mib_after)})",
               f"{self.layers:3d} layers      {self.layers_mib_before:9.3f} MiB -> {self.layers_mib_after:9.3f} MiB "
               f"({ratio(self.layers_mib_before, self.layers_mib_after)})"]
        for key in self.metrics_before:
            before, after = self.metrics_before[key], self.metrics_after.get(key, float("nan"))
            out.append(f"val {key:<11} {before:9.4f}     -> {after:9.4f}     ({after - before:+.4f})")
        if self.finetune:
            out.append(f"fine-tune: {self.finetune['steps']} steps at lr {self.finetune['lr']:g}, "
                       f"{self.finetune['seconds']:.1f} s")
        return out + self.details


def restore_structure(model: nn.Module, compression: dict[str, Any]) -> None:
    """Rebuild in a freshly built ``model`` the compressed layers recorded in a checkpoint's ``compression``
    (``trainer.json``), so its weights load (called by ``train.checkpoint.load_trained``).

    Raises:
        ValueError: an unknown method (e.g. a checkpoint written by a newer lightformer)."""
    compressor = COMPRESSORS.create(compression["method"], **compression.get("options", {}))
    compressor.check_available()
    compressor.restore(model, compression["result"])


def _probe(task: Task, batch_size: int) -> Callable[[nn.Module], None]:
    """One forward on two validation examples of ``task`` (and, for a decoding language model, a prefill and one
    step), so every layer a forward or a decode calls is seen."""
    batch = batch_to(task.sample("val", min(2, batch_size)), "cpu")

    def run(model: nn.Module) -> None:
        task.loss(model, batch)
        ids = batch[0]
        if hasattr(model, "prefill") and isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] > 1:
            try:
                _, state = model.prefill(ids[:, :-1])
                model.step(ids[:, -1], state)
            except NotImplementedError:  # a mixer without decoding: the forward is the only path
                pass

    return run


def _finetune(model: nn.Module, task: Task, run_config: RunConfig, spec: Finetune,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Train the compressed ``model`` in place for ``spec.steps`` steps of its task with the run's optimizer, a
    warm-up + cosine schedule from ``lr`` to ``lr/10``, and the run seed + 1 (batches the run did not draw first)."""
    from ..train.optim import build_optimizer
    from ..train.trainer import Trainer

    tc = run_config.train
    lr = tc.min_lr if spec.lr is None else float(spec.lr)
    ft = dataclasses.replace(tc, max_steps=spec.steps, max_time=None, lr=lr, min_lr=lr / 10,
                             warmup_steps=min(tc.warmup_steps, spec.steps // 10), eval_interval=spec.steps,
                             checkpoint_interval=0, out_dir=None, seed=tc.seed + 1)
    trainer = Trainer(dataclasses.replace(run_config, train=ft), task=task, log=log)
    trainer.model = model  # the trainer built a fresh model of the config; train the compressed one instead
    trainer.optimizer = build_optimizer(model, ft)
    result = trainer.fit(progress_bar=False)
    model.eval()
    if getattr(result, "diverged_at", None) is not None or not torch.isfinite(torch.tensor(result.train_loss)):
        raise RuntimeError(f"the fine-tune diverged (training loss {result.train_loss}); try a lower finetune_lr")
    return {"steps": spec.steps, "lr": lr, "seconds": round(result.seconds, 3), "train_loss": result.train_loss}


def _same_output(a: nn.Module, b: nn.Module, run: Callable[[nn.Module], Any]) -> bool:
    with torch.no_grad():
        return bool(torch.equal(run(a), run(b)))


def compress_checkpoint(src_dir: str | os.PathLike, method: str, options: dict[str, Any] | None,
                        out_dir: str | os.PathLike, *, finetune: Finetune | None = None,
                        eval_iters: int | None = None, log: Callable[[str], None] | None = None) -> CompressResult:
    """Compress the trained checkpoint at ``src_dir`` with ``method`` and write it to ``out_dir``.

    Args:
        src_dir: a training checkpoint (its out_dir or its ``checkpoint/`` folder).
        method: a registered method (``COMPRESSORS``: ``int8``, ``int4``, ``magnitude_prune``, ``svd``,
            ``structured_prune``).
        options: the method's options (``{"energy": 0.9}``); ``exclude`` is every method's.
        out_dir: where ``checkpoint/`` goes (not the source's own folder).
        finetune: a short fine-tune after compressing (overrides a method's ``finetune_steps``/``finetune_lr``);
            only methods whose result trains (``svd``, ``structured_prune``).
        eval_iters: validation batches measured before and after (default: the run's ``eval_iters``): the task's
            canonical validation set of ``eval_iters · batch_size`` examples. Fewer batches are for methods whose
            forward is slow on the CPU at hand (int8 and int4 without VNNI/AMX kernels).
        log: where the fine-tune's progress lines go (default: nowhere).

    Returns:
        The sizes and validation metrics before and after (``CompressResult``).

    Raises:
        ValueError: an unknown method, a bad option value, a method that cannot apply to this model (the message
            names the layer and the reason), a checkpoint already compressed, ``out_dir`` holding the source, or a
            fine-tune for a method that cannot train.
        TypeError: an unknown option (named, with the valid ones).
        ImportError: the quantisation methods without torchao.
        FileNotFoundError: no checkpoint at ``src_dir``.
    """
    if eval_iters is not None and (isinstance(eval_iters, bool) or not isinstance(eval_iters, int) or eval_iters <= 0):
        raise ValueError(f"eval_iters must be a positive int, got {eval_iters!r}")
    compressor: Compressor = COMPRESSORS.create(method, **dict(options or {}))
    config = compressor.config
    steps = finetune.steps if finetune is not None else getattr(config, "finetune_steps", 0)
    if steps and not compressor.trainable:
        raise ValueError(f"{method} cannot be fine-tuned: its compressed layers carry no gradient "
                         "(fine-tune methods: " + ", ".join(n for n in COMPRESSORS.names()
                                                            if COMPRESSORS.get(n).trainable) + ")")
    spec = finetune if finetune is not None else (Finetune(steps, getattr(config, "finetune_lr", None))
                                                  if steps else None)
    compressor.check_available()

    src = checkpoint.locate(src_dir)
    out_dir = pathlib.Path(out_dir)
    if src.resolve() in {out_dir.resolve(), (out_dir / checkpoint.NAME).resolve()}:
        raise ValueError(f"out_dir {str(out_dir)!r} holds the source checkpoint; write the compressed one elsewhere")
    model, task, run_config, state = checkpoint.load_trained(src)
    if "compression" in state:
        raise ValueError(f"{str(src)!r} is already compressed ({state['compression']['method']}); compress the "
                         "original checkpoint instead")
    tc = run_config.train
    n = (eval_iters or tc.eval_iters) * tc.batch_size

    def measure() -> dict[str, float]:
        metrics = evaluate(model, task, "val", n=n, batch_size=tc.batch_size, bf16=False)
        metrics.pop("count")
        return metrics

    before = measure()
    param_before, count_before = parameter_bytes(model), parameter_count(model)
    probe = _probe(task, tc.batch_size)
    layers = select_layers(compressor, model, probe)
    layers_before = sum(parameter_bytes(m) for m in layers.values())

    compressor.prepare(model, task, run_config)
    record = compressor.apply(model, layers)
    model.eval()
    tuned = _finetune(model, task, run_config, spec, log or (lambda s: None)) if spec is not None else None
    compressor.finalize(model)
    after = measure()

    layers_after = sum(parameter_bytes(model.get_submodule(name)) for name in layers)
    saved_config = dataclasses.replace(run_config, train=dataclasses.replace(tc, bf16=False))
    compression = {"method": method, "options": config.to_dict(), "result": record, "source": str(src),
                   "source_step": state.get("step"), "val_before": before, "val_after": after, "finetune": tuned,
                   "sizes": {"param_mib": [param_before / MIB, parameter_bytes(model) / MIB],
                             "num_params": [count_before, parameter_count(model)]}}
    kept = {k: v for k, v in state.items() if k not in ("optimizer", "aliases", "packed", "rng", "compression")}
    folder = checkpoint.save(out_dir, model, None, dict(kept, config=saved_config.to_dict(), compression=compression))

    # the written checkpoint must load into the same computation: a broken save/load reports nothing
    reloaded = checkpoint.load_trained(folder)[0]
    outputs = lambda m: task.loss(m, batch_to(task.sample("val", min(2, tc.batch_size)), "cpu")).loss  # noqa: E731
    if not _same_output(model, reloaded, outputs):
        raise RuntimeError(f"{method}: the checkpoint written to {str(folder)!r} does not reload to the same model")

    return CompressResult(
        method=method, options=config.to_dict(), source=str(src), checkpoint=str(folder), task=task.name,
        metrics_before=before, metrics_after=after, param_mib_before=param_before / MIB,
        param_mib_after=parameter_bytes(model) / MIB, num_params_before=count_before,
        num_params_after=parameter_count(model), file_mib_before=(src / "model.safetensors").stat().st_size / MIB,
        file_mib_after=(folder / "model.safetensors").stat().st_size / MIB, layers=len(layers),
        layers_mib_before=layers_before / MIB, layers_mib_after=layers_after / MIB,
        details=compressor.describe(record), finetune=tuned, record=record, model=model)
