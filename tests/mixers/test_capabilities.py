"""Structured complexity: every mixer declares the power of T (and of log T) of its time, which ``advise``
extrapolates with and ``bench/flops.py`` counts by; the free-text ``complexity`` is for people only."""

from __future__ import annotations

import math

import pytest

from lightformer import MIXERS
from lightformer.mixers import Capabilities


def test_the_four_the_text_parse_misread():
    caps = {n: MIXERS.get(n).capabilities for n in MIXERS.names()
            if MIXERS.get(n).__module__.startswith("lightformer.mixers.")}  # not test plugins
    assert (caps["probsparse"].time_exponent, caps["probsparse"].log_exponent) == (1, 2)  # T·log²T
    assert (caps["kernel_rpe_fft"].time_exponent, caps["kernel_rpe_fft"].log_exponent) == (1, 1)  # T·log T
    assert caps["hilo"].time_exponent == 2 and caps["reformer_lsh"].time_exponent == 2  # T²/window, T²/bucket
    assert {n for n, c in caps.items() if c.time_exponent == 2} == {
        "softmax", "tiled_softmax", "aft", "reversed", "hilo", "reformer_lsh", "persistent_memory"}


def test_time_scale():
    quad = Capabilities(exact=True, causal=True, padding_mask=True, decode=False, complexity="T²·d", time_exponent=2)
    assert quad.time_scale(8192, 4096) == 4.0 and not quad.linear_in_length
    log2 = MIXERS.get("probsparse").capabilities
    assert log2.time_scale(8192, 4096) == pytest.approx(2 * (math.log(8192) / math.log(4096)) ** 2)


def test_time_exponent_is_required_and_checked():
    with pytest.raises(TypeError, match="time_exponent"):
        Capabilities(exact=True, causal=True, padding_mask=True, decode=False, complexity="T")
    with pytest.raises(ValueError, match="time_exponent must be 1 or 2"):
        Capabilities(exact=True, causal=True, padding_mask=True, decode=False, complexity="T", time_exponent=3)
    with pytest.raises(ValueError, match="log_exponent"):
        Capabilities(exact=True, causal=True, padding_mask=True, decode=False, complexity="T", time_exponent=1,
                     log_exponent=-1)
