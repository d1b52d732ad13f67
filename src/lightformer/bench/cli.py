"""Subcommands ``bench``, ``report`` and ``advise`` for ``lightformer.cli`` (argparse).

Each ``add_*_parser(subparsers)`` adds its subcommand with ``set_defaults(func=...)``; ``func(args) -> int`` is the
exit code (0 = success; 1 = a regression found by ``--compare-to`` or no mixer fits for ``advise``; 2 = bad input).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .grid import DEVICES, DTYPES, MODEL_MODES, MODES, Grid, parse_option, resolve_device
from .units import parse_size_mib

DEFAULT_RESULTS = "results/bench.jsonl"


def _csv(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def _size(text: str) -> float:
    try:
        return parse_size_mib(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``lightformer bench``: run a grid, or ``--report`` a results file, or ``--compare-to`` a baseline."""
    p = subparsers.add_parser("bench", help="measure mixers and peers (time ms, memory MiB) in subprocesses",
                              description="Each cell runs in a fresh subprocess after a correctness gate; records "
                                          "are appended to --out (JSON lines) and measured cells are skipped on "
                                          "re-runs unless --force.")
    g = p.add_argument_group("grid (flags override --grid)")
    g.add_argument("--grid", help="TOML grid file (see lightformer.bench.grid)")
    g.add_argument("--mixers", type=_csv(str), help="comma-separated mixer names (default: every registered); in "
                                                     "the model modes architectures: mixers or schedule presets "
                                                     "(masformer, mamba_hybrid)")
    g.add_argument("--seq-lens", type=_csv(int), help="sequence lengths T in tokens, e.g. 512,1024")
    g.add_argument("--batch", type=_csv(int), help="batch sizes (default 1)")
    g.add_argument("--dim", type=int, help="model width D (default 512)")
    g.add_argument("--heads", type=int, help="attention heads H (default 8)")
    g.add_argument("--dtype", type=_csv(str), help=f"dtypes among {','.join(DTYPES)} (default fp32)")
    g.add_argument("--modes", type=_csv(str), help=f"modes among {','.join(MODES + MODEL_MODES)} (default "
                                                   "fwd+bwd); model-* time a whole model of --layers layers "
                                                   "against the all-softmax one; or train alone: whole LM "
                                                   "training steps (see the training-step flags)")
    g.add_argument("--layers", type=int, help="layers of the model-mode cells (default 4)")
    g.add_argument("--causal", action="store_true", default=None, help="causal cells (default non-causal)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="also run every cell through torch.compile (inductor): eager and compiled cells side by "
                        "side; compilation happens in the warm-up and is recorded as compile_s")
    g.add_argument("--device", choices=("cpu", "cuda", "auto"), help="where cells run (default cpu; auto = cuda "
                                                                     "when available)")
    g.add_argument("--option", action="append", default=[], metavar="MIXER.KEY=VALUE",
                   help="mixer option override, repeatable, e.g. sliding_window.window=256")
    g.add_argument("--peers", help="all | none | comma-separated peer names (default all)")
    g.add_argument("--threads", type=int, help="torch threads per cell (default: all cores)")
    g.add_argument("--warmup", type=int, help="untimed runs per cell (default 1)")
    g.add_argument("--repeats", type=int, help="timed runs per cell; time = median (default 3)")
    g.add_argument("--timeout", type=float, help="seconds per cell before status timeout (default 600)")
    g.add_argument("--max-memory", type=_size, help="address-space cap per cell, e.g. 4GiB (status oom)")
    g.add_argument("--gate-len", type=int, help="T of the correctness gate (default 64)")
    g.add_argument("--gate-tol", type=float, help="max abs error of forward vs float64 oracle (default 1e-6)")
    g.add_argument("--plugin", action="append", default=[], help="module to import first (registers mixers)")
    t = p.add_argument_group("training steps (--modes train: tokens/s of forward, backward and AdamW step of a "
                             "whole LM against x-transformers and nanoGPT of the same shape)")
    t.add_argument("--preset", help="the model, batch and context of this `lightformer train` preset (default "
                                    "stdlib-small), e.g. nanogpt-cpu, shakespeare-char")
    t.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="ModelConfig field over the preset, repeatable (dim=256, num_layers=4, mixer=softmax); "
                        "--dim, --heads, --layers, --seq-lens (context) and --batch (one value each) also apply")
    t.add_argument("--vocab", type=int, help="vocabulary size (default: the preset's tokenizer on its data)")
    t.add_argument("--peer", action="append", default=[], metavar="nanogpt:PATH",
                   help="also measure nanoGPT's GPT from this model.py (nanoGPT is not a package)")
    c = p.add_argument_group("trained checkpoints (instead of a grid)")
    c.add_argument("--checkpoints", type=_csv(str), metavar="BASE,DIR,...",
                   help="measure these checkpoints (training or `lightformer compress` output) against the first: "
                        "model size, forward ms at --seq-lens (one T, default 256) and --batch (default 8), decode "
                        "ms per token after T tokens, validation loss; --modes among eval,fwd,decode (default all); "
                        "report with `lightformer report OUT --name compression`")
    c.add_argument("--eval-iters", type=int, help="validation batches of --modes eval (default: each checkpoint "
                                                  "run's eval_iters)")
    c.add_argument("--rounds", type=int, default=1, help="round-robin passes over --checkpoints of the timed modes; "
                                                          "the report takes the median over rounds (default 1)")
    c.add_argument("--labels", type=_csv(str), metavar="NAME,...",
                   help="row names of --checkpoints (default: each run directory's name)")
    p.add_argument("--out", default=DEFAULT_RESULTS, help=f"results JSON-lines file (default {DEFAULT_RESULTS})")
    p.add_argument("--force", action="store_true", help="re-measure cells already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", metavar="RESULTS", help="write reports of RESULTS into --out-dir instead of running")
    p.add_argument("--out-dir", default="results/report", help="report directory (default results/report)")
    p.add_argument("--compare-to", metavar="BASELINE", help="compare --out with BASELINE (runs the grid first if "
                                                            "grid flags are given); exit 1 on a slowdown")
    p.add_argument("--threshold", type=float, default=1.25, help="slowdown ratio that fails --compare-to")
    p.set_defaults(func=run_bench)
    return p


_GRID_FLAGS = {"mixers": "mixers", "seq_lens": "seq_lens", "batch": "batches", "dim": "dim", "heads": "heads",
               "dtype": "dtypes", "modes": "modes", "peers": "peers", "threads": "threads", "warmup": "warmup",
               "repeats": "repeats", "timeout": "timeout_s", "max_memory": "max_memory_mib",
               "gate_len": "gate_len", "gate_tol": "gate_tol", "layers": "num_layers", "device": "device"}


def grid_from_args(args: argparse.Namespace) -> Grid:
    """The grid of ``--grid`` (or defaults) overridden by the flags given. Raises ValueError on bad values."""
    grid = Grid.from_toml(args.grid) if args.grid else Grid()
    for flag, attr in _GRID_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(grid, attr, value)
    if args.causal:
        grid.causal = [True]
    if getattr(args, "compile", None):
        grid.compile = [False, True]
    for text in args.option:
        mixer, key, value = parse_option(text)
        grid.options.setdefault(mixer, {})[key] = value
    grid.plugins = [*grid.plugins, *args.plugin]
    return grid.validate()


def _grid_given(args: argparse.Namespace) -> bool:
    return bool(args.grid or args.option or args.plugin or args.causal or getattr(args, "compile", None) or
                any(getattr(args, f, None) is not None for f in _GRID_FLAGS))


def run_bench(args: argparse.Namespace) -> int:
    from .regress import compare_to
    from .report import write_report
    from .results import load_records
    from .runner import run_sweep

    try:
        if args.modes and "train" in args.modes:
            return _run_train(args)
        train_only = [f"--{f}" for f in ("preset", "model", "vocab", "peer") if getattr(args, f, None)]
        if train_only:
            raise ValueError(f"{', '.join(train_only)} describe the model of --modes train; add --modes train")
        if getattr(args, "checkpoints", None):
            return _run_checkpoints(args)
        if getattr(args, "labels", None) or getattr(args, "eval_iters", None):
            raise ValueError("--labels and --eval-iters are for --checkpoints; give --checkpoints too")
        if args.report:
            paths = write_report(load_records(args.report), args.out_dir)
            print("\n".join(f"{k}: {v}" for k, v in paths.items() if k in ("markdown", "html")))
            return 0
        if not args.compare_to or _grid_given(args):
            records = run_sweep(grid_from_args(args), args.out, force=args.force, progress=not args.no_progress)
            counts: dict[str, int] = {}
            for r in records:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            print(f"{len(records)} cells -> {args.out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        if args.compare_to:
            if not Path(args.compare_to).exists():
                print(f"error: --compare-to {args.compare_to}: no such file", file=sys.stderr)
                return 2
            result = compare_to(load_records(args.out), load_records(args.compare_to), args.threshold)
            print(result.format())
            return 1 if result.failed else 0
        return 0
    except (ValueError, TypeError, ModuleNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


#: grid flags that mean nothing for a training step (its model comes from --preset and --model)
_NOT_FOR_TRAIN = ("grid", "mixers", "causal", "gate_len", "gate_tol", "max_memory", "compare_to", "report",
                  "checkpoints")


def _one(values: list | None, flag: str) -> Any:
    if values is None:
        return None
    if len(values) != 1:
        raise ValueError(f"--modes train measures one shape: give one {flag}, got {values}")
    return values[0]


def _run_train(args: argparse.Namespace) -> int:
    """``bench --modes train``: see ``lightformer.bench.train_cell``."""
    from .lm_peers import LM_PEERS
    from .train_cell import TRAIN_REPEATS, TRAIN_WARMUP, model_for_bench, run_train, train_cells

    if args.modes != ["train"]:
        raise ValueError(f"--modes {','.join(args.modes)}: train measures whole training steps; give it alone")
    given = [f for f in _NOT_FOR_TRAIN if getattr(args, f, None) not in (None, False, [])]
    if given or args.option or args.plugin:
        names = [f"--{f.replace('_', '-')}" for f in given] + (["--option"] if args.option else []) + \
            (["--plugin"] if args.plugin else [])
        raise ValueError(f"{', '.join(names)} cannot be used with --modes train: its model comes from --preset and "
                         "--model KEY=VALUE")
    model = parse_model_overrides(args.model)
    for flag, field_ in (("dim", "dim"), ("heads", "num_heads"), ("layers", "num_layers")):
        if getattr(args, flag) is not None:
            model[field_] = getattr(args, flag)
    nanogpt = None
    for text in args.peer:
        kind, sep, path = text.partition(":")
        if kind != "nanogpt" or not sep or not path:
            raise ValueError(f"--peer {text!r}: expected nanogpt:PATH/model.py")
        nanogpt = path
    if args.peers in (None, "all"):
        peers = ["x_transformers"] + (["nanogpt"] if nanogpt else [])
    elif args.peers == "none":
        peers = ["nanogpt"] if nanogpt else []
    else:
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        bad = [p for p in peers if p not in LM_PEERS]
        if bad:
            raise ValueError(f"--peers {','.join(bad)}: in train mode choose among {', '.join(LM_PEERS)}")
        if nanogpt and "nanogpt" not in peers:
            peers.append("nanogpt")
    lm, train = model_for_bench(args.preset, model, batch=_one(args.batch, "--batch"),
                                seq_len=_one(args.seq_lens, "--seq-lens"), vocab=args.vocab)
    cells = train_cells(lm, train, preset=args.preset or "stdlib-small", peers=peers, nanogpt_path=nanogpt,
                        compile=[False, True] if args.compile else [False],
                        dtype=_one(args.dtype, "--dtype") or "fp32", threads=args.threads,
                        warmup=TRAIN_WARMUP if args.warmup is None else args.warmup,
                        repeats=args.repeats or TRAIN_REPEATS, timeout_s=args.timeout or 600.0,
                        device=args.device or "cpu")
    records = run_train(cells, args.out, force=args.force, progress=not args.no_progress)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{len(records)} cells -> {args.out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    base = next((r for r in records if r["impl"] == "lightformer" and not r.get("compile") and r["status"] == "ok"),
                None)
    for r in records:
        name = r["impl"] + (" (compiled)" if r.get("compile") else "")
        if r["status"] != "ok":
            print(f"  {name}: {r['status']} {(r.get('reason') or '')[:200]}")
            continue
        ratio = f" · x{r['time_ms'] / base['time_ms']:.2f} lightformer's step time" if base else ""
        print(f"  {name}: {r['time_ms']:.1f} ms/step, {r['tokens_per_s']:,.0f} tokens/s, {r['params']:,} "
              f"parameters{ratio}")
    return 0


#: grid flags that mean nothing for trained checkpoints (their model fixes mixer, width, heads, dtype ...)
_NOT_FOR_CHECKPOINTS = ("grid", "mixers", "dim", "heads", "dtype", "layers", "causal", "peers", "gate_len",
                        "gate_tol", "max_memory", "compare_to", "report", "compile", "device")


def _run_checkpoints(args: argparse.Namespace) -> int:
    """``bench --checkpoints``: one subprocess per (checkpoint, mode); see ``lightformer.bench.checkpoint_cell``."""
    from .checkpoint_cell import CHECKPOINT_MODES, checkpoint_cells, run_checkpoints
    from .grid import default_threads

    given = [f for f in _NOT_FOR_CHECKPOINTS if getattr(args, f, None) not in (None, False, [])]
    if given or args.option or args.plugin:
        names = [f"--{f.replace('_', '-')}" for f in given] + (["--option"] if args.option else []) + \
            (["--plugin"] if args.plugin else [])
        raise ValueError(f"{', '.join(names)} cannot be used with --checkpoints: a checkpoint's model fixes its "
                         "architecture; give --seq-lens, --batch, --modes, --threads, --warmup, --repeats, --timeout")
    seq_lens, batches = args.seq_lens or [256], args.batch or [8]
    if len(seq_lens) != 1 or len(batches) != 1:
        raise ValueError(f"--checkpoints measures one shape: give one --seq-lens and one --batch, got {seq_lens} "
                         f"and {batches}")
    modes = args.modes or list(CHECKPOINT_MODES)
    bad = [m for m in modes if m not in CHECKPOINT_MODES]
    if bad:
        raise ValueError(f"--modes {','.join(bad)}: with --checkpoints choose among {','.join(CHECKPOINT_MODES)}")
    optional = {k: v for k, v in (("warmup", args.warmup), ("repeats", args.repeats), ("timeout_s", args.timeout))
                if v is not None}
    cells = checkpoint_cells(args.checkpoints, modes=modes, seq_len=seq_lens[0], batch=batches[0],
                             threads=args.threads or default_threads(), labels=args.labels,
                             eval_iters=args.eval_iters, rounds=args.rounds, **optional)
    records = run_checkpoints(cells, args.out, force=args.force, progress=not args.no_progress)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{len(records)} cells -> {args.out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``lightformer report RESULTS [--out-dir DIR]``: Markdown + PNG + HTML."""
    p = subparsers.add_parser("report", help="Markdown/PNG/HTML report of bench results and/or the capacity "
                                             "leaderboard of suite results")
    p.add_argument("results", nargs="?", default=DEFAULT_RESULTS, help=f"JSON-lines file (default {DEFAULT_RESULTS})")
    p.add_argument("--out-dir", default="results/report", help="directory for the report files")
    p.add_argument("--name", default="bench", help="file name stem (default bench)")
    p.set_defaults(func=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .results import load_records

    if not Path(args.results).exists():
        print(f"error: {args.results}: no such file", file=sys.stderr)
        return 2
    records = load_records(args.results)
    checkpoints = any(r.get("kind") == "checkpoint" for r in records)
    bench = any(r.get("kind") == "bench" for r in records) or not records
    capacity = any(r.get("kind") == "capacity" for r in records)
    compression: dict[str, Path] = {}
    if checkpoints:
        from .compression_report import write_compression_report

        name = f"{args.name}_compression" if bench else ("compression" if args.name == "bench" else args.name)
        compression = write_compression_report(records, args.out_dir, name=name)
        print("\n".join(f"{k}: {v}" for k, v in compression.items() if k in ("markdown", "html")))
    if bench:
        paths = write_report(records, args.out_dir, name=args.name)
        print("\n".join(f"{k}: {v}" for k, v in paths.items() if k in ("markdown", "html")))
    if capacity:
        from .leaderboard import write_leaderboard

        # one file of both kinds: the leaderboard goes beside the bench report and its Markdown is appended to it,
        # so neither overwrites the other
        name = f"{args.name}_capacity" if bench or checkpoints else ("capacity" if args.name == "bench" else
                                                                       args.name)
        board = write_leaderboard(records, args.out_dir, name=name)
        print("\n".join(f"{k}: {v}" for k, v in board.items() if k in ("markdown", "html")))
        text = board["markdown"].read_text().split("\n", 1)[1]  # without its title
        if bench:
            with open(paths["markdown"], "a", encoding="utf-8") as f:
                f.write(f"\n## Training runs (`suite` records; also {board['html'].name})\n{text}")
        elif checkpoints:  # e.g. `suite --checkpoints` test metrics of the compressed models
            with open(compression["markdown"], "a", encoding="utf-8") as f:
                f.write(f"\n## Test metrics (`suite` records; also {board['html'].name})\n{text}")
    return 0


def add_advise_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``lightformer advise --seq-len T --max-memory 2GiB --max-latency-ms 500 [--causal] [--decode] ...``."""
    p = subparsers.add_parser("advise", help="which mixer fits a length, memory and latency budget (measured)")
    p.add_argument("--seq-len", type=int, required=True, help="sequence length T in tokens")
    p.add_argument("--max-memory", type=_size, help="memory budget, e.g. 2GiB, 512MiB, 1.5G (default none)")
    p.add_argument("--max-latency-ms", type=float, help="latency budget per run in ms (default none)")
    p.add_argument("--causal", action="store_true", help="require causal mixers")
    p.add_argument("--decode", action="store_true", help="require a decode (step) path")
    p.add_argument("--mode", choices=MODES, default="fwd+bwd", help="which measurements to use (default fwd+bwd)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="which measurements to use (default fp32)")
    p.add_argument("--batch", type=int, help="only measurements at this batch (with --measure: default 1)")
    p.add_argument("--dim", type=int, help="only measurements at this width (with --measure: default 512)")
    p.add_argument("--heads", type=int, help="only measurements with these heads (with --measure: default 8)")
    p.add_argument("--task", help="rank by the capacity measured on this task (`lightformer suite` records in "
                                  "--results) instead of LM bpc (`lightformer compare`)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"JSON-lines records, comma-separated files "
                                                               f"(default {DEFAULT_RESULTS})")
    p.add_argument("--measure", action="store_true", help="first run the missing cells into the first --results")
    p.add_argument("--timeout", type=float, default=600.0, help="with --measure: seconds per cell")
    p.add_argument("--threads", type=int, help="with --measure: torch threads (default all cores)")
    p.add_argument("--plugin", action="append", default=[], help="module to import first (registers mixers)")
    p.set_defaults(func=run_advise)
    return p


def run_advise(args: argparse.Namespace) -> int:
    from .advise import advise
    from .plan import load_plugins
    from .results import load_records

    try:
        load_plugins(args.plugin)
        kwargs = dict(seq_len=args.seq_len, max_memory_mib=args.max_memory, max_latency_ms=args.max_latency_ms,
                      causal=args.causal, decode=args.decode, mode=args.mode, dtype=args.dtype, batch=args.batch,
                      dim=args.dim, heads=args.heads, task=args.task)
        files = [f for f in args.results.split(",") if f]
        result = advise([r for f in files for r in load_records(f)], **kwargs)
        if args.measure:
            from lightformer import MIXERS

            # a bench cell is one mixer layer: schedule presets are not measured here
            missing = [m for m in [c.mixer for c in result.rejected if c.reason.startswith("unmeasured")] +
                       [c.mixer for c in result.picks if c.extrapolated] if m in MIXERS]
            if missing:
                from .runner import run_sweep
                grid = Grid(mixers=sorted(set(missing)), seq_lens=[args.seq_len], batches=[args.batch or 1],
                            dim=args.dim or 512, heads=args.heads or 8, dtypes=[args.dtype], modes=[args.mode],
                            causal=[args.causal], peers="none", timeout_s=args.timeout, plugins=args.plugin)
                if args.threads:
                    grid.threads = args.threads
                run_sweep(grid, files[0])
                result = advise([r for f in files for r in load_records(f)], **kwargs)
        print(result.format())
        return 0 if result.picks else 1
    except (ValueError, TypeError, ModuleNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``lightformer compare [--mixers a,b] [--data FILE] [--budget 2m] [--seq-lens ...] [--out-dir DIR]``."""
    from .compare import DEFAULT_MIXERS

    p = subparsers.add_parser("compare", help="train the same LM with each mixer for the same budget, bench them, "
                                              "and report quality vs speed vs memory (the main job)")
    p.add_argument("--mixers", type=_csv(str), default=list(DEFAULT_MIXERS),
                   help=f"causal mixers to compare (default {','.join(DEFAULT_MIXERS)})")
    p.add_argument("--data", default="stdlib", help="'stdlib' (built-in corpus, default) or a text file")
    p.add_argument("--tokenizer", choices=["byte", "char"], help="default: byte for stdlib, char for a file")
    p.add_argument("--budget", default="45s", help="LM training time per mixer and seed, e.g. 45s, 3m (default 45s)")
    p.add_argument("--seeds", type=_csv(int), default=[0, 1], help="training seeds (default 0,1)")
    p.add_argument("--recall-budget", default=None, help="MQAR recall-probe training time per mixer and seed "
                                                         "(default half of --budget; 0 = no probe)")
    p.add_argument("--seq-len", type=int, default=None, help="the recall probe's length T (default: the largest "
                                                             "power of two from 64 that the recall budget allows)")
    p.add_argument("--seq-lens", type=_csv(int), default=[1024, 4096],
                   help="bench lengths T (default 1024,4096)")
    p.add_argument("--report-len", type=int, help="T of the quality/speed table (default 4096)")
    p.add_argument("--out-dir", default="results/compare", help="where results and reports go")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per bench cell (median)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per bench cell")
    p.add_argument("--threads", type=int, help="torch threads (default all cores)")
    p.add_argument("--retrain", action="store_true", help="train again even if the results file has the quality")
    p.set_defaults(func=run_compare_cmd)
    return p


def run_compare_cmd(args: argparse.Namespace) -> int:
    from ..train.config import parse_duration
    from .compare import run_compare

    try:
        recall = parse_duration(args.recall_budget) if args.recall_budget is not None else None
        run_compare(args.mixers, data=args.data, tokenizer=args.tokenizer, budget_s=parse_duration(args.budget),
                    seeds=args.seeds, recall_budget_s=recall, recall_len=args.seq_len, seq_lens=args.seq_lens,
                    report_len=args.report_len, out_dir=args.out_dir, repeats=args.repeats, timeout_s=args.timeout, threads=args.threads, retrain=args.retrain)
        return 0
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_suite_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``lightformer suite --tasks mqar,listops --mixers softmax,linear --budget 5m --seeds 0,1 --out FILE``."""
    p = subparsers.add_parser("suite", help="capacity: train every mixer on each task with the same model, data, "
                                            "seeds and budget; test metric of the best learning rate",
                              description="Each (task, mixer, seed) runs in a fresh subprocess; records "
                                          "(kind: capacity) are appended to --out and measured cells are skipped "
                                          "on re-runs unless --force. See lightformer.bench.suite.")
    p.add_argument("--tasks", type=_csv(str), help="comma-separated tasks (`lightformer tasks`); required unless "
                                                   "--checkpoints")
    p.add_argument("--checkpoints", type=_csv(str), metavar="DIR,...",
                   help="instead of training: evaluate these trained or compressed checkpoints on their task's test "
                        "set (--eval-n examples, default the recipe's) as capacity records, labelled by their "
                        "compression method (or --label NAME,...)")
    p.add_argument("--mixers", type=_csv(str), help="comma-separated mixers and schedule presets (masformer, "
                                                     "mamba_hybrid) (default: every mixer that can run each task's "
                                                     "direction)")
    p.add_argument("--budget", default=None, help="training time per learning rate, e.g. 90s, 5m")
    p.add_argument("--max-steps", type=int, help="step cap per learning rate (with or instead of --budget)")
    p.add_argument("--seeds", type=_csv(int), default=[0, 1], help="run seeds (default 0,1)")
    p.add_argument("--lrs", type=_csv(float), help="learning-rate grid (default: each task's recipe)")
    p.add_argument("--task-option", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="task option override, repeatable, e.g. mqar.seq_len=256")
    p.add_argument("--option", action="append", default=[], metavar="MIXER.KEY=VALUE",
                   help="mixer option override, repeatable, e.g. sliding_window.window=64")
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="model field for every task, repeatable, e.g. dim=128, block=deepnorm, ffn=swiglu, "
                        "value_residual=true, schedule='softmax@0', or one option of a table: "
                        "ffn_options.num_experts=4")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="training field for every task on top of its recipe, repeatable, e.g. batch_size=256, "
                        "warmup_steps=0 (learning rates, budget, seeds, --eval-every and threads have their own "
                        "flags)")
    p.add_argument("--label", default="", help="name of this run's variant (e.g. the --model changes), stored in "
                                               "every record and part of the cell key: one leaderboard row per "
                                               "(architecture, label)")
    p.add_argument("--eval-n", type=int, help="validation/test examples (default: each task's recipe)")
    p.add_argument("--eval-every", type=int, help="validate every N steps, so the report's learning curves have "
                                                  "points (default: once, at the end)")
    p.add_argument("--threads", type=int, help="torch threads per cell (default: all cores)")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where cells train and evaluate (default cpu; "
                                                                    "auto = cuda when available); recorded, and "
                                                                    "part of a non-CPU cell's key")
    p.add_argument("--timeout", type=float, help="seconds per cell (default 1.5 x the cell's budget + 10 min)")
    p.add_argument("--max-memory", type=_size, help="address-space cap per cell, e.g. 8GiB (status oom)")
    p.add_argument("--out", default="results/capacity.jsonl", help="results JSON-lines file")
    p.add_argument("--report-dir", default=None, help="also write the leaderboard (Markdown/PNG/HTML) here")
    p.add_argument("--force", action="store_true", help="re-measure cells already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print every record of the sweep as one JSON line each")
    p.set_defaults(func=run_suite_cmd)
    return p


#: ``ModelConfig`` fields that are option tables, settable one key at a time (``ffn_options.num_experts=4``).
OPTION_TABLES = ("block_options", "ffn_options", "norm_options")


def parse_model_overrides(texts: list[str]) -> dict[str, Any]:
    """``["dim=128", "block=deepnorm", "ffn_options.num_experts=4"]`` -> ``{"dim": 128, "block": "deepnorm",
    "ffn_options": {"num_experts": 4}}``. Values are JSON where they parse (``128``, ``true``, ``{"k": 1}``), else
    strings; ``TABLE.KEY=VALUE`` sets one key of an option table (a whole table is ``TABLE={"k": 1}``).

    Raises:
        ValueError: not ``KEY=VALUE``, or a dotted key whose first part is not an option table."""
    model: dict[str, Any] = {}
    for text in texts:
        key, value = _key_value("--model", text, "dim=128")
        table, dot, option = key.partition(".")
        if not dot:
            model[key] = value
        elif table in OPTION_TABLES and option:
            model.setdefault(table, {})[option] = value
        else:
            raise ValueError(f"--model {text!r}: a dotted key sets one option of {', '.join(OPTION_TABLES)}")
    return model


def parse_train_overrides(texts: list[str]) -> dict[str, Any]:
    """``["batch_size=256", "warmup_steps=0"]`` -> ``{"batch_size": 256, "warmup_steps": 0}`` (values as JSON where
    they parse, else strings).

    Raises:
        ValueError: not ``KEY=VALUE``."""
    train: dict[str, Any] = {}
    for text in texts:
        key, value = _key_value("--train", text, "batch_size=256")
        if "." in key:
            raise ValueError(f"--train {text!r}: expected KEY=VALUE, e.g. batch_size=256")
        train[key] = value
    return train


def _key_value(flag: str, text: str, example: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE parsed as JSON where it parses, else the string)``.

    Raises:
        ValueError: not ``KEY=VALUE`` (naming ``flag`` and an ``example``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {example}")
    return key, parse_option(f"x.{key}={value}")[2]


def _suite_checkpoints(args: argparse.Namespace) -> int:
    """``suite --checkpoints``: see ``lightformer.bench.checkpoint_capacity``."""
    from .checkpoint_capacity import run_checkpoints

    given = [flag for flag, value in (("--tasks", args.tasks), ("--mixers", args.mixers), ("--budget", args.budget),
                                      ("--max-steps", args.max_steps), ("--lrs", args.lrs), ("--model", args.model),
                                      ("--train", args.train),
                                      ("--option", args.option), ("--task-option", args.task_option),
                                      ("--eval-every", args.eval_every)) if value]
    if given:
        raise ValueError(f"{', '.join(given)} cannot be used with --checkpoints: a checkpoint is evaluated as it "
                         "was trained (give --eval-n, --label, --threads, --out, --force)")
    labels = [x.strip() for x in args.label.split(",")] if args.label else None
    records = run_checkpoints(args.checkpoints, args.out, eval_n=args.eval_n, labels=labels,
                              threads=args.threads or 1, force=args.force, log=lambda s: print(s, file=sys.stderr))
    print(f"{len(records)} checkpoints -> {args.out}")
    return 0


def run_suite_cmd(args: argparse.Namespace) -> int:
    import json

    from ..train.config import parse_duration
    from .leaderboard import write_leaderboard
    from .results import load_records
    from .suite import build_cells, run_suite

    try:
        if args.checkpoints:
            return _suite_checkpoints(args)
        if not args.tasks:
            raise ValueError("--tasks is required (or --checkpoints)")
        task_options: dict[str, dict[str, Any]] = {}
        for text in args.task_option:
            task, key, value = parse_option(text)
            task_options.setdefault(task, {})[key] = value
        mixer_options: dict[str, dict[str, Any]] = {}
        for text in args.option:
            mixer, key, value = parse_option(text)
            mixer_options.setdefault(mixer, {})[key] = value
        model = parse_model_overrides(args.model)
        try:
            budget = parse_duration(args.budget)
        except ValueError as exc:
            raise ValueError(f"--budget: {exc}") from None
        cells = build_cells(args.tasks, args.mixers, args.seeds, budget_s=budget,
                            max_steps=args.max_steps, lrs=args.lrs, task_options=task_options,
                            model_overrides=model, mixer_options=mixer_options, eval_n=args.eval_n,
                            threads=args.threads, timeout_s=args.timeout, max_memory_mib=args.max_memory,
                            label=args.label, eval_every=args.eval_every, device=resolve_device(args.device),
                            train_overrides=parse_train_overrides(args.train))
        records = run_suite(cells, args.out, force=args.force, progress=not args.no_progress,
                            log=lambda s: print(s, file=sys.stderr))
        counts: dict[str, int] = {}
        for r in records:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        print(f"{len(records)} cells -> {args.out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        if args.report_dir:
            paths = write_leaderboard(load_records(args.out), args.report_dir)
            print(f"leaderboard: {paths['markdown']} ({paths['html']})")
        if args.json:
            for r in records:
                print(json.dumps(r, sort_keys=True, default=str))
        return 0
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
