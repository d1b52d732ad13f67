"""Shared test settings: deterministic, single-threaded math where it matters, and the shared data path."""

from __future__ import annotations

import pathlib

import pytest
import torch

SHAKESPEARE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shakespeare_path() -> pathlib.Path:
    if not SHAKESPEARE.exists():
        pytest.skip(f"tinyshakespeare absent at {SHAKESPEARE}")
    return SHAKESPEARE
