"""bf16 = "auto": autocast only where the device multiplies bf16 natively; explicit settings pass through."""

from __future__ import annotations

import pytest
import torch

from lightformer.train import precision
from lightformer.train.config import TrainConfig


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert precision.resolve_bf16("auto", "cpu") is False
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.resolve_bf16("auto", "cpu") is True
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"amx_tile", "amx_bf16"}))
    assert precision.resolve_bf16("auto", torch.device("cpu")) is True
    assert precision.resolve_bf16(False, "cpu") is False and precision.resolve_bf16(True, "cpu") is True


def test_bad_setting_names_bf16():
    with pytest.raises(ValueError, match="bf16"):
        precision.resolve_bf16("yes", "cpu")
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(bf16="fast")
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(bf16=1)
    assert TrainConfig(bf16="auto").bf16 == "auto"
