"""Fixtures of the bench tests: tiny grids and a subprocess environment that can import the test plugin."""

from __future__ import annotations

import os
import pathlib

import pytest

HERE = pathlib.Path(__file__).resolve().parent
PLUGIN = "lightformer_bench_testplugin"


@pytest.fixture
def plugin_env(monkeypatch):
    """Let bench subprocesses import the test-only plugin; the parent imports it lazily (never at collection)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("LIGHTFORMER_BENCH_HOOK", raising=False)
    return PLUGIN


@pytest.fixture
def tiny_grid():
    """A factory of the smallest grids that still exercise the harness (dim 32, 2 heads, 1 thread)."""
    from lightformer.bench import Grid

    def make(**kw):
        base = dict(mixers=["softmax"], seq_lens=[16], batches=[1], dim=32, heads=2, dtypes=["fp32"],
                    modes=["fwd"], causal=[False], peers="none", threads=1, warmup=1, repeats=1, timeout_s=120.0)
        base.update(kw)
        return Grid(**base)
    return make
