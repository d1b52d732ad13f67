"""Row softmax and its backward written into their input buffer, for kernels that keep one score buffer per block.

On CPU these call ATen's fused kernels with ``out=`` (``torch._softmax`` / ``torch._softmax_backward_data``): one
pass, no second ``[.., n, k]`` buffer, float32 inside for 16-bit inputs and rounded once, and an ``exp`` that is
not slowed by ``-inf`` entries (docs/architecture.md, CPU facts). Those are private ATen entry points, so they are
used on CPU only, where the kernels were measured, and only on contiguous buffers (a non-contiguous ``out=`` gives
wrong results), and not under ``torch.compile``. Every other device takes the public ops, computed in float32 and
copied back: a temporary per call, the same values up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: devices whose buffers take the fused private kernels in place
FUSED_DEVICES: tuple[str, ...] = ("cpu",)


def _fused(t: Tensor) -> bool:
    # under torch.compile the public ops are traced instead, so Inductor plans the buffers (the block kernels that
    # call these run eagerly, torch.compiler.disable; FAVOR+'s query features are traced)
    return t.device.type in FUSED_DEVICES and t.is_contiguous() and not torch.compiler.is_compiling()


def softmax_(s: Tensor) -> Tensor:
    """``s <- softmax(s, dim=-1)`` in place; returns ``s``.

    Args:
        s: scores ``[..., k]``, float32/bfloat16/float16, ``-inf`` for masked entries (a row needs one finite entry,
            or it becomes NaN, as ``torch.softmax`` does).
    """
    if _fused(s):
        return torch._softmax(s, -1, False, out=s)
    return s.copy_(torch.softmax(s.float(), dim=-1))


def softmax_backward_(ds: Tensor, p: Tensor, dtype: torch.dtype) -> Tensor:
    """``ds <- p ⊙ (ds − rowsum(p ⊙ ds))`` in place (the softmax Jacobian applied to dL/dP); returns ``ds``.

    Args:
        ds: dL/dP ``[..., k]``, overwritten with dL/dS.
        p: the softmax output ``[..., k]`` of the same shape.
        dtype: the dtype of the forward's input (``torch._softmax_backward_data``'s ``input_dtype``).
    """
    if _fused(ds) and p.is_contiguous():
        torch._softmax_backward_data(ds, p, -1, dtype, grad_input=ds)
        return ds
    dsf, pf = ds.float(), p.float()
    return ds.copy_(pf * (dsf - (dsf * pf).sum(-1, keepdim=True)))
