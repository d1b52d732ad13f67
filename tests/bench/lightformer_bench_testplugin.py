"""Test-only mixers for the bench tests, imported by the bench subprocesses through ``--plugin`` /
``LIGHTFORMER_PLUGINS``. Import it only inside a test (never at collection time): the registry-wide contract
suite parametrizes over every registered mixer and these are deliberately broken or restricted."""

from __future__ import annotations

from lightformer.mixers.base import MIXERS, Capabilities
from lightformer.mixers.softmax import SoftmaxAttention


@MIXERS.register("bench_test_wrong")
class WrongSoftmax(SoftmaxAttention):
    """Forward is 1% off its oracle: the correctness gate must reject it."""

    def _forward(self, x, key_padding_mask):
        return super()._forward(x, key_padding_mask) * 1.01


@MIXERS.register("bench_test_noncausal")
class NonCausalSoftmax(SoftmaxAttention):
    """Declares it cannot be causal and has no decode path."""

    capabilities = Capabilities(exact=True, causal=False, padding_mask=True, decode=False, complexity="T²·d",
                                time_exponent=2)


@MIXERS.register("bench_test_short")
class ShortSoftmax(SoftmaxAttention):
    """Accepts at most 16 tokens."""

    capabilities = Capabilities(exact=True, causal=True, padding_mask=True, decode=True, complexity="T²·d",
                                max_len=16, time_exponent=2)


@MIXERS.register("bench_test_bad_step")
class BadStepSoftmax(SoftmaxAttention):
    """Forward is exact, but ``step`` is 1% off: the decode gate must reject it."""

    def _step(self, x_t, state):
        y, state = super()._step(x_t, state)
        return y * 1.01, state
