"""``--compare-to`` regression check, the grid from flags/TOML, FLOP formulas."""

from __future__ import annotations

import argparse
import json

import pytest

from lightformer.bench import Grid, compare_to
from lightformer.bench.cli import add_bench_parser, grid_from_args
from lightformer.bench.flops import cell_flops


def rec(mixer, t, time_ms, status="ok"):
    return {"kind": "bench", "impl": "lightformer", "label": mixer, "mixer": mixer, "options": {}, "seq_len": t,
            "batch": 1, "dim": 64, "heads": 4, "dtype": "fp32", "mode": "fwd", "causal": False, "threads": 2,
            "status": status, "time_ms": time_ms, "mem_mib": 1.0}


def write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def parser():
    p = argparse.ArgumentParser()
    add_bench_parser(p.add_subparsers())
    return p


def test_compare_to_exit_codes(tmp_path, capsys):
    base = write(tmp_path / "base.jsonl", [rec("softmax", 512, 10.0), rec("softmax", 1024, 40.0),
                                           rec("tiled_softmax", 512, 5.0)])
    same = write(tmp_path / "same.jsonl", [rec("softmax", 512, 11.0), rec("softmax", 1024, 45.0),
                                           rec("tiled_softmax", 512, 50.0, status="timeout")])
    slow = write(tmp_path / "slow.jsonl", [rec("softmax", 512, 10.0), rec("softmax", 1024, 60.0)])
    r = compare_to([json.loads(x) for x in same.read_text().splitlines()],
                   [json.loads(x) for x in base.read_text().splitlines()])
    assert [round(x[-1], 3) for x in r.rows] == [1.1, 1.125] and not r.failed
    args = parser().parse_args(["bench", "--out", str(same), "--compare-to", str(base)])
    assert args.func(args) == 0
    args = parser().parse_args(["bench", "--out", str(slow), "--compare-to", str(base), "--threshold", "1.25"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "SLOWER" in out and "1.50" in out
    args = parser().parse_args(["bench", "--out", str(slow), "--compare-to", str(base), "--threshold", "1.6"])
    assert args.func(args) == 0


def test_grid_from_flags_and_toml(tmp_path):
    toml = tmp_path / "grid.toml"
    toml.write_text('mixers = ["softmax"]\nseq_lens = [64, 128]\ndim = 64\nheads = 4\ndtypes = ["fp32", "bf16"]\n'
                    'causal = [true]\npeers = "none"\nmax_memory = "1GiB"\n[options.sliding_window]\nwindow = 32\n')
    g = Grid.from_toml(toml)
    assert g.seq_lens == [64, 128] and g.dtypes == ["fp32", "bf16"] and g.max_memory_mib == 1024
    assert g.options == {"sliding_window": {"window": 32}}
    args = parser().parse_args(["bench", "--grid", str(toml), "--seq-lens", "256", "--option",
                                "sliding_window.window=16", "--modes", "fwd,decode", "--max-memory", "2GiB"])
    g = grid_from_args(args)
    assert g.seq_lens == [256] and g.dim == 64 and g.modes == ["fwd", "decode"] and g.max_memory_mib == 2048
    assert g.options["sliding_window"]["window"] == 16 and g.causal == [True]
    with pytest.raises(ValueError):
        Grid(modes=["backward"]).validate()
    with pytest.raises(ValueError):
        Grid.from_dict({"sequence": [1]})


def test_peers_follow_their_mixers():
    from lightformer import MIXERS
    from lightformer.bench.plan import expand

    mixers = ["softmax"] + (["sliding_window"] if "sliding_window" in MIXERS else [])
    cells = expand(Grid(mixers=mixers, seq_lens=[32], dim=32, heads=2, peers="all", threads=1))
    impls = [c.impl for c in cells]
    assert impls[0] == "sdpa" and "x_transformers" in impls and impls.count("lightformer") == len(mixers)
    if "sliding_window" in mixers:
        local = next(c for c in cells if c.impl == "local_attention")
        assert local.mixer == "sliding_window" and local.options["window"] == 256


def test_flops_families():
    d, b, t = 64, 2, 1024
    proj = 8 * b * t * d * d
    assert cell_flops({}, t, b, d, 4, False, "fwd", 2) == (proj + 4 * b * t * d * t, "exact")
    assert cell_flops({}, t, b, d, 4, False, "fwd+bwd", 2)[0] == 3 * (proj + 4 * b * t * d * t)
    assert cell_flops({"num_features": 256}, t, b, d, 4, True, "fwd", 1) == (proj + 4 * b * t * d * 512,
                                                                        "kernel")
    assert cell_flops({}, t, b, d, 4, False, "fwd", 1) == (proj + 4 * b * t * d * 16, "linear")
    f, fam = cell_flops({"window": 256}, t, b, d, 4, True, "decode", 1)  # one token at context T: a full window
    assert fam == "window" and f == pytest.approx(8 * b * d * d + 4 * b * d * 256)


def test_flops_a_mixer_counts_itself():
    """A mixer's own ``flops`` (state-space and recurrent mixers) wins over the option families; None defers."""
    def own(t):
        return 10.0 * t

    assert cell_flops({"window": 8}, 100, 1, 64, 4, True, "fwd", 1, own) == (1000.0, "own")
    assert cell_flops({}, 100, 1, 64, 4, True, "fwd+bwd", 1, own) == (3000.0, "own")
    assert cell_flops({}, 100, 1, 64, 4, True, "decode", 1, own) == (10.0, "own")  # growth per token
    assert cell_flops({}, 100, 1, 64, 4, True, "fwd", 1, lambda t: None)[1] == "linear"


def test_bench_cli_runs_grid_and_resumes(tmp_path, plugin_env, capsys):
    from lightformer.bench import load_records

    out = tmp_path / "b.jsonl"
    argv = ["bench", "--mixers", "bench_test_noncausal", "--seq-lens", "16,32", "--dim", "32", "--heads", "2",
            "--causal", "--peers", "none", "--plugin", plugin_env, "--out", str(out), "--no-progress"]
    args = parser().parse_args(argv)
    assert args.func(args) == 0  # unsupported cells need no subprocess
    recs = load_records(out)
    assert [(r["seq_len"], r["status"]) for r in recs] == [(16, "unsupported"), (32, "unsupported")]
    assert "2 cells" in capsys.readouterr().out
    args = parser().parse_args(argv)
    assert args.func(args) == 0 and len(load_records(out)) == 2  # resumed: nothing appended
    args = parser().parse_args([*argv, "--force"])
    assert args.func(args) == 0 and len(load_records(out)) == 4
    args = parser().parse_args(["bench", "--mixers", "no_such_mixer", "--out", str(out)])
    assert args.func(args) == 2
