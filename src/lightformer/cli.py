"""``lightformer`` command line: thin — it parses, calls the library, prints.

    lightformer list                      mixers and their capabilities
    lightformer tasks [show NAME --n 3]   tasks and their options; decoded examples with their targets
    lightformer train [--preset P] [--config run.toml] [--model.mixer=sliding_window --model.mixer_options.window=64]
    torchrun --standalone --nproc_per_node=N -m lightformer.cli train ...   the same, data-parallel on N processes
    lightformer eval --checkpoint DIR     validation loss / bpc of a checkpoint
    lightformer sample --checkpoint DIR   generate text
    lightformer compress --checkpoint DIR --method int8 --out DIR2   compress a checkpoint (int8, int4, prune, svd)
    lightformer bench | report | advise | compare | suite   measure and choose (see `lightformer <cmd> --help`)
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
from typing import Any

import torch

from . import MIXERS
from .bench import cli as bench_cli
from .train.config import PRESETS, build_run_config, parse_value


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in MIXERS.names(args.pattern):
        caps = MIXERS.get(name).capabilities
        rows.append({"name": name, "exact": caps.exact, "causal": caps.causal, "non_causal": caps.non_causal,
                     "padding_mask": caps.padding_mask, "decode": caps.decode, "complexity": caps.complexity,
                     "max_len": caps.max_len, "positions": sorted(caps.positions),
                     "options": {k: v for k, v in MIXERS.options(name).items()
                                 if k not in ("dim", "num_heads", "causal", "dropout", "position")}})
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    yes = {True: "yes", False: "-"}
    print(f"{'mixer':<16} {'exact':<6} {'causal':<7} {'bidir':<6} {'mask':<5} {'decode':<7} {'positions':<16} "
          "complexity")
    for r in rows:
        print(f"{r['name']:<16} {yes[r['exact']]:<6} {yes[r['causal']]:<7} {yes[r['non_causal']]:<6} "
              f"{yes[r['padding_mask']]:<5} {yes[r['decode']]:<7} {','.join(r['positions']):<16} {r['complexity']}")
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    """Registered blocks, FFNs and norms with their options, and the schedule presets."""
    from .blocks import BLOCKS, FFNS, NORMS
    from .models.schedule import SCHEDULE_PRESETS

    rows = []
    for kind, registry in (("block", BLOCKS), ("ffn", FFNS), ("norm", NORMS)):
        for name in registry.names(args.pattern):
            cls = registry.get(name)
            doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            rows.append({"kind": kind, "name": name, "doc": doc,
                         "options": {k: v for k, v in registry.options(name).items() if k not in ("dim", "mult", "dropout")}})
    for name, (expand, what) in SCHEDULE_PRESETS.items():
        if args.pattern is None or fnmatch.fnmatchcase(name, args.pattern):
            rows.append({"kind": "schedule", "name": name, "doc": what, "options": {"num_layers=8": expand(8)}})
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    for r in rows:
        opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items())
        print(f"{r['kind']:<9} {r['name']:<15} {opts}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import TASKS, create_task

    if args.action == "show":
        if not args.name:
            raise ValueError("tasks show NAME: name a task (see `lightformer tasks`)")
        options = dict(parse_option_pairs(args.option))
        task = create_task(args.name, **options)
        batch = task.sample(args.split, args.n, seed=args.seed)
        print(task.describe())
        for i in range(args.n):
            print(f"--- example {i} ({args.split})")
            print(task.format_example(batch, i))
        return 0
    rows = []
    for name in TASKS.names(args.name):
        cls = TASKS.get(name)
        rows.append({"name": name, "kind": cls.kind, "metrics": list(cls.metrics),
                     "doc": (cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__ or "")
                     .strip().splitlines()[0], "options": TASKS.options(name)})
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    for r in rows:
        opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items())
        print(f"{r['name']:<16} {r['kind']:<10} {','.join(r['metrics']):<14} {r['doc']}\n{'':<16} options: {opts}")
    return 0


def parse_option_pairs(items: list[str]) -> list[tuple[str, Any]]:
    """``["seq_len=256", "vocab_size=8192"]`` -> ``[("seq_len", 256), ("vocab_size", 8192)]`` (TOML literals)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r}: expected key=value, e.g. seq_len=256")
        out.append((key.strip(), parse_value(value.strip())))
    return out


def parse_overrides(extra: list[str]) -> list[tuple[str, Any]]:
    """``--model.x=1 --train.y 2`` -> ``[("model.x", 1), ("train.y", 2)]``; anything else is an error."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or not arg[2:].startswith(("model.", "train.", "task.")):
            raise SystemExit(f"error: unrecognized argument {arg!r} (overrides look like --model.dim=256 or "
                             "--task.options.seq_len=256)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(extra):
            key, value = arg[2:], extra[i + 1]
            i += 2
        else:
            raise SystemExit(f"error: override {arg!r} needs a value")
        out.append((key, parse_value(value)))
    return out


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from .train import distributed

    # a torchrun worker: join the process group first, so a bad flag fails on every rank alike
    dist = distributed.init(args.device) if distributed.launched_by_torchrun() else None
    try:
        return _train(args, extra, dist)
    finally:
        if dist is not None:
            distributed.shutdown()


def _train(args: argparse.Namespace, extra: list[str], dist) -> int:
    from .train import Trainer

    overrides = parse_overrides(extra)
    shortcuts = {"data": "train.data", "tokenizer": "train.tokenizer", "max_steps": "train.max_steps",
                 "max_time": "train.max_time", "out": "train.out_dir", "mixer": "model.mixer", "seed": "train.seed",
                 "threads": "train.threads", "task": "task.name", "grad_accum": "train.grad_accum",
                 "compile": "train.compile"}
    for attr, key in shortcuts.items():
        value = getattr(args, attr)
        if value is not None:
            overrides.append((key, value))
    if args.bf16 is not None:
        overrides.append(("train.bf16", args.bf16))
    if args.max_time is not None and args.max_steps is None:
        overrides.append(("train.max_steps", None))  # a time budget alone: no step cap from the preset
    config = build_run_config(args.preset, args.config, overrides)
    trainer = Trainer(config, device=None if dist else args.device, dist=dist)
    main = trainer.dist.is_main  # only rank 0 prints
    if main:
        print(f"task: {trainer.task.describe()}", file=sys.stderr)
        if trainer.task.kind == "lm":
            print(f"data: {trainer.corpus.describe()}", file=sys.stderr)
        print(f"model: {sum(p.numel() for p in trainer.model.parameters()):,} parameters, mixer "
              f"{config.model.mixer} {config.model.mixer_options or ''}; device {trainer.device}, "
              f"{trainer.dist.world_size} process(es) x {torch.get_num_threads()} thread(s)", file=sys.stderr)
    if args.resume:
        trainer.resume(args.resume)
    result = trainer.fit(progress_bar=not args.no_progress)
    if main:
        print(f"validation: {format_metrics(result.metrics, result.tokenizer)} after {result.steps} steps, "
              f"{result.tokens:,} tokens, {result.seconds:.1f} s, {result.tokens_per_s:,.0f} tokens/s")
        if args.json:
            print(json.dumps(result.summary()))
    return 0


def format_metrics(metrics: dict[str, float], tokenizer: str | None = None) -> str:
    """``{"val_loss": 1.2, "val_bpc": 1.7}`` -> ``"loss 1.2000 nats/char, bpc 1.7000 bits/char"``."""
    unit = {"char": "char", "byte": "byte"}.get(tokenizer or "", "token")
    units = {"loss": f" nats/{unit}" if tokenizer else "", "bpc": f" bits/{unit}"}
    parts = []
    for key, value in metrics.items():
        base = key.split("_", 1)[1] if key.startswith(("val_", "test_")) else key
        parts.append(f"{base} {value:.4f}{units.get(base, '')}")
    return ", ".join(parts)


def cmd_eval(args: argparse.Namespace) -> int:
    from .train.checkpoint import load_trained
    from .train.distributed import resolve_device
    from .train.evaluate import evaluate
    from .train.precision import resolve_bf16

    device = resolve_device(args.device)
    model, task, config, state = load_trained(args.checkpoint)
    model.to(device)
    if args.data:
        if task.kind != "lm":
            raise ValueError(f"--data: the checkpoint's task {task.name!r} is not a text corpus")
        task = dataclasses.replace(config, train=dataclasses.replace(config.train, data=args.data)).build_task(
            tokenizer=task.tokenizer)
    tc = config.train
    metrics = evaluate(model, task, args.split, n=(args.iters or tc.eval_iters) * tc.batch_size,
                       batch_size=tc.batch_size, bf16=resolve_bf16(tc.bf16, device), device=device)
    count = metrics.pop("count")
    summary = {**{f"{args.split}_{k}": v for k, v in metrics.items()}, "steps": state["step"],
               "tokens": state["tokens"], "seconds": state["elapsed"], "task": task.name, "count": count}
    where = task.corpus.name if task.kind == "lm" else task.describe()
    tokenizer = task.tokenizer.kind if task.kind == "lm" else None
    print(f"{args.split} on {where}: {format_metrics(metrics, tokenizer)} (checkpoint at step {state['step']})")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .train.checkpoint import load_trained
    from .train.distributed import resolve_device

    device = resolve_device(args.device)
    model, task, config, _ = load_trained(args.checkpoint)
    model.to(device)
    if task.kind != "lm":
        raise ValueError(f"--checkpoint: sampling needs a language model; this one was trained on {task.name!r}")
    tokenizer = task.tokenizer
    prompt = args.prompt if args.prompt else "\n"
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.int64, device=device)
    if args.max_new_tokens is None:  # as many as the model's absolute positions allow
        bounded = config.model.position in ("learned", "sinusoidal")
        args.max_new_tokens = config.model.max_len - idx.shape[1] if bounded else 500
    gen = torch.Generator(device).manual_seed(args.seed)  # on the device the tokens are drawn on
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         use_cache=not args.no_cache, generator=gen)
    print(tokenizer.decode(out[0].tolist()))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from .compress import compress_checkpoint

    result = compress_checkpoint(args.checkpoint, args.method, dict(parse_option_pairs(args.option)), args.out,
                                 eval_iters=args.eval_iters, log=lambda line: print(line, file=sys.stderr))
    print("\n".join(result.lines()))
    if args.json:
        print(json.dumps(result.summary()))
    return 0


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda|auto`` (``train/distributed.resolve_device``)."""
    from .train.distributed import DEVICES

    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where to run: auto = CUDA when present, else CPU (default); under torchrun each rank takes "
                        "GPU LOCAL_RANK")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightformer", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered mixers and their capabilities")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*softmax*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("blocks", help="registered blocks, FFNs, norms (with their options) and schedule presets")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*glu'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_blocks)

    p = sub.add_parser("tasks", help="registered tasks and their options; `tasks show NAME` prints examples")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", default=None, help="task name (show) or shell-style filter (list)")
    p.add_argument("--n", type=int, default=3, help="examples to show")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--seed", type=int, default=None, help="draw seed (default: the split's canonical set)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="task option, repeatable")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("train", help="train a model on a task (TOML config, preset and dotted overrides)",
                       epilog="Any field can be overridden: --model.mixer=sliding_window "
                              "--model.mixer_options.window=64 --train.lr=3e-4. Presets: " + ", ".join(PRESETS))
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="named preset (default: stdlib-small "
                   "when no --config is given)")
    p.add_argument("--config", default=None, help="TOML file with [model] and [train] tables")
    p.add_argument("--data", default=None, help="'stdlib' (built-in) or a text file")
    p.add_argument("--tokenizer", default=None, choices=["byte", "char"])
    p.add_argument("--mixer", default=None, help="registered mixer name (see `lightformer list`)")
    p.add_argument("--task", default=None, help="registered task (see `lightformer tasks`; default lm); its "
                   "options: --task.options.KEY=VALUE")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-time", default=None, help="wall-clock budget such as 90s, 10m, 1h")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast")
    p.add_argument("--out", default=None, help="checkpoint folder")
    p.add_argument("--resume", default=None, help="continue from this checkpoint folder")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step on each process")
    p.add_argument("--compile", action="store_true", default=None,
                   help="run the training forward/backward through torch.compile (train.compile=true)")
    add_device_argument(p)
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the results "
                   "(tokens_per_s: summed over the processes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train, takes_extra=True)

    p = sub.add_parser("eval", help="the task's metrics of a checkpoint (validation by default)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="val", choices=["val", "test", "train"])
    p.add_argument("--data", default=None, help="lm: another file to evaluate on (default: the training data)")
    p.add_argument("--iters", type=int, default=None, help="validation batches (default: the run's eval_iters)")
    add_device_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: up to the model's max_len with absolute positions, else 500")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="re-run the whole sequence per token")
    add_device_argument(p)
    p.set_defaults(func=cmd_sample)

    from .compress import COMPRESSORS

    methods = "; ".join(name + "".join(f" {k}={v!r}" for k, v in COMPRESSORS.options(name).items() if k != "exclude")
                        for name in COMPRESSORS.names())
    p = sub.add_parser("compress", help="compress a trained checkpoint (" + ", ".join(COMPRESSORS.names()) + "): "
                       "sizes and validation loss before and after; writes a checkpoint eval and sample load",
                       epilog=f"Methods and their default options: {methods}. Every method: exclude='PATTERN' "
                              "(layers left unchanged). See the README's Compression section.")
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (its out_dir)")
    p.add_argument("--method", required=True, help=", ".join(COMPRESSORS.names()))
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option, repeatable")
    p.add_argument("--out", required=True, help="folder for the compressed checkpoint")
    p.add_argument("--eval-iters", type=int, help="validation batches measured before and after (default: the "
                                                  "run's eval_iters; fewer where the compressed forward is slow)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the results")
    p.set_defaults(func=cmd_compress)

    for add in (bench_cli.add_bench_parser, bench_cli.add_report_parser, bench_cli.add_advise_parser,
                bench_cli.add_compare_parser, bench_cli.add_suite_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if getattr(args, "takes_extra", False):
            if args.preset is None and args.config is None:
                args.preset = "stdlib-small"
            return args.func(args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"lightformer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
