"""``linear`` (Katharopoulos et al. 2020): options, grouped KV heads, padding corner cases, chunk-size
independence."""

from __future__ import annotations

import pytest
import torch

import lightformer

DIM, HEADS = 32, 4


def make(**options):
    torch.manual_seed(0)
    return lightformer.create_mixer("linear", dim=DIM, num_heads=HEADS, **options).eval()


@pytest.mark.parametrize("option,value", [("chunk_size", 0), ("chunk_size", 2.5), ("eps", -1.0)])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        make(**{option: value})


def test_chunk_size_does_not_change_the_result():
    x = torch.randn(2, 37, DIM, dtype=torch.float64)
    ref = make(causal=True, chunk_size=1).double()(x)
    for cs in (3, 8, 64):
        torch.testing.assert_close(make(causal=True, chunk_size=cs).double()(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_kv_heads(causal):
    m = make(num_kv_heads=1, causal=causal, chunk_size=4).double()
    x = torch.randn(2, 13, DIM, dtype=torch.float64)
    torch.testing.assert_close(m(x), m.oracle(x), rtol=1e-10, atol=1e-10)


def test_fully_padded_row_is_finite():
    m = make()
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :3] = True
    y = m(torch.randn(2, 6, DIM), key_padding_mask=mask)
    assert torch.isfinite(y).all()


def test_bf16_module():
    """A module cast to bf16 (not autocast) runs its matmuls in bf16 and stays within 5% of float32."""
    m = make(causal=True, chunk_size=8)
    x = torch.randn(2, 40, DIM)
    ref = m(x)
    y = m.to(torch.bfloat16)(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert ((y.float() - ref).norm() / ref.norm()).item() < 0.05
