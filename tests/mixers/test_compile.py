"""``torch.compile`` across the registry: every mixer whose ``capabilities.compile`` is ``None`` compiles (graph
breaks allowed) and equals its eager forward and gradients; a mixer that declares a reason really fails.

Backends, chosen so the file stays cheap on the CI's two cores:

- the registry-wide test uses ``backend="eager"``: TorchDynamo captures the graphs (guards, graph breaks, the
  hand-written autograd Functions, whose forward and backward it traces) and runs them without code generation.
  That is ~1-10 s of tracing per mixer; inductor takes 1-2 minutes per recurrent mixer at these sizes. The bench
  (``lightformer bench --compile``) runs every mixer through inductor at full size, the complete check.
- ``aot_eager`` (AOTAutograd, inductor's front end) is not used registry-wide: in torch 2.13 it fails on
  ``mamba`` and ``gated_deltanet`` (a ``view`` of ``softplus_backward``'s output whose strides differ from the
  traced ones) where inductor compiles both; it reproduces the declared failures, so the refusal test uses it.
- one small inductor test (``softmax``), the backend users get by default.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import lightformer
from lightformer import MIXERS

DIM, HEADS, T = 32, 4, 7


def _direction(name: str) -> bool:
    """Bidirectional where the mixer has it (the bench's default), else causal."""
    return not MIXERS.get(name).capabilities.non_causal


def _builtin(name: str) -> bool:
    return MIXERS.get(name).__module__.startswith("lightformer.mixers.")  # not test plugins


COMPILES = [n for n in MIXERS.names() if _builtin(n) and MIXERS.get(n).capabilities.compile is None]
REFUSES = [n for n in MIXERS.names() if _builtin(n) and MIXERS.get(n).capabilities.compile is not None]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _build(name: str) -> lightformer.Mixer:
    torch.manual_seed(0)
    return lightformer.create_mixer(name, dim=DIM, num_heads=HEADS, causal=_direction(name),
                                    **MIXERS.get(name).example_options).train()


def _fwd_bwd(module, mixer: lightformer.Mixer, x: torch.Tensor):
    """Output, input gradient and parameter gradients of ``module(x).square().sum()`` (``mixer`` holds the
    parameters, ``module`` is it or its compiled wrapper)."""
    x = x.detach().clone().requires_grad_(True)
    mixer.zero_grad(set_to_none=True)
    y = module(x)
    y.square().sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in mixer.named_parameters()}


def _assert_same(eager, compiled, tol: float):
    (y0, gx0, gp0), (y1, gx1, gp1) = eager, compiled
    torch.testing.assert_close(y1, y0, rtol=tol, atol=tol)
    torch.testing.assert_close(gx1, gx0, rtol=tol, atol=tol)
    assert gp1.keys() == gp0.keys()
    for name in gp0:
        assert (gp0[name] is None) == (gp1[name] is None), name
        if gp0[name] is not None:
            torch.testing.assert_close(gp1[name], gp0[name], rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def test_the_declared_reasons():
    assert set(COMPILES) | set(REFUSES) == {n for n in MIXERS.names() if _builtin(n)}
    assert set(REFUSES) == {"mlstm", "reformer_lsh"}
    for name in REFUSES:
        reason = MIXERS.get(name).capabilities.compile
        assert "torch 2.13" in reason and len(reason) > 40, name


def test_a_blank_reason_is_refused():
    with pytest.raises(ValueError, match="compile must be None"):
        lightformer.mixers.Capabilities(exact=True, causal=True, padding_mask=True, decode=False, complexity="T",
                                        time_exponent=1, compile=" ")


@pytest.mark.parametrize("name", COMPILES)
def test_compiles_and_matches_eager(name):
    m = _build(name)
    x = torch.randn(2, T, DIM, generator=torch.Generator().manual_seed(1))
    eager = _fwd_bwd(m, m, x)
    compiled = torch.compile(m, backend="eager")
    first = _fwd_bwd(compiled, m, x)
    _assert_same(eager, first, 1e-6)
    # the second call may still compile frames reached only from the first backward (activation checkpointing's
    # recomputation); the third must run cached graphs only: a guard failing on every call (hilo did: the bound
    # ``append`` of a fresh list on the stack at a graph break) recompiles every training step
    _fwd_bwd(compiled, m, x)
    frames = counters["frames"]["ok"]
    _assert_same(eager, _fwd_bwd(compiled, m, x), 1e-6)
    assert counters["frames"]["ok"] == frames, f"{name} recompiled on an identical third call"


@pytest.mark.parametrize("name", REFUSES)
def test_a_declared_reason_really_fails(name):
    m = _build(name)
    x = torch.randn(2, 8, DIM, generator=torch.Generator().manual_seed(1))  # mlstm: two chunks of 4 fail
    with pytest.raises(Exception):
        _fwd_bwd(torch.compile(m, backend="aot_eager"), m, x)


def test_inductor_softmax_matches_eager():
    m = _build("softmax")
    x = torch.randn(2, 16, DIM, generator=torch.Generator().manual_seed(1))
    eager = _fwd_bwd(m, m, x)
    _assert_same(eager, _fwd_bwd(torch.compile(m), m, x), 1e-5)
