"""The task contract: every data set and benchmark generator behind one batch interface.

A task is a registered class with a frozen config (``TaskConfig`` subclass; ``seed`` fixes the data of every
split). ``task.sample(split, n, *, seed=None)`` draws ``n`` examples of ``split`` in ``("train", "val", "test")``:

- the splits come from disjoint seed streams (generators) or disjoint data (loaders), and are deterministic for a
  given task seed; ``seed=None`` is the split's canonical set (the evaluation set), ``seed=k`` another draw from
  the same split (the trainer asks for ``seed=step``);
- what comes back depends on ``task.kind``:

  ============== ===============================================================================================
  ``lm``         ``(inputs [n, T] int64, targets [n, T] int64)``, next-token targets (a text corpus)
  ``sequence``   ``(inputs [n, T] int64, targets [n, T] int64)`` with ``IGNORE = -100`` at unscored positions
  ``classify``   ``(inputs [n, T] int64, key_padding_mask [n, T] bool, labels [n] int64)``
  ``pair``       ``((inputs1, mask1), (inputs2, mask2), labels [n] int64)`` (two-tower retrieval)
  ``regression`` ``(inputs [n, T, d_in] float32, targets [n, T] float32, scored [n, T] bool)``
  ============== ===============================================================================================

A task also builds the model head it is trained with (``build_model``), and computes its loss and its metrics
(``loss``), each metric with its direction (``METRICS``), so the trainer, the suite, the reports and ``advise``
need no task-specific code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.config import ModelConfig
from ..registry import Registry

SPLITS = ("train", "val", "test")
KINDS = ("lm", "sequence", "classify", "pair", "regression")
#: Target value of an unscored position (``torch.nn.functional.cross_entropy``'s default ``ignore_index``).
IGNORE = -100
LN2 = float(np.log(2.0))

#: Every metric a task or a report uses, with its direction: ``"min"`` = lower is better. ``recall`` is compare's
#: name for MQAR accuracy; ``time_ms`` and ``mem_mib`` are the bench's costs.
METRICS: dict[str, str] = {"loss": "min", "bpc": "min", "accuracy": "max", "nmse": "min", "recall": "max",
                           "time_ms": "min", "mem_mib": "min"}


def direction(metric: str) -> str:
    """``"min"`` or ``"max"`` for a metric name, with or without a ``val_``/``test_`` prefix (``"val_bpc"``).

    Raises:
        ValueError: an unknown metric (the message lists the known ones).
    """
    base = metric.split("_", 1)[1] if metric.startswith(("val_", "test_", "train_")) else metric
    try:
        return METRICS[base]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}") from None


def better(metric: str, a: float, b: float) -> bool:
    """True when value ``a`` of ``metric`` is strictly better than ``b``."""
    return a < b if direction(metric) == "min" else a > b


@dataclass(frozen=True)
class TaskConfig:
    """Options shared by every task.

    Attributes:
        seed: fixes the data of every split (generators: the root of the split seed streams; loaders: the split
            of files/documents and the order of examples).
    """

    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self, "seed", low=0)


def check_int(cfg: Any, *names: str, low: int = 1) -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value is not an int >= ``low`` (bools rejected)."""
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


@dataclass
class Loss:
    """What ``Task.loss`` returns for one batch.

    Attributes:
        loss: the mean training loss over the scored units (differentiable scalar).
        count: number of scored units (tokens, examples or query points).
        sums: per metric, the sum over the scored units (a metric's value is ``sums[m] / count`` summed over
            batches), as floats.
        logits: the class scores behind ``loss``, ``[N, C]`` float32, one row per scored unit (``N = count``), and
        targets: their labels ``[N]`` int64: what knowledge distillation (``train/distill.py``) compares with a
            teacher's logits on the same batch. ``None`` for tasks without class scores (``regression``).
    """

    loss: Tensor
    count: int
    sums: dict[str, float]
    logits: Tensor | None = None
    targets: Tensor | None = None


def classification_loss(logits: Tensor, labels: Tensor) -> Loss:
    """Cross-entropy and argmax accuracy of ``logits [N, C]`` against ``labels [N]``, per scored unit."""
    n = labels.shape[0]
    loss = F.cross_entropy(logits, labels)
    correct = (logits.argmax(-1) == labels).sum()
    return Loss(loss, n, {"accuracy": float(correct), "loss": float(loss.detach()) * n}, logits, labels)


TASKS: Registry[type["Task"]] = Registry("task")


class Task:
    """Base class of every task. Subclasses set ``config_class``, ``kind`` and ``metrics`` (the first one is the
    primary metric, the one the suite ranks by) and implement ``_sample``; the kind's base class below supplies
    ``build_model`` and ``loss``."""

    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    kind: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ("loss",)
    registry_name: ClassVar[str] = ""
    #: small options for the registry-wide contract tests (seconds to generate, T <= 256)
    example_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: TaskConfig) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # -- what a task is ----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.registry_name or type(self).__name__

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def seq_len(self) -> int:
        """Length T of the inputs (the longest, for tasks that pad)."""
        raise NotImplementedError

    @property
    def vocab(self) -> tuple[str, ...] | None:
        """The token strings, where tokens have names (``None`` for real-valued inputs)."""
        return None

    @property
    def vocab_size(self) -> int:
        v = self.vocab
        if v is None:
            raise NotImplementedError(f"task {self.name!r} has no token vocabulary")
        return len(v)

    @property
    def num_classes(self) -> int | None:
        return None

    def options(self) -> dict[str, Any]:
        """The config as a JSON-able dict (recorded with every result)."""
        return dataclasses.asdict(self.config)

    def fingerprint(self) -> str:
        """A short digest of the task's identity (name + options), for cache file names and records."""
        text = json.dumps({"task": self.name, **self.options()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- data -----------------------------------------------------------------------------------------------
    def sample(self, split: str, n: int, *, seed: int | None = None) -> tuple:
        """``n`` examples of ``split`` (see the module docstring for what each kind returns).

        Raises:
            ValueError: ``split`` not in ``SPLITS``, ``n`` not a positive int, ``seed`` negative.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
        return self._sample(split, n, seed)

    def rng(self, split: str, seed: int | None) -> np.random.Generator:
        """The generator of one draw: a stream of its own per (task seed, split, draw seed), so splits never share
        a stream and ``seed=None`` is always the same draw."""
        return np.random.default_rng([self.config.seed, SPLITS.index(split), 0 if seed is None else seed + 1])

    def _sample(self, split: str, n: int, seed: int | None) -> tuple:
        raise NotImplementedError

    # -- model, loss ----------------------------------------------------------------------------------------
    def build_model(self, model: ModelConfig) -> nn.Module:
        """The model this task trains: ``model`` with this task's vocabulary, length and causality."""
        raise NotImplementedError

    def model_config(self, model: ModelConfig) -> ModelConfig:
        """``model`` with the task's vocabulary filled in.

        Raises:
            ValueError: the task's length T is above ``model.max_len`` with absolute positions (whose table has
                ``max_len`` rows); the message names ``max_len``."""
        if model.position in ("learned", "sinusoidal") and model.max_len < self.seq_len:
            raise ValueError(f"max_len={model.max_len} is below the length T={self.seq_len} of task {self.name!r} "
                             f"(position={model.position!r} has a table of max_len entries)")
        return dataclasses.replace(model, vocab_size=self.vocab_size)

    def loss(self, model: nn.Module, batch: tuple) -> Loss:
        raise NotImplementedError

    def count(self, batch: tuple) -> int:
        """The scored units of ``batch`` (what ``loss(model, batch).count`` will be), read from the batch alone,
        without a forward: multi-process training sums it over the ranks before the backward to normalise the loss
        by the global count (``train/trainer.py``)."""
        raise NotImplementedError

    # -- reading examples ---------------------------------------------------------------------------------------
    def decode(self, ids: Tensor | list[int]) -> str:
        """Token ids -> text, tokens joined by spaces (overridden by tasks whose tokens are characters/bytes)."""
        vocab = self.vocab
        if vocab is None:
            raise NotImplementedError(f"task {self.name!r} has no token vocabulary")
        return " ".join(vocab[int(i)] for i in (ids.tolist() if isinstance(ids, Tensor) else ids))

    def format_example(self, batch: tuple, i: int) -> str:
        """Example ``i`` of ``batch`` (from ``sample``) as text a person can check: inputs and targets."""
        raise NotImplementedError

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{self.name} ({self.kind}, T={self.seq_len}; {opts})"


class ByteVocabulary:
    """Mixin of tasks whose tokens are raw bytes (vocabulary 256, ``decode`` renders the bytes as UTF-8 text,
    undecodable bytes replaced)."""

    @property
    def vocab(self) -> tuple[str, ...]:
        return tuple(bytes([i]).decode("latin-1") for i in range(256))

    def decode(self, ids: Tensor | list[int]) -> str:
        return bytes(int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)).decode(
            "utf-8", errors="replace")


class SequenceTask(Task):
    """A causal next-token task scored only where the targets are not ``IGNORE`` (capability probes). Trained as a
    ``LanguageModel``; metrics: accuracy of the argmax over the scored positions, and the loss there."""

    kind = "sequence"
    metrics = ("accuracy", "loss")

    def build_model(self, model: ModelConfig) -> nn.Module:
        from ..models.heads import LanguageModel

        return LanguageModel(dataclasses.replace(self.model_config(model), causal=True))

    def loss(self, model: nn.Module, batch: tuple) -> Loss:
        inputs, targets = batch
        scored = targets != IGNORE
        # the head only at the scored positions: [B, T, V] logits of a V=8192 probe would not fit in memory
        return classification_loss(model.head(model.backbone(inputs)[scored]).float(), targets[scored])

    def count(self, batch: tuple) -> int:
        return int((batch[1] != IGNORE).sum())

    def format_example(self, batch: tuple, i: int) -> str:
        inputs, targets = batch
        scored = targets[i] != IGNORE
        shown = " ".join(f"[{self.vocab[int(t)]}]" if s else self.vocab[int(x)]
                         for x, t, s in zip(inputs[i].tolist(), targets[i].tolist(), scored.tolist()))
        pairs = ", ".join(f"t={int(t)}: {self.vocab[int(targets[i, t])]}" for t in torch.nonzero(scored)[:, 0])
        return (f"inputs : {self.decode(inputs[i])}\n"
                f"scored : {int(scored.sum())} positions (target shown in [] at the position that predicts it)\n"
                f"targets: {pairs}\n"
                f"marked : {shown}")


def encoder_causal(model: ModelConfig) -> bool:
    """The direction of a classification encoder: bidirectional, as LRA trains it, unless a layer's mixer is
    causal-only (the state-space and recurrent mixers, e.g. the mamba2 layers of a ``mamba_hybrid`` schedule), which
    then makes the whole stack encode causally: mean pooling over the real tokens of a causal stack reads every
    token, and each position has seen its whole prefix."""
    from ..mixers import MIXERS

    return not all(MIXERS.get(m).capabilities.non_causal for m in model.mixers)


class ClassificationTask(Task):
    """A sequence -> label task (LRA style). Trained as a bidirectional ``SequenceClassifier`` (mean pooling over
    real tokens; a causal one for a causal-only mixer, see ``encoder_causal``); metrics: accuracy and cross-entropy
    loss per example."""

    kind = "classify"
    metrics = ("accuracy", "loss")
    #: the label names, index = label
    label_names: ClassVar[tuple[str, ...]] = ()
    pooling: ClassVar[str] = "mean"

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def build_model(self, model: ModelConfig) -> nn.Module:
        from ..models.heads import SequenceClassifier

        config = self.model_config(model)
        return SequenceClassifier(dataclasses.replace(config, causal=encoder_causal(config)), self.num_classes,
                                  self.pooling)

    def loss(self, model: nn.Module, batch: tuple) -> Loss:
        inputs, mask, labels = batch
        return classification_loss(model(inputs, key_padding_mask=None if bool(mask.all()) else mask), labels)

    def count(self, batch: tuple) -> int:
        return batch[-1].shape[0]  # one label per example

    def format_example(self, batch: tuple, i: int) -> str:
        inputs, mask, labels = batch
        ids = inputs[i][mask[i]]
        text = self.decode(ids)
        if len(text) > 600:
            text = text[:300] + f" … ({len(ids)} tokens) … " + text[-200:]
        return f"label  : {int(labels[i])} = {self.label_names[int(labels[i])]}\nlength : {len(ids)} tokens\n" \
               f"inputs : {text}"


class PairTask(Task):
    """Two sequences -> label (LRA Retrieval): a two-tower encoder with the head on ``[u, v, u*v, u-v]``."""

    kind = "pair"
    metrics = ("accuracy", "loss")
    label_names: ClassVar[tuple[str, ...]] = ("different", "same")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def build_model(self, model: ModelConfig) -> nn.Module:
        from ..models.heads import TwoTowerClassifier

        config = self.model_config(model)
        return TwoTowerClassifier(dataclasses.replace(config, causal=encoder_causal(config)), self.num_classes)

    def loss(self, model: nn.Module, batch: tuple) -> Loss:
        (a, mask_a), (b, mask_b), labels = batch
        logits = model(a, b, key_padding_mask=None if bool(mask_a.all()) else mask_a,
                       key_padding_mask2=None if bool(mask_b.all()) else mask_b)
        return classification_loss(logits, labels)

    def count(self, batch: tuple) -> int:
        return batch[-1].shape[0]  # one label per pair

    def format_example(self, batch: tuple, i: int) -> str:
        (a, mask_a), (b, mask_b), labels = batch

        def short(ids: Tensor) -> str:
            text = self.decode(ids)
            return text if len(text) <= 300 else text[:200] + f" … ({len(ids)} tokens)"

        return (f"label  : {int(labels[i])} = {self.label_names[int(labels[i])]}\n"
                f"first  : {short(a[i][mask_a[i]])}\nsecond : {short(b[i][mask_b[i]])}")


class RegressionTask(Task):
    """Real-valued inputs ``[n, T, d_in]`` through a linear read-in, a scalar read-out per position, scored where
    ``scored`` is True. Trained as an ``InContextRegressor`` (causal); metric: ``nmse``, the squared error divided
    by the input dimension (Garg et al. 2022's normalisation), and the same as the training loss."""

    kind = "regression"
    metrics = ("nmse",)

    @property
    def input_dim(self) -> int:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return 1  # no token embedding is used; the backbone's table is a single row

    def build_model(self, model: ModelConfig) -> nn.Module:
        from ..models.heads import InContextRegressor

        return InContextRegressor(dataclasses.replace(self.model_config(model), causal=True), self.input_dim)

    def loss(self, model: nn.Module, batch: tuple) -> Loss:
        inputs, targets, scored = batch
        pred = model(inputs)  # [n, T]
        err = (pred[scored] - targets[scored]).pow(2) / self.input_dim
        count = int(scored.sum())
        loss = err.mean()
        return Loss(loss, count, {"nmse": float(err.detach().sum())})

    def count(self, batch: tuple) -> int:
        return int(batch[2].sum())


def batch_to(batch: tuple, device: torch.device | str) -> tuple:
    """Move every tensor of a (possibly nested) batch tuple to ``device``."""
    return tuple(batch_to(b, device) if isinstance(b, tuple) else b.to(device) for b in batch)


def create_task(name: str, **options: Any) -> Task:
    """Build the registered task ``name`` with ``options`` (``lightformer tasks`` lists them).

    Raises:
        ValueError: an unknown ``name`` (the message lists the registered ones) or a bad option value.
        TypeError: an unknown option (the message names it and lists the valid ones).
    """
    return TASKS.create(name, **options)
