"""Every registered mixer runs forward and backward on the ``meta`` device: no hard-coded CPU tensor, CPU-only
autocast or host read in its code path, so it runs wherever torch runs. ``meta`` tensors have shapes and no data:
mixing them with a CPU tensor fails, and so does any read of a value on the host (``.item()``, ``bool()``,
``.tolist()``), which on an accelerator is a device sync.

The mixers below read data on the host once per call, to plan an algorithm whose structure depends on the values
(a sparsity pattern, bucket counts, a selection). They run on CUDA, with that one sync per call; the test checks
that they still need it, so a mixer that stops reading drops off the list.
"""

from __future__ import annotations

import pytest
import torch

import lightformer
from lightformer.mixers import MIXERS

#: (mixer, causal) -> why its plan reads values on the host (one sync per call on an accelerator)
_BOTH = (True, False)
HOST_READS = {
    **{("bigbird", True): "which causal query rows see no key decides the empty-row path of the global rows"},
    **{("hilo", c): "whether a block has rows without keys decides the empty-row path of the blocked kernel"
       for c in _BOTH},
    **{("longformer", c): "its global-token mask decides which key blocks of the window need masking" for c in _BOTH},
    **{(m, c): "FAVOR+'s overflow shift is the largest squared norm of the projection rows (favor_key_shift)"
       for m in ("performer", "kernel_rpe_fft") for c in _BOTH},
    ("probsparse", True): "the number of active (causal) queries per row sizes the selected-query buffers",
    ("reformer_lsh", True): "the number of buckets sizes the sorted chunks of the causal path",
}
#: options a mixer needs to be built at T = 128
NEEDS_MAX_LEN = ("aft", "aft_local", "kernel_rpe_fft", "gfnet", "linformer")


def _directions(name):
    caps = MIXERS.get(name).capabilities
    return [c for c in (True, False) if (caps.causal if c else caps.non_causal)]


CASES = [(name, causal) for name in MIXERS.names() for causal in _directions(name)]


def _run_on_meta(name, causal):
    options = {"max_len": 128} if name in NEEDS_MAX_LEN else {}
    with torch.device("meta"):
        mixer = lightformer.create_mixer(name, dim=64, num_heads=4, causal=causal, **options)
        x = torch.randn(2, 128, 64, requires_grad=True)
    y = mixer(x)
    y.sum().backward()
    return y, x


@pytest.mark.parametrize("name,causal", CASES, ids=[f"{n}-{'causal' if c else 'bidir'}" for n, c in CASES])
def test_forward_and_backward_run_on_the_meta_device(name, causal):
    if (name, causal) in HOST_READS:
        with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
            _run_on_meta(name, causal)
        return
    y, x = _run_on_meta(name, causal)
    assert y.device.type == "meta" and y.shape == (2, 128, 64)
    assert x.grad is not None and x.grad.shape == x.shape


def test_the_declared_list_names_registered_mixers():
    assert set(HOST_READS) <= set(CASES)
