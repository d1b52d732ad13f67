"""Bench cells of trained checkpoints: what a compression method costs and gains, measured on the model itself.

``lightformer bench --checkpoints BASE,A,B`` measures each checkpoint (a training checkpoint or one written by
``lightformer compress``) in its own subprocess per mode, exactly as ``eval``/``sample`` would load it
(``train.checkpoint.load_trained``), and appends one ``kind: "checkpoint"`` record per (checkpoint, mode). The
first checkpoint is the run's baseline (normally the uncompressed fp32 model); every record names it, so a report
divides by a baseline measured in the same run.

Modes:

* ``fwd``: the whole model's forward (``LanguageModel``: logits of ``[B, T]`` token ids; a classifier: its logits)
  under ``no_grad`` on fixed random ids from the task's vocabulary; ``time_ms`` = median of ``repeats`` timed runs
  after ``warmup`` untimed ones; ``mem_mib`` = the peak RSS growth over a baseline taken after a small preflight
  run (as ``lightformer.bench.cell`` does).
* ``decode``: a language model only. A context of T tokens (``max_len − DECODE_STEPS`` where learned or sinusoidal
  positions end before T + ``DECODE_STEPS``; recorded as ``decode_context``) is prefilled once (untimed,
  ``LanguageModel.prefill``); each timed run then decodes ``DECODE_STEPS`` tokens by ``step`` from that same
  context (states are values), and ``time_ms`` is per token.
* ``eval``: the task's validation metrics (``loss`` in nats per scored unit, ``bpc`` ...) on the checkpoint run's
  canonical validation set (``eval_iters × batch_size`` examples, float32), the set ``compress`` reports; untimed.

Every record also carries the model's size: ``model_mib`` (the tensors of its state dict, tied ones once,
quantised or packed ones at their stored size), ``blocks_mib`` (the same inside the Transformer blocks: the bytes
compression acts on), ``num_params``, ``file_mib`` (``model.safetensors``), and the checkpoint's ``method`` and
``method_options`` (``None`` for an uncompressed checkpoint).

Run as ``python -m lightformer.bench.checkpoint_cell '<CheckpointCell JSON>'``; prints one
``LIGHTFORMER_RECORD {json}`` line.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cell import _peak_rss_kib, _reset_peak_rss, is_oom
from .flops import DECODE_STEPS
from .machine import machine_info

#: the modes of a checkpoint cell, in the order a sweep runs them
CHECKPOINT_MODES = ("eval", "fwd", "decode")
CHECKPOINT_SCHEMA = 1
MIB = 2**20


@dataclass(frozen=True)
class CheckpointCell:
    """One measurement of one trained checkpoint.

    Attributes:
        checkpoint: the checkpoint's directory (a run's out_dir or its ``checkpoint/`` folder).
        label: the row name in reports (default in ``checkpoint_cells``: the run directory's name).
        baseline: the checkpoint the run divides by (the first of ``--checkpoints``).
        mode: ``eval | fwd | decode`` (``CHECKPOINT_MODES``).
        seq_len: T of ``fwd`` and the prefilled context of ``decode`` (tokens).
        batch: B of ``fwd`` and ``decode``.
        threads: torch intra-op threads. warmup, repeats: untimed and timed runs. timeout_s: subprocess limit (s).
        round: which round-robin pass over the checkpoints this timing belongs to (``--rounds``): the report takes
            the median over rounds, so a load that changes during the run reaches every checkpoint alike.
        eval_iters: ``eval``'s validation batches (default: the checkpoint run's ``eval_iters``): the task's
            canonical validation set of ``eval_iters · batch_size`` examples, the same for every checkpoint of a run.
    """

    checkpoint: str
    label: str
    baseline: str
    mode: str
    seq_len: int = 256
    batch: int = 8
    threads: int = 1
    warmup: int = 1
    repeats: int = 3
    timeout_s: float = 600.0
    eval_iters: int | None = None
    round: int = 0

    def __post_init__(self) -> None:
        if self.mode not in CHECKPOINT_MODES:
            raise ValueError(f"mode {self.mode!r} unknown for a checkpoint cell; choose from "
                             f"{', '.join(CHECKPOINT_MODES)}")
        for name in ("seq_len", "batch", "threads", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be positive seconds, got {self.timeout_s!r}")
        if self.eval_iters is not None and (isinstance(self.eval_iters, bool) or not isinstance(self.eval_iters, int)
                                            or self.eval_iters <= 0):
            raise ValueError(f"eval_iters must be a positive int, got {self.eval_iters!r}")

    @property
    def key(self) -> str:
        """Resume key: the checkpoint (resolved), the mode and the shape, the threads."""
        return checkpoint_key({"checkpoint": self.checkpoint, "mode": self.mode, "seq_len": self.seq_len,
                               "batch": self.batch, "threads": self.threads,
                               "eval_iters": self.eval_iters if self.mode == "eval" else None, "round": self.round})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CheckpointCell":
        return cls(**json.loads(text))


def checkpoint_key(record: dict[str, Any]) -> str:
    """The identity of a checkpoint cell or record (its checkpoint path resolved; ``eval_iters`` counts for ``eval``
    only)."""
    path = str(Path(record["checkpoint"]).resolve())
    return json.dumps({"checkpoint": path, "mode": record["mode"], "seq_len": record["seq_len"],
                       "batch": record["batch"], "threads": record["threads"],
                       "eval_iters": record.get("eval_iters") if record["mode"] == "eval" else None,
                       "round": record.get("round", 0)}, sort_keys=True)


def checkpoint_cells(checkpoints: list[str], *, modes: list[str] | None = None, seq_len: int = 256, batch: int = 8,
                     threads: int = 1, warmup: int = 1, repeats: int = 3, timeout_s: float = 600.0,
                     labels: list[str] | None = None, eval_iters: int | None = None,
                     rounds: int = 1) -> list[CheckpointCell]:
    """The cells of a checkpoint run: every checkpoint (the first one is the baseline) × ``modes``, the timed modes
    in ``rounds`` round-robin passes (round-major order; ``eval`` once, in the first).

    Raises:
        ValueError: no checkpoint, a checkpoint directory that does not exist, labels not one per checkpoint or
            repeated, an unknown mode or a non-positive size.
    """
    from ..train.checkpoint import locate

    if not checkpoints:
        raise ValueError("checkpoints: give at least one checkpoint directory (the first is the baseline)")
    for path in checkpoints:
        locate(path)  # FileNotFoundError naming the directory
    if labels is None:
        labels = [_default_label(p) for p in checkpoints]
    if len(labels) != len(checkpoints):
        raise ValueError(f"labels: {len(labels)} given for {len(checkpoints)} checkpoints")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct (name the runs' directories apart), got {labels}")
    modes = list(modes or CHECKPOINT_MODES)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds <= 0:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    return [CheckpointCell(checkpoint=str(path), label=label, baseline=str(checkpoints[0]), mode=mode,
                           seq_len=seq_len, batch=batch, threads=threads, warmup=warmup, repeats=repeats,
                           timeout_s=timeout_s, eval_iters=eval_iters, round=r)
            for r in range(rounds) for path, label in zip(checkpoints, labels) for mode in modes
            if r == 0 or mode != "eval"]


def _default_label(path: str) -> str:
    p = Path(path).resolve()
    return p.parent.name if p.name == "checkpoint" else p.name


def checkpoint_record(cell: CheckpointCell, machine: dict[str, str], *, status: str,
                      reason: str | None = None) -> dict[str, Any]:
    """A ``kind: "checkpoint"`` record of ``cell`` with every key, no measurements."""
    return {"kind": "checkpoint", "schema": CHECKPOINT_SCHEMA, "status": status, "reason": reason,
            "checkpoint": cell.checkpoint, "label": cell.label, "baseline": cell.baseline,
            "is_baseline": Path(cell.checkpoint).resolve() == Path(cell.baseline).resolve(), "mode": cell.mode,
            "seq_len": cell.seq_len, "batch": cell.batch, "threads": cell.threads, "warmup": cell.warmup,
            "repeats": cell.repeats, "round": cell.round, "eval_iters": cell.eval_iters if cell.mode == "eval" else None, "method": None, "method_options": None, "task": None, "architecture": None,
            "model_mib": None, "blocks_mib": None, "num_params": None, "file_mib": None, "time_ms": None,
            "times_ms": [], "mem_mib": None, "decode_steps": None, "decode_context": None, "metrics": {}, "eval_n": None,
            **{k: machine.get(k, "unknown") for k in ("cpu", "torch", "python", "git_commit", "timestamp")},
            "elapsed_s": None}


def _sizes(model: Any, folder: Path) -> dict[str, Any]:
    """``model_mib``: bytes of the tensors the model keeps (its state dict: parameters and persistent buffers, tied
    ones once, quantised or packed ones at their stored size); ``blocks_mib``: the same inside the Transformer
    blocks, the part compression acts on (norms included: D values each); ``num_params``; ``file_mib``."""
    from ..compress.base import parameter_count, tensor_bytes

    kept = set(model.state_dict().keys())
    tensors = [*model.named_parameters(), *model.named_buffers()]  # each de-duplicates tied tensors
    model_bytes = sum(tensor_bytes(t) for name, t in tensors if name in kept)
    blocks_bytes = sum(tensor_bytes(t) for name, t in tensors if name in kept and ".blocks." in f".{name}")
    return {"model_mib": model_bytes / MIB, "blocks_mib": blocks_bytes / MIB, "num_params": parameter_count(model),
            "file_mib": (folder / "model.safetensors").stat().st_size / MIB}


def _inputs(task: Any, model: Any, cell: CheckpointCell) -> Any:
    import torch

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        raise ValueError(f"{type(model).__name__} takes no token ids: checkpoint cells measure token models")
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (cell.batch, cell.seq_len), generator=g)


def decode_context(model: Any, seq_len: int) -> int:
    """The context ``decode`` prefills: T tokens, or ``max_len − DECODE_STEPS`` for a model with absolute (learned or
    sinusoidal) positions whose table would end before the timed tokens (its ``max_len`` is the generation
    window)."""
    config = model.config
    if config.position in ("learned", "sinusoidal") and seq_len + DECODE_STEPS > config.max_len:
        return max(1, config.max_len - DECODE_STEPS)
    return seq_len


def _runner(model: Any, ids: Any, mode: str) -> Any:
    import torch

    from ..models.heads import LanguageModel

    if mode == "fwd":
        def run() -> None:
            with torch.no_grad():
                model(ids)
        return run
    if not isinstance(model, LanguageModel):
        raise ValueError(f"decode: {type(model).__name__} does not generate (decode needs a language model)")
    ids = ids[:, :decode_context(model, ids.shape[1])]
    with torch.no_grad():
        _, context = model.prefill(ids)
    new = torch.randint(0, model.config.vocab_size, (ids.shape[0], DECODE_STEPS),
                        generator=torch.Generator().manual_seed(1))

    def run() -> None:
        with torch.no_grad():
            state = context
            for t in range(DECODE_STEPS):
                _, state = model.step(new[:, t], state)
    return run


def measure(cell: CheckpointCell) -> dict[str, Any]:
    """Measure ``cell`` in this process and return its record (see the module docstring)."""
    import torch

    from ..train.checkpoint import load_trained, locate
    from ..train.evaluate import evaluate

    torch.set_num_threads(cell.threads)
    rec = checkpoint_record(cell, machine_info(), status="ok")
    try:
        folder = locate(cell.checkpoint)
        if cell.mode != "eval":  # a small preflight absorbs one-time costs before the memory baseline
            model, task, _, _ = load_trained(folder)
            small = dataclasses.replace(cell, seq_len=min(cell.seq_len, 16), batch=1)
            try:
                _runner(model, _inputs(task, model, small), cell.mode)()
            except ValueError:
                pass
            del model
            gc.collect()
        rec["rss_reset"] = _reset_peak_rss()
        before = _peak_rss_kib()
        model, task, run_config, state = load_trained(folder)
        compression = state.get("compression") or {}
        rec.update(method=compression.get("method"), method_options=compression.get("options"), task=task.name,
                   architecture=run_config.model.architecture, **_sizes(model, folder))
        if cell.mode == "eval":
            tc = run_config.train
            iters = cell.eval_iters or tc.eval_iters
            metrics = evaluate(model, task, "val", n=iters * tc.batch_size, batch_size=tc.batch_size)
            rec["eval_n"] = metrics.pop("count")
            rec["metrics"] = metrics
            return rec
        run = _runner(model, _inputs(task, model, cell), cell.mode)
        for _ in range(cell.warmup):
            run()
        times = []
        for _ in range(cell.repeats):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
        if cell.mode == "decode":
            times = [t / DECODE_STEPS for t in times]
            rec.update(decode_steps=DECODE_STEPS, decode_context=decode_context(model, cell.seq_len))
        rec.update(time_ms=statistics.median(times), times_ms=times, mem_mib=(_peak_rss_kib() - before) / 1024.0)
        return rec
    except ValueError as exc:
        rec.update(status="unsupported", reason=f"ValueError: {exc}")
        return rec
    except Exception as exc:  # noqa: BLE001  (every failure becomes a record; the run goes on)
        status = "oom" if is_oom(exc) else "error"
        rec.update(status=status, reason=(f"{type(exc).__name__}: {exc}"[:500] + "\n" +
                                          "".join(traceback.format_exc(limit=-3))[-1500:]))
        return rec


def run_checkpoint_cell(cell: CheckpointCell, machine: dict[str, str] | None = None) -> dict[str, Any]:
    """Measure ``cell`` in a fresh subprocess; a failing cell is a record with its status, never an exception."""
    from .runner import run_module

    outcome = run_module("lightformer.bench.checkpoint_cell", cell.to_json(), threads=cell.threads,
                         timeout_s=cell.timeout_s)
    rec = outcome.record or checkpoint_record(cell, machine or machine_info(), status=outcome.status,
                                              reason=outcome.reason)
    rec["elapsed_s"] = outcome.elapsed_s
    return rec


def run_checkpoints(cells: list[CheckpointCell], out_path: str | os.PathLike[str], *, force: bool = False,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Measure every cell, appending each record to ``out_path`` as it is done; cells already measured there are
    skipped (their stored record returned) unless ``force`` or their status was ``error``."""
    from .results import load_records
    from .runner import measure_cells

    done = {} if force else {checkpoint_key(r): r for r in load_records(out_path)
                             if r.get("kind") == "checkpoint" and r.get("status") != "error"}
    machine = machine_info()
    return measure_cells(cells, out_path, done=done, measure=lambda cell: run_checkpoint_cell(cell, machine),
                         describe=lambda c: f"{c.label} {c.mode}", progress=progress)


def main(argv: list[str] | None = None) -> int:
    from .cell import cell_main

    return cell_main("lightformer.bench.checkpoint_cell", CheckpointCell.from_json, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
