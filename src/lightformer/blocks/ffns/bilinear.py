"""``bilinear``: the GLU with no activation (Shazeer 2020, Eq. 5, FFN_Bilinear; Sharkey 2023, "A technical note on
bilinear layers for interpretability"): ``W2 · ((x W) ⊙ (x V))``. Each output is a quadratic form of the input, so
the layer can be written as a third-order tensor and analysed in closed form, which is what the technical note is
about. Width and fusion as the GLU variants (``glu.py``)."""

from __future__ import annotations

from torch import Tensor

from ..base import FFNS
from .glu import GatedFFN


def _identity(x: Tensor) -> Tensor:
    return x


@FFNS.register("bilinear")
class Bilinear(GatedFFN):
    """x ``[..., D]`` -> ``[..., D]``: ``fc2(left ⊙ right)`` with ``left, right = fc1(x).chunk(2)``."""

    activation = staticmethod(_identity)
