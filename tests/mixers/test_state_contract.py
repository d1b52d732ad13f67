"""The state half of the mixer contract, for every registered mixer with ``capabilities.decode``: a prefix
prefilled by ``forward(..., return_state=True)`` and continued by ``step`` (or by a second ``forward``) equals the
full forward; ``step`` and ``forward`` never modify the state they were given (branching from one state twice gives
two independent continuations); ``select`` picks batch rows; ``nbytes`` counts the state; bad calls name the
argument. All in float64, so any difference is a wrong state, not rounding."""

from __future__ import annotations

import pytest
import torch

import lightformer
from lightformer import MIXERS
from lightformer.nn.kv_cache import KVCache
from lightformer.nn.state import State

DIM, HEADS, T = 32, 4, 23
DECODERS = [n for n in MIXERS.names() if MIXERS.get(n).capabilities.decode]
TOL = dict(rtol=1e-10, atol=1e-10)


def build(name: str) -> lightformer.Mixer:
    torch.manual_seed(0)
    m = lightformer.create_mixer(name, dim=DIM, num_heads=HEADS, causal=True, **MIXERS.get(name).example_options)
    return m.double().eval()


def inputs(b: int = 2, t: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_steps(m, x, state):
    ys = []
    for i in range(x.shape[1]):
        y, state = m.step(x[:, i], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def snapshot(state: State):
    return state.length, [t.clone() for t in state.tensors()]


def assert_unchanged(state: State, snap) -> None:
    length, tensors = snap
    assert state.length == length
    now = list(state.tensors())
    assert len(now) == len(tensors)
    for a, b in zip(now, tensors):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_every_causal_decoder_is_covered():
    assert {"softmax", "sliding_window", "linear", "performer", "linear_relu"} <= set(DECODERS)


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("cut", [1, 9, T - 1])
def test_prefill_then_steps_equals_forward(name, cut):
    m = build(name)
    x = inputs()
    with torch.no_grad():
        full = m(x)
        head, state = m(x[:, :cut], return_state=True)
        assert isinstance(state, State) and state.length == cut
        tail, end = run_steps(m, x[:, cut:], state)
        torch.testing.assert_close(torch.cat([head, tail], dim=1), full, **TOL)
        # a second prefill from the state equals the steps, and ends in an equivalent state
        tail2, end2 = m(x[:, cut:], state=state, return_state=True)
        torch.testing.assert_close(tail2, full[:, cut:], **TOL)
        assert end2.length == end.length == T
        more = inputs(2, 3, seed=7)
        torch.testing.assert_close(run_steps(m, more, end2)[0], run_steps(m, more, end)[0], **TOL)


@pytest.mark.parametrize("name", DECODERS)
def test_step_and_forward_never_modify_their_state(name):
    m = build(name)
    x = inputs()
    with torch.no_grad():
        _, state = m(x[:, :11], return_state=True)
        snap = snapshot(state)
        a, _ = run_steps(m, x[:, 11:15], state)
        assert_unchanged(state, snap)
        m(x[:, 11:], state=state, return_state=True)
        assert_unchanged(state, snap)
        # two branches from the same state: the second must not see the first's tokens
        other = inputs(2, 4, seed=3)
        b, _ = run_steps(m, other, state)
        a_again, _ = run_steps(m, x[:, 11:15], state)
        torch.testing.assert_close(a_again, a, **TOL)
        fresh = m(torch.cat([x[:, :11], other], dim=1))[:, 11:]
        torch.testing.assert_close(b, fresh, **TOL)


@pytest.mark.parametrize("name", DECODERS)
def test_select_picks_batch_rows(name):
    m = build(name)
    x = inputs(3)
    with torch.no_grad():
        _, state = m(x[:, :10], return_state=True)
        index = torch.tensor([2, 0, 2])
        picked = state.select(index)
        y, _ = run_steps(m, x[index, 10:], picked)
        torch.testing.assert_close(y, m(x[index])[:, 10:], **TOL)
        with pytest.raises(ValueError, match="index"):
            state.select(torch.tensor([[0]]))


@pytest.mark.parametrize("name", DECODERS)
def test_nbytes_counts_the_state(name):
    m = build(name)
    with torch.no_grad():
        empty = m.init_state(2, dtype=torch.float64)
        _, s1 = m(inputs(2, 4), return_state=True)
        _, s2 = m(inputs(2, 20), return_state=True)
    assert s1.nbytes() == sum(t.numel() * t.element_size() for t in s1.tensors()) > 0
    if isinstance(s2, KVCache) and s2.max_keep is None:
        # a full KV cache (softmax, tiled_softmax; persistent_memory's memory is a parameter, not state):
        # 2 (K and V) x B x H x T x d x 8 bytes
        assert s2.nbytes() == 2 * 2 * HEADS * 20 * (DIM // HEADS) * 8
        assert empty.nbytes() == 0
    elif not name.startswith("sliding"):
        assert s2.nbytes() == s1.nbytes()  # a fixed-size recurrent state


@pytest.mark.parametrize("name", DECODERS)
def test_state_errors_name_the_argument(name):
    m = build(name)
    x = inputs()
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(x, key_padding_mask=torch.ones(2, T, dtype=torch.bool), return_state=True)
    with pytest.raises(TypeError, match="state"):
        m(x, state=object())


def test_state_on_a_mixer_without_decode_or_bidirectional():
    plain = [n for n in MIXERS.names() if not MIXERS.get(n).capabilities.decode and MIXERS.get(n).capabilities.causal]
    m = lightformer.create_mixer(plain[0], dim=DIM, num_heads=HEADS, causal=True,
                                 **MIXERS.get(plain[0]).example_options)
    with pytest.raises(NotImplementedError, match="state/return_state"):
        m(inputs(), return_state=True)
    bidir = lightformer.create_mixer("softmax", dim=DIM, num_heads=HEADS, causal=False)
    with pytest.raises(ValueError, match="causal=False"):
        bidir(inputs(), return_state=True)


def test_kv_cache_branching_copies_only_when_needed():
    """The linear decode path writes in place (amortised O(1)); a branch copies once, then writes in place."""
    m = build("softmax")
    x = inputs()
    with torch.no_grad():
        _, s = m(x[:, :5], return_state=True)
        _, s1 = m.step(x[:, 5], s)
        assert s1.storage is s.storage  # the newest user appends in place
        _, s2 = m.step(x[:, 6], s)  # a branch from s: s1 already wrote past s's end
        assert s2.storage is not s.storage
        _, s3 = m.step(x[:, 7], s2)
        assert s3.storage is s2.storage
