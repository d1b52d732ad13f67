"""Whole LM training steps (``lightformer bench --modes train``): tokens/s of forward, backward and optimizer step
of one language model, against peers of the same shape, each implementation in its own subprocess
(``python -m lightformer.bench.train_cell '<Cell JSON>'``).

The model is a ``ModelConfig`` from one of ``lightformer train``'s presets (``--preset``) with ``--model KEY=VALUE``
overrides, ``--batch`` / ``--seq-lens`` for the preset's batch size and context, and the vocabulary of the preset's
data (``--vocab`` to give it without the data). The peers (``bench/lm_peers.py``) are built to the same shape.

One step, the same code for every implementation: the loss of a fixed batch of random tokens ``[B, T]`` (targets
the next tokens; a random init's loss is ~ln V whatever the tokens, and the time does not depend on them) under
autocast for ``amp-bf16``, ``zero_grad(set_to_none=True)``, ``backward``, gradient-norm clipping (``foreach``),
then the optimizer's step. The optimizer is the same for every implementation: AdamW (``fused=True``, the
trainer's) with the preset's learning rate, betas and weight decay on the tensors of >= 2 dims, whatever the preset's
own optimizer (the ``shakespeare-char`` preset trains with Muon; this bench compares the models, so every one gets
AdamW). The first step is the gate: its loss must be finite and within ``max(1, ln V / 4)`` of ln V. Then
``warmup`` untimed steps (a compiled cell compiles in the first) and ``repeats`` timed ones: ``time_ms`` is the
median step, ``tokens_per_s`` = B·T / median. Memory as in ``bench/cell.py`` (peak RSS growth from before the model
is built; compiled cells from after compilation, plus the parameter, optimizer-state and batch bytes resident then).

The record is a ``kind: "bench"`` record with ``mode: "train"`` and these keys besides the usual ones: ``model`` (the
``ModelConfig`` dict), ``preset``, ``optimizer`` (its settings), ``params`` (distinct parameters), ``peer_config``
(what the peer was built with), ``differences`` (what still differs from lightformer's model), ``loss_first``,
``loss_last``. The report shows them in a "Training steps" section with the time ratio of every row to
lightformer's eager step of the same run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import statistics
import sys
import time
import traceback
from typing import Any

from .grid import LIGHTFORMER, Cell, default_threads, resolve_device

TRAIN_MODE = "train"
#: precisions of a training step: fp32, or fp32 weights under bf16 autocast
TRAIN_DTYPES = ("fp32", "amp-bf16")
#: defaults of a train cell (a step is ms to s: more of them than a mixer cell's runs)
TRAIN_WARMUP, TRAIN_REPEATS = 3, 20


def model_for_bench(preset: str | None, model_overrides: dict[str, Any], *, batch: int | None = None,
                    seq_len: int | None = None, vocab: int | None = None) -> tuple[Any, Any]:
    """The ``ModelConfig`` (vocabulary filled in) and ``TrainConfig`` of a train-mode bench.

    Args:
        preset: a ``lightformer train`` preset (default ``stdlib-small``, train's default).
        model_overrides: ``ModelConfig`` fields (``parse_model_overrides`` of ``--model``).
        batch, seq_len: override the preset's ``batch_size`` and ``block_size`` (tokens per sequence).
        vocab: the vocabulary size; default 256 for the byte tokenizer, else the tokenizer of the preset's data.

    Raises:
        ValueError: an unknown preset or field, a context longer than a learned position table (naming
            ``max_len``), or a char vocabulary whose data file is missing (naming ``--vocab``).
    """
    from ..train.config import PRESETS, RunConfig, merge

    preset = preset or "stdlib-small"
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: unknown; presets: {', '.join(PRESETS)}")
    train = {k: v for k, v in (("batch_size", batch), ("block_size", seq_len)) if v is not None}
    try:
        run = RunConfig.from_dict(merge(PRESETS[preset], {"model": model_overrides, "train": train}))
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    if vocab is None:
        if run.train.tokenizer == "byte":
            vocab = 256
        else:
            try:
                vocab = run.build_task().vocab_size
            except (FileNotFoundError, OSError) as exc:
                raise ValueError(f"--preset {preset}: the vocabulary comes from its data {run.train.data!r}, which "
                                 f"cannot be read ({exc}); give --vocab N") from None
    if vocab <= 0:
        raise ValueError(f"--vocab must be positive, got {vocab}")
    model = dataclasses.replace(run.model, vocab_size=vocab, dropout=0.0)
    if model.position in ("learned", "sinusoidal") and model.max_len < run.train.block_size:
        raise ValueError(f"context {run.train.block_size} (--seq-lens) is above max_len={model.max_len} of the "
                         f"{model.position} position table; set --model max_len={run.train.block_size}")
    return model, run.train


def train_cells(model: Any, train: Any, *, preset: str | None, peers: list[str], nanogpt_path: str | None = None,
                compile: list[bool] = (False,), dtype: str = "fp32", threads: int | None = None,
                warmup: int = TRAIN_WARMUP, repeats: int = TRAIN_REPEATS, timeout_s: float = 600.0,
                device: str = "cpu") -> list[Cell]:
    """lightformer's cell, then one per peer, for every value of ``compile`` (eager first).

    Raises:
        ValueError: an unknown peer or dtype, ``nanogpt`` without a path, bad counts.
    """
    from .lm_peers import LM_PEERS

    if dtype not in TRAIN_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: a training step runs in {' or '.join(TRAIN_DTYPES)}")
    for p in peers:
        if p not in LM_PEERS:
            raise ValueError(f"peer {p!r}: in train mode choose among {', '.join(LM_PEERS)}")
    if "nanogpt" in peers and not nanogpt_path:
        raise ValueError("the nanogpt peer needs nanoGPT's model.py: --peer nanogpt:PATH/model.py")
    if warmup < 0 or repeats <= 0:
        raise ValueError(f"warmup must be >= 0 and repeats > 0, got {warmup}, {repeats}")
    device = resolve_device(device)
    from pathlib import Path

    base = {"model": model.to_dict(), "preset": preset,
            "optimizer": {"name": "adamw", "lr": train.lr, "betas": [train.beta1, train.beta2],
                          "weight_decay": train.weight_decay, "grad_clip": train.grad_clip}}
    cells = []
    for compiled in dict.fromkeys(compile):
        for impl in [LIGHTFORMER, *peers]:
            path = str(Path(nanogpt_path).resolve()) if impl == "nanogpt" else None
            cells.append(Cell(impl=impl, mixer=model.schedule or model.mixer, options={**base, "peer_path": path},
                              seq_len=train.block_size, batch=train.batch_size, dim=model.dim,
                              heads=model.num_heads, dtype=dtype, mode=TRAIN_MODE, causal=True,
                              threads=threads or default_threads(), warmup=warmup, repeats=repeats,
                              timeout_s=timeout_s, num_layers=model.num_layers, compile=compiled, device=device))
    return cells


def _record(cell: Cell, machine: dict[str, str], *, status: str, reason: str | None = None,
            threads: int | None = None) -> dict[str, Any]:
    from .results import base_record

    rec = base_record(cell, machine, status=status, reason=reason, threads=threads)
    model = cell.options["model"]
    rec.update(model=model, preset=cell.options.get("preset"), optimizer=cell.options.get("optimizer"),
               position=model.get("position"), schedule=model.get("schedule") or None, vocab_size=model["vocab_size"],
               params=None, peer_config=None, differences=[], loss_first=None, loss_last=None)
    return rec


def _adamw(params: list[Any], opt: dict[str, Any]) -> Any:
    """The peers' optimizer: the trainer's AdamW rule (decay on tensors of >= 2 dims), fused."""
    import torch

    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": opt["weight_decay"]},
                              {"params": rest, "weight_decay": 0.0}], lr=opt["lr"], betas=tuple(opt["betas"]),
                             fused=True)


def _build(cell: Cell) -> tuple[Any, Any, dict[str, Any], list[str]]:
    """``(loss_module, optimizer, peer_config, differences)`` of the cell, on its device."""
    from lightformer.models import ModelConfig
    from lightformer.models.heads import LanguageModel

    from . import lm_peers

    model = ModelConfig.from_dict(cell.options["model"])
    opt = cell.options["optimizer"]
    if cell.impl == LIGHTFORMER:
        from lightformer.train.config import TrainConfig
        from lightformer.train.optim import build_optimizer

        lm = LanguageModel(model).to(cell.device)
        tc = TrainConfig(optimizer="adamw", lr=opt["lr"], min_lr=0.0, beta1=opt["betas"][0], beta2=opt["betas"][1],
                         weight_decay=opt["weight_decay"])
        return lm_peers.PairLoss(lm), build_optimizer(lm, tc), {"ModelConfig": cell.options["model"]}, []
    if cell.impl == "x_transformers":
        peer = lm_peers.x_transformers_lm(model)
    elif cell.impl == "nanogpt":
        peer = lm_peers.nanogpt_lm(model, cell.options["peer_path"])
    else:
        raise ValueError(f"unknown train-mode implementation {cell.impl!r}")
    module = peer.loss_module.to(cell.device)
    return module, _adamw(list(module.parameters()), opt), peer.config, peer.differences


def _state_mib(module: Any, optimizer: Any, tokens: Any) -> float:
    """MiB of the parameters, optimizer state and batch (resident before a compiled cell's memory baseline)."""
    import torch

    tensors = {id(t): t for t in [*module.parameters(), *module.buffers(), tokens]}
    for state in optimizer.state.values():
        tensors.update({id(v): v for v in state.values() if isinstance(v, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def _measure(cell: Cell, rec: dict[str, Any]) -> dict[str, Any]:
    import contextlib

    import torch

    from .cell import _Memory, sync

    memory = _Memory(cell.device)
    rec["mem_kind"] = memory.kind
    rec["rss_reset"] = memory.reset()
    torch.manual_seed(0)
    module, optimizer, peer_config, differences = _build(cell)
    params = list(module.parameters())  # distinct: a tied head is one parameter
    rec.update(params=sum(p.numel() for p in params), peer_config=peer_config, differences=differences)
    vocab, clip = cell.options["model"]["vocab_size"], cell.options["optimizer"]["grad_clip"]
    tokens = torch.randint(vocab, (cell.batch, cell.seq_len + 1), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(cell.device)
    # contiguous, as a trainer's batches are (nanoGPT's loss calls .view on its targets)
    idx, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    loss_fn = torch.compile(module) if cell.compile else module
    module.train()

    def precision():
        if cell.dtype == "amp-bf16":
            return torch.autocast(torch.device(cell.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> Any:
        with precision():
            loss = loss_fn(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        optimizer.step()
        return loss.detach()

    t0 = time.perf_counter()
    first = float(step())
    sync(cell.device)
    first_ms = (time.perf_counter() - t0) * 1e3
    rec["loss_first"] = first
    expected, tol = math.log(vocab), max(1.0, math.log(vocab) / 4)
    ok = math.isfinite(first) and abs(first - expected) <= tol
    rec["gate"] = {"kind": "initial_loss", "seq_len": cell.seq_len, "max_abs_err": abs(first - expected),
                   "tol": tol, "passed": ok}
    if not ok:
        rec.update(status="gate_failed", reason=f"first step's loss {first:.4g} is not within {tol:.3g} of ln V = "
                                                f"{expected:.4g} (a random init predicts ~uniformly)")
        return rec
    resident = 0.0
    for _ in range(max(1, cell.warmup) if cell.compile else cell.warmup):
        step()
    if cell.compile:  # the baseline after compiling, as for compiled mixer cells
        sync(cell.device)
        optimizer.zero_grad(set_to_none=True)
        resident = _state_mib(module, optimizer, tokens)
        rec["rss_reset"] = memory.reset(trim=True)
    times, last = [], first
    for _ in range(cell.repeats):
        sync(cell.device)
        t0 = time.perf_counter()
        last = step()
        sync(cell.device)
        times.append((time.perf_counter() - t0) * 1e3)
    rec["loss_last"] = float(last)
    if not math.isfinite(rec["loss_last"]):
        rec.update(status="gate_failed", reason=f"loss became {rec['loss_last']} after {cell.repeats} timed steps")
        return rec
    time_ms = statistics.median(times)
    rec.update(time_ms=time_ms, times_ms=times, mem_mib=memory.growth_mib() + resident,
               tokens_per_s=cell.batch * cell.seq_len / (time_ms * 1e-3))
    if cell.compile:
        rec["compile_s"] = max(0.0, first_ms - time_ms) / 1e3
    return rec


def measure(cell: Cell) -> dict[str, Any]:
    """Run the train cell in this process and return its record (see the module docstring)."""
    import torch

    from .cell import is_oom
    from .machine import machine_info

    torch.set_num_threads(cell.threads)
    rec = _record(cell, machine_info(), status="ok", threads=torch.get_num_threads())
    try:
        return _measure(cell, rec)
    except Exception as exc:  # noqa: BLE001  (every failure becomes a record)
        status = "oom" if is_oom(exc) else "unsupported" if isinstance(exc, ValueError) else "error"
        rec.update(status=status, reason=f"{type(exc).__name__}: {exc}"[:500] +
                   ("" if status != "error" else "\n" + "".join(traceback.format_exc(limit=-3))[-1500:]))
        return rec


def run_train(cells: list[Cell], out_path: str, *, force: bool = False,
              progress: bool = True) -> list[dict[str, Any]]:
    """Measure ``cells`` one subprocess each, appending records to ``out_path``; cells already there are skipped
    unless ``force`` (as ``runner.run_sweep``). Returns the records in cell order."""
    from .grid import cell_key
    from .machine import machine_info
    from .results import RETRIED, bench_records, load_records
    from .runner import measure_cells, run_module

    done = {} if force else {cell_key(r): r for r in bench_records(load_records(out_path))
                             if r.get("status") not in RETRIED}
    machine = machine_info()

    def measure_one(cell: Cell) -> dict[str, Any]:
        if cell.impl == "x_transformers" and importlib.util.find_spec("x_transformers") is None:
            return _record(cell, machine, status="unavailable",
                           reason="package 'x_transformers' is not installed: pip install x-transformers "
                                  "(or lightformer[peers])")
        outcome = run_module("lightformer.bench.train_cell", cell.to_json(), threads=cell.threads,
                             timeout_s=cell.timeout_s)
        rec = outcome.record or _record(cell, machine, status=outcome.status, reason=outcome.reason)
        rec["elapsed_s"] = outcome.elapsed_s
        return rec

    return measure_cells(cells, out_path, done=done, measure=measure_one, desc="bench train",
                         describe=lambda c: f"{c.impl}{' compiled' if c.compile else ''}", progress=progress)


def main(argv: list[str] | None = None) -> int:
    from .cell import cell_main

    return cell_main("lightformer.bench.train_cell", Cell.from_json, measure, argv)


if __name__ == "__main__":
    sys.exit(main())


TRAIN_SECTION = "Training steps"
TRAIN_LEGEND = ("Each table is one language model (`lightformer bench --modes train`): the time of a whole training "
                "step (forward, backward, gradient clipping, AdamW) on a fixed batch, median of the timed steps. "
                "Cells: ms per step, tokens/s (B·T per step), peak memory growth (MiB), parameters; ×r = step time "
                "over lightformer's eager step in the same run (> 1 = slower than lightformer). Differences: what "
                "is not configured equal to lightformer's model.")


def train_title(r: dict[str, Any]) -> str:
    """``nanogpt-cpu: softmax · 4 layers · D=128 · H=4 · FFN mlp x4 · position learned · V=65 · T=64 · B=12 · fp32 ·
    1 threads``."""
    m = r.get("model") or {}
    device = f" · {r['device']}" if r.get("device", "cpu") != "cpu" else ""
    return (f"{r.get('preset') or 'model'}: {m.get('schedule') or m.get('mixer')} · {m.get('num_layers')} layers · "
            f"D={m.get('dim')} · H={m.get('num_heads')} · FFN {m.get('ffn')} x{m.get('ffn_mult'):g} · position "
            f"{m.get('position')} · {'tied' if m.get('tie_weights') else 'untied'} head · V={m.get('vocab_size')} · "
            f"T={r['seq_len']} · B={r['batch']} · {r['dtype']} · {r['threads']} threads{device}")


def train_tables(records: list[dict[str, Any]]) -> list[Any]:
    """One ``Table`` per trained model shape of the latest ``mode: "train"`` records: a row per implementation
    (eager, then compiled), columns step time, tokens/s, memory, parameters, the ratio to lightformer's eager step
    and the differences."""
    from .results import bench_records
    from .table import Table, _num

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in bench_records(records):
        if r.get("mode") == TRAIN_MODE:
            key = json.dumps([r.get("model"), r["seq_len"], r["batch"], r["dtype"], r["threads"],
                              r.get("device") or "cpu"], sort_keys=True)
            groups.setdefault(key, []).append(r)
    tables = []
    for i, (key, recs) in enumerate(sorted(groups.items())):
        recs.sort(key=lambda r: (bool(r.get("compile")), r["impl"] != LIGHTFORMER, r["impl"]))
        base = next((r for r in recs if r["impl"] == LIGHTFORMER and not r.get("compile") and r["status"] == "ok"),
                    None)
        table = Table((TRAIN_MODE, key), train_title(recs[0]), f"train_{i}",
                      ["implementation", "ms / step", "tokens/s", "MiB", "parameters",
                       "×r vs lightformer", "differences"])
        for r in recs:
            name = r["impl"] + (" (compiled)" if r.get("compile") else "")
            if r["status"] != "ok":
                table.rows.append([name, r["status"], "", "", "", "", (r.get("reason") or "")[:200]])
                continue
            ratio = f"×{r['time_ms'] / base['time_ms']:.2f}" if base else "—"
            if r.get("compile") and r.get("compile_s") is not None:
                ratio += f" (compile {r['compile_s']:.0f} s)"
            table.rows.append([name, _num(r["time_ms"]), f"{r['tokens_per_s']:,.0f}", _num(r["mem_mib"]),
                               f"{r['params']:,}", ratio, "; ".join(r.get("differences") or []) or "—"])
        tables.append(table)
    return tables
