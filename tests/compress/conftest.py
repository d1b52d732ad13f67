"""A tiny language model trained for a few steps on real text, shared by the compression tests (session scope:
training once keeps every test fast)."""

from __future__ import annotations

import pathlib
import sysconfig

import pytest
import torch

from lightformer.train import Trainer
from lightformer.train.config import build_run_config

#: a few standard-library modules: real text, loaded in milliseconds (the whole stdlib corpus takes seconds)
SOURCES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "heapq.py", "bisect.py", "queue.py")


def train_tiny(out: pathlib.Path, data: pathlib.Path, *, steps: int = 80, **model) -> pathlib.Path:
    overrides = [("train.data", str(data)), ("train.max_steps", steps), ("train.out_dir", str(out)),
                 ("train.eval_interval", steps), ("model.dim", 64)] + [(f"model.{k}", v) for k, v in model.items()]
    torch.manual_seed(0)
    Trainer(build_run_config("tiny", overrides=overrides), log=lambda s: None).fit(progress_bar=False)
    return out


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> pathlib.Path:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path_factory.mktemp("data") / "stdlib_sample.py"
    path.write_bytes(b"".join((root / name).read_bytes() for name in SOURCES))
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, text_file) -> pathlib.Path:
    """An 80-step tiny softmax LM (dim 64, 2 layers, byte tokens, T=32): its checkpoint folder."""
    return train_tiny(tmp_path_factory.mktemp("trained"), text_file)
