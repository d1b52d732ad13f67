"""Blocks, FFNs and norms: the ``BLOCKS``, ``FFNS`` and ``NORMS`` registries (``base.py``) and their variants, one
file each (blocks here, FFNs in ``ffns/``, norms in ``norms/``)."""

from . import deepnorm, macaron, parallel, post_norm, pre_norm, sandwich, sub_ln  # noqa: F401  (registration)
from . import ffns, norms  # noqa: F401  (registration)
from .base import (BLOCKS, FFNS, NORMS, Block, BlockConfig, FFN, FFNConfig, NormConfig, collect_aux_loss,
                   collect_aux_stats, create_norm)

__all__ = ["BLOCKS", "FFNS", "NORMS", "Block", "BlockConfig", "FFN", "FFNConfig", "NormConfig", "collect_aux_loss",
           "collect_aux_stats", "create_norm"]
