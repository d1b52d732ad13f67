"""One bench cell in a fresh process: ``python -m lightformer.bench.cell '<Cell JSON>'``.

Prints one line ``LIGHTFORMER_RECORD {json}`` (the schema of ``lightformer.bench.results``) on stdout, in order:

1. Import torch and lightformer, import plugins, ``torch.set_num_threads(cell.threads)``; with
   ``cell.max_memory_mib`` set ``RLIMIT_AS`` to the current virtual size + that many MiB, so allocations beyond
   it fail (-> ``oom``).
2. Correctness gate, before any timing. A lightformer mixer is built in float64 at T_gate = min(T, gate_len)
   (retried at 4× and 8× gate_len if the small T raises ValueError, e.g. a projection longer than T) and its
   ``forward`` is compared with its ``oracle`` on the same parameters: max |forward - oracle| must be <= gate_tol
   and finite, else ``gate_failed`` with no speed. A ``decode`` cell also checks that a prefill followed by
   ``step``s equals the forward (``decode_error``). A peer has no oracle: its first (warm-up) output at the full
   shape must be finite and ``[B, T, D]``.
3. Memory baseline: a preflight run at T <= 128 in the cell's dtype and mode absorbs one-time costs (lazy
   imports, thread pools, kernel JIT); gate and preflight objects are freed, the kernel's RSS high-water mark is
   reset (``5`` written to ``/proc/self/clear_refs``; ``rss_reset`` records whether that was allowed) and
   read (``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` where that file is missing).
4. Build the module at the cell's options and dtype, make the inputs, run ``warmup`` untimed and ``repeats`` timed
   runs (``fwd`` under ``no_grad``; ``fwd+bwd`` = forward and ``backward`` of a fixed random output gradient, input
   and parameter gradients cleared between runs; ``decode`` = a context of T tokens prefilled once, untimed, by
   ``forward(x, return_state=True)``, then each run decodes ``DECODE_STEPS`` tokens by ``step`` from that context,
   and ``time_ms`` is per token, ``state_mib`` the context's ``State.nbytes()``). ``time_ms`` = median run; ``mem_mib`` = (the high-water mark after the timed runs − the baseline of step 3) / 1024,
   i.e. the peak RSS growth caused by the module, its inputs, activations, gradients and any workspace.

Model modes (``model-fwd``, ``model-fwd+bwd``) run the same steps on a whole backbone: the gate is step 2 for every
distinct mixer of the architecture, the module a ``num_layers``-layer ``Transformer`` on embeddings
(``lightformer.bench.model_cell``).

Device (``cell.device``): the gate, the module and the inputs live there; autocast uses its device type. On CUDA
every run is bracketed by ``torch.cuda.synchronize()`` and ``mem_mib`` is the growth of
``torch.cuda.max_memory_allocated`` (its peak reset at the baseline) over the memory allocated then (``mem_kind``
``"cuda"``); on the CPU it is the RSS growth above (``"rss"``).

Compiled cells (``cell.compile``): after the oracle gate (on the eager module), the module is wrapped by
``torch.compile`` (default inductor backend, graph breaks allowed). Its first call compiles (forward, and for
fwd+bwd the backward), and its output must equal the eager module's forward on the same input (max abs error
<= ``COMPILED_TOL[dtype]`` times max(1, max |output|), else ``gate_failed``); ``compile_s`` = that call's wall time
minus the median timed run. Then ``max(1, warmup)`` more untimed calls (a second call may still compile graphs
reached only from the first backward), and only then the memory baseline: the compiler's own memory (its Python
objects, generated code) is not the module's, so the peak growth is taken over the RSS after compilation (the
warm-ups' gradients freed and the C heap trimmed, ``malloc_trim``), and the bytes of the parameters and inputs,
already resident then, are added to it.

``MemoryError`` or a RuntimeError about allocation -> ``oom``; a ValueError from building at the full shape ->
``unsupported``; anything else -> ``error`` with the exception text.

Test hook: ``LIGHTFORMER_BENCH_HOOK`` = ``sleep:<s>`` (sleep before timing), ``memory_error`` (raise MemoryError
in the timed region) or ``sigkill`` (the process kills itself, like the kernel OOM killer). Not for normal use.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import statistics
import sys
import time
import traceback
from typing import Any, Callable

from .defaults import resolve_options
from .flops import DECODE_STEPS, cell_flops
from .grid import LIGHTFORMER, Cell, is_model_mode, run_mode
from .machine import machine_info
from .plan import capability_reason, load_plugins
from .results import base_record

RECORD_PREFIX = "LIGHTFORMER_RECORD "
HOOK_ENV = "LIGHTFORMER_BENCH_HOOK"
#: compiled vs eager output at the cell's full shape: allowed max abs error per unit of output scale (inductor
#: fuses and reorders reductions, so fp32 agrees to ~1e-6 relative, 16-bit types to their rounding)
COMPILED_TOL = {"fp32": 1e-4, "fp64": 1e-9, "bf16": 5e-2, "fp16": 1e-2, "amp-bf16": 5e-2}
# the dtype of the module and input; ``amp-bf16`` keeps them fp32 and runs under bf16 autocast (``_runner``)
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64", "amp-bf16": "float32"}


def is_oom(exc: BaseException) -> bool:
    """MemoryError, or a RuntimeError whose message says an allocation failed."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("allocate", "out of memory", "bad_alloc", "cannot allocate"))


def _limit_address_space(extra_mib: float) -> None:
    with open("/proc/self/statm") as fh:
        vm_bytes = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vm_bytes + int(extra_mib * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kib() -> int:
    """The process's RSS high-water mark in KiB: ``VmHWM`` of ``/proc/self/status`` (the value ``clear_refs``
    resets), else ``ru_maxrss``. Not ``ru_maxrss`` first: the kernel folds the high-water mark into it whenever a
    thread exits, after which a reset no longer lowers it and the growth of a later run reads as 0."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _hook(point: str) -> None:
    hook = os.environ.get(HOOK_ENV, "")
    if point != "timed" or not hook:
        return
    if hook.startswith("sleep:"):
        time.sleep(float(hook.split(":", 1)[1]))
    elif hook == "memory_error":
        raise MemoryError("injected by LIGHTFORMER_BENCH_HOOK=memory_error")
    elif hook == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)


def decode_error(m: Any, x: Any) -> float:
    """max |prefill of T − 4 tokens then 4 ``step``s − the causal forward| over the last 4 rows (float64)."""
    import torch

    t = x.shape[1]
    cut = max(1, t - 4)
    with torch.no_grad():
        full = m(x)
        head, state = m(x[:, :cut], return_state=True)
        rows = [head]
        for i in range(cut, t):
            y, state = m.step(x[:, i], state)
            rows.append(y[:, None])
    return (torch.cat(rows, dim=1) - full).abs().max().item()


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU, whose ops return when done."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def oracle_gate(cell: Cell) -> dict[str, Any]:
    """Float64 forward vs oracle of a lightformer mixer, on the cell's device; ``passed`` is None when every gate
    length raised ValueError (the caller then decides between unsupported and gate_failed)."""
    import torch
    from lightformer import create_mixer

    device = torch.device(cell.device)
    base = min(cell.seq_len, cell.gate_len)
    lengths = list(dict.fromkeys(min(cell.seq_len, n * base) for n in (1, 4, 8)))
    last = None
    for t in lengths:
        torch.manual_seed(0)
        try:
            m = create_mixer(cell.mixer, dim=cell.dim, num_heads=cell.heads, causal=cell.causal,
                             **resolve_options(cell.options, t)).double().to(device).eval()
            x = torch.randn(2, t, cell.dim, dtype=torch.float64).to(device)
            with torch.no_grad():
                y = m(x)
                ref = m.oracle(x)
        except ValueError as exc:
            last = exc
            continue
        except NotImplementedError as exc:
            return {"kind": "oracle", "seq_len": t, "max_abs_err": None, "tol": cell.gate_tol, "passed": False,
                    "reason": f"no oracle to check against: {exc}"}
        if y.shape != ref.shape:
            return {"kind": "oracle", "seq_len": t, "max_abs_err": None, "tol": cell.gate_tol, "passed": False,
                    "reason": f"forward shape {tuple(y.shape)} != oracle shape {tuple(ref.shape)}"}
        err = (y - ref).abs().max().item()
        ok = err == err and err <= cell.gate_tol  # err == err: not NaN
        reason = None if ok else f"max |forward - oracle| = {err:.3g} > tol {cell.gate_tol:g} at T={t} in float64"
        if ok and cell.mode == "decode" and m.capabilities.decode and cell.causal:
            derr = decode_error(m, x)
            ok = derr == derr and derr <= cell.gate_tol
            err = max(err, derr)
            reason = None if ok else (f"max |prefill + step - forward| = {derr:.3g} > tol {cell.gate_tol:g} at "
                                      f"T={t} in float64")
        return {"kind": "oracle+decode" if cell.mode == "decode" else "oracle", "seq_len": t, "max_abs_err": err,
                "tol": cell.gate_tol, "passed": ok, "reason": reason}
    return {"kind": "oracle", "seq_len": lengths[-1], "max_abs_err": None, "tol": cell.gate_tol, "passed": None,
            "reason": f"ValueError at every gate length {lengths}: {last}"}


def build(cell: Cell) -> tuple[Any, int | None]:
    """The module of ``cell`` (train mode off) and the declared ``time_exponent`` of the mixer it implements
    (``None`` for a peer of an unregistered mixer; the stack's worst layer for a model cell)."""
    from lightformer import MIXERS, create_mixer
    from .peers import get_peer

    if is_model_mode(cell.mode):
        from .model_cell import architecture_caps, build_model

        return build_model(cell), architecture_caps(cell.mixer, cell.num_layers).time_exponent

    if cell.impl == LIGHTFORMER:
        m = create_mixer(cell.mixer, dim=cell.dim, num_heads=cell.heads, causal=cell.causal,
                         **resolve_options(cell.options, cell.seq_len))
        return m, m.capabilities.time_exponent
    time_exponent = MIXERS.get(cell.mixer).capabilities.time_exponent if cell.mixer in MIXERS else None
    m = get_peer(cell.impl).build(resolve_options(cell.options, cell.seq_len), cell.seq_len, cell.dim, cell.heads,
                                  cell.causal)
    return m, time_exponent


def own_flops(cell: Cell) -> Callable[[int], float | None] | None:
    """``seq_len -> Mixer.flops`` of the lightformer mixer the cell implements (peers are counted like their mixer),
    or None for a peer of an unregistered mixer."""
    from lightformer import MIXERS, create_mixer

    if cell.mixer not in MIXERS:
        return None
    try:
        m = create_mixer(cell.mixer, dim=cell.dim, num_heads=cell.heads, causal=cell.causal,
                         **resolve_options(cell.options, cell.seq_len))
    except (ValueError, TypeError):
        return None
    return lambda t: m.flops(t, cell.batch)


def _runner(cell: Cell, module: Any, x: Any) -> Callable[[int | None], Any]:
    """``run(steps)``: one forward / forward+backward / decode of ``module`` on ``x`` per the cell's mode; for
    ``amp-bf16`` the forward (and decode) runs under bf16 autocast and the backward outside it, as in training."""
    import contextlib

    import torch

    def precision():
        if cell.dtype == "amp-bf16":
            return torch.autocast(x.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    mode = run_mode(cell.mode)
    if mode == "fwd":
        module.eval()

        def run(steps: int | None = None) -> Any:
            with torch.no_grad(), precision():
                return module(x)
        return run
    if mode == "fwd+bwd":
        module.train()
        x.requires_grad_(True)
        grad = torch.randn(x.shape, dtype=x.dtype).to(x.device)
        grads = {x.dtype: grad}

        def run(steps: int | None = None) -> Any:
            x.grad = None
            for p in module.parameters():
                p.grad = None
            with precision():
                y = module(x)
            if y.dtype not in grads:  # an autocast output is bf16: cast the fixed gradient once
                grads[y.dtype] = grad.to(y.dtype)
            y.backward(grads[y.dtype])
            return y.detach()
        return run
    module.eval()
    with torch.no_grad(), precision():  # the context: T tokens prefilled once, untimed
        _, context = module(x, return_state=True)
    new_tokens = torch.randn(cell.batch, DECODE_STEPS, cell.dim, generator=torch.Generator().manual_seed(1))
    new_tokens = new_tokens.to(device=x.device, dtype=x.dtype)

    def run(steps: int | None = None) -> Any:
        n = DECODE_STEPS if steps is None else min(steps, DECODE_STEPS)
        with torch.no_grad(), precision():
            state = context  # states are values: every run continues from the same context
            ys = []
            for t in range(n):
                y, state = module.step(new_tokens[:, t], state)
                ys.append(y)
        return torch.stack(ys, dim=1)
    run.state_bytes = context.nbytes()  # type: ignore[attr-defined]
    return run


def measure(cell: Cell) -> dict[str, Any]:
    """Run ``cell`` in this process and return its record (see the module docstring)."""
    import torch
    import lightformer  # noqa: F401  (registers the mixers)

    load_plugins(cell.plugins)
    torch.set_num_threads(cell.threads)
    rec = base_record(cell, machine_info(), status="ok", threads=torch.get_num_threads())
    reason = capability_reason(cell)
    if reason:
        rec.update(status="unsupported", reason=reason)
        return rec
    if cell.max_memory_mib is not None:
        _limit_address_space(cell.max_memory_mib)
    try:
        return _measure(cell, rec)
    except Exception as exc:  # noqa: BLE001  (every failure becomes a record; the sweep goes on)
        if is_oom(exc):
            rec.update(status="oom", reason=f"{type(exc).__name__}: {exc}"[:500])
        else:
            rec.update(status="error", reason=f"{type(exc).__name__}: {exc}"[:500] + "\n" +
                       "".join(traceback.format_exc(limit=-3))[-1500:])
        return rec


def effective_options(cell: Cell) -> dict[str, Any]:
    """The mixer's config defaults overridden by the cell's options ("T" resolved): what the FLOP formula reads,
    for the mixer and for its peers alike."""
    import dataclasses

    from lightformer import MIXERS

    base = {}
    if cell.mixer in MIXERS:
        base = {k: v for k, v in MIXERS.options(cell.mixer).items() if v is not dataclasses.MISSING}
    return {**base, **resolve_options(cell.options, cell.seq_len)}


def _preflight(cell: Cell) -> None:
    """Run the implementation once at a small T (<= 128) in the cell's dtype and mode, before the memory
    baseline, so one-time costs (lazy imports, thread pools, kernel JIT and caches) are not counted as the
    cell's memory. Failures here are ignored: the full-shape run reports them."""
    import dataclasses

    import torch

    small = dataclasses.replace(cell, seq_len=min(cell.seq_len, 128))
    try:
        module, _ = build(small)
        dtype = getattr(torch, TORCH_DTYPES[cell.dtype])
        module = module.to(device=cell.device, dtype=dtype)
        x = torch.randn(small.batch, small.seq_len, small.dim).to(device=cell.device, dtype=dtype)
        _runner(small, module, x)(4)
        sync(cell.device)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001
        pass


class _Memory:
    """Peak memory growth of the cell over a baseline: the RSS high-water mark on the CPU (``/proc``; KiB), the
    peak of ``torch.cuda.max_memory_allocated`` on CUDA (bytes). ``reset()`` takes the baseline, ``growth_mib()``
    reads the peak since then."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.kind = "cuda" if self.cuda else "rss"
        self.base = 0.0

    def reset(self, trim: bool = False) -> bool | None:
        """Take the baseline; ``trim``: first hand the C heap's free pages back to the kernel (glibc
        ``malloc_trim``), so memory that warm-up runs used and freed is not resident at the baseline and a timed run
        that reuses it still counts as growth."""
        import torch

        gc.collect()
        if trim and not self.cuda:
            _malloc_trim()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
            return None
        ok = _reset_peak_rss()
        self.base = _peak_rss_kib() / 1024.0
        return ok

    def growth_mib(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        return _peak_rss_kib() / 1024.0 - self.base


def _malloc_trim() -> None:
    """glibc's ``malloc_trim(0)``; nothing where the C library has no such function."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _resident_mib(module: Any, x: Any) -> float:
    """MiB of the parameters, buffers and input of a cell: what is already resident when a compiled cell takes its
    memory baseline after compiling (see the module docstring)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers(), x]}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def _compiled_error(cell: Cell, module: Any, x: Any, y: Any) -> tuple[float, float]:
    """max |compiled output y - eager forward of ``module`` on ``x``| and the tolerance it must stay within."""
    import contextlib

    import torch

    precision = torch.autocast(x.device.type, dtype=torch.bfloat16) if cell.dtype == "amp-bf16" else \
        contextlib.nullcontext()
    with torch.no_grad(), precision:
        ref = module(x.detach())
    ref, y = ref.double(), y.double()
    scale = max(1.0, ref.abs().max().item())
    return (y - ref).abs().max().item(), COMPILED_TOL[cell.dtype] * scale


def _measure(cell: Cell, rec: dict[str, Any]) -> dict[str, Any]:
    import torch

    if cell.impl == LIGHTFORMER:
        if is_model_mode(cell.mode):
            from .model_cell import model_gate

            gate = model_gate(cell)
        else:
            gate = oracle_gate(cell)
        rec["gate"] = {k: v for k, v in gate.items() if k != "reason"}
        if gate["passed"] is False:
            rec.update(status="gate_failed", reason=gate["reason"])
            return rec
        gc.collect()
    _preflight(cell)
    memory = _Memory(cell.device)
    rec["mem_kind"] = memory.kind
    rec["rss_reset"] = memory.reset()
    torch.manual_seed(0)
    try:
        module, time_exponent = build(cell)
    except ValueError as exc:
        rec.update(status="unsupported", reason=f"ValueError: {exc}")
        return rec
    if rec["gate"] is not None and rec["gate"]["passed"] is None:
        rec.update(status="gate_failed", reason=gate["reason"])
        return rec
    limit = getattr(module, "max_len", None) if cell.impl == LIGHTFORMER else None
    reason = capability_reason(cell, max_len=limit if isinstance(limit, int) else None)
    if reason:
        rec.update(status="unsupported", reason=reason)
        return rec
    dtype = getattr(torch, TORCH_DTYPES[cell.dtype])
    module = module.to(device=cell.device, dtype=dtype)
    x = torch.randn(cell.batch, cell.seq_len, cell.dim).to(device=cell.device, dtype=dtype)
    run = _runner(cell, torch.compile(module) if cell.compile else module, x)
    # the first untimed run is also the peers' gate (and a sanity check of every mixer at full size); a compiled
    # cell compiles in it
    t0 = time.perf_counter()
    y = run(8 if cell.mode == "decode" else None)
    sync(cell.device)
    first_ms = (time.perf_counter() - t0) * 1e3
    want = (cell.batch, min(8, DECODE_STEPS) if cell.mode == "decode" else cell.seq_len, cell.dim)
    finite = bool(torch.isfinite(y).all()) if isinstance(y, torch.Tensor) else False
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != want or not finite:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        rec.update(status="gate_failed", reason=f"output {got} (finite={finite}), expected finite {want}")
        if cell.impl != LIGHTFORMER:
            rec["gate"] = {"kind": "finite", "seq_len": cell.seq_len, "max_abs_err": None, "tol": None,
                           "passed": False}
        return rec
    if cell.impl != LIGHTFORMER:
        rec["gate"] = {"kind": "finite", "seq_len": cell.seq_len, "max_abs_err": None, "tol": None, "passed": True}
    resident = 0.0
    if cell.compile:
        err, tol = _compiled_error(cell, module, x, y)
        rec["gate"].update(compiled_max_abs_err=err, compiled_tol=tol)
        if not err <= tol:  # NaN fails too
            rec["gate"]["passed"] = False
            rec.update(status="gate_failed", reason=f"compiled output differs from eager: max abs error {err:.3g} > "
                                                    f"{tol:.3g} at T={cell.seq_len} in {cell.dtype}")
            return rec
    del y
    for _ in range(max(1, cell.warmup) if cell.compile else max(0, cell.warmup - 1)):
        run(None)
    if cell.compile:  # the baseline after compiling: see the module docstring
        sync(cell.device)
        x.grad = None  # the gradients of the warm-up are freed, so the timed runs' are counted as in eager cells
        for p in module.parameters():
            p.grad = None
        resident = _resident_mib(module, x)
        rec["rss_reset"] = memory.reset(trim=True)
    _hook("timed")
    times = []
    for _ in range(cell.repeats):
        sync(cell.device)
        t0 = time.perf_counter()
        run(None)
        sync(cell.device)
        times.append((time.perf_counter() - t0) * 1e3)
    mem_mib = memory.growth_mib() + resident
    tokens = cell.seq_len
    if cell.mode == "decode":  # per-token latency at context T
        times, tokens = [t / DECODE_STEPS for t in times], 1
        rec.update(decode_steps=DECODE_STEPS, state_mib=run.state_bytes / 2 ** 20)
    time_ms = statistics.median(times)
    if cell.compile:
        rec["compile_s"] = max(0.0, first_ms - time_ms) / 1e3
    if is_model_mode(cell.mode):
        from .model_cell import model_flops

        flops, family = model_flops(cell, module.model.config.ffn_hidden)
    else:
        flops, family = cell_flops(effective_options(cell), cell.seq_len, cell.batch, cell.dim, cell.heads,
                                   cell.causal, cell.mode, time_exponent, own_flops(cell))
    rec.update(time_ms=time_ms, times_ms=times, mem_mib=mem_mib, flops=flops,
               flops_family=family, gflops=flops / (time_ms * 1e-3) / 1e9,
               tokens_per_s=cell.batch * tokens / (time_ms * 1e-3))
    return rec


def cell_main(module: str, from_json: Callable[[str], Any], measure_: Callable[[Any], dict[str, Any]],
              argv: list[str] | None = None) -> int:
    """The entry point of a measuring subprocess ``python -m <module> '<cell JSON>'``: measure the cell and print
    its record as one ``RECORD_PREFIX`` line (what ``runner.run_module`` reads); 2 on a wrong command line."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {module} '<cell JSON>'", file=sys.stderr)
        return 2
    record = measure_(from_json(argv[0]))
    sys.stdout.write(RECORD_PREFIX + json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    return cell_main("lightformer.bench.cell", Cell.from_json, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
