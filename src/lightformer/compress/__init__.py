"""Compression of trained models (``COMPRESSORS``): one file per method, one pipeline for all of them.

    int8             dynamic int8 activations and int8 weights (torchao)          int8.py
    int4             int4 weight-only, torchao's CPU path                         int4.py
    bitnet           packed 2-bit ternary export of a BitLinear b1.58 model       bitnet.py
    magnitude_prune  global unstructured magnitude pruning (torch.nn.utils.prune) magnitude_prune.py
    svd              truncated-SVD low rank by retained energy, Greenformers' skip svd.py
    structured_prune FFN neurons and attention heads removed by magnitude or      structured_prune.py
                     diagonal-Fisher importance; the modules physically shrink
    tome             ToMe token merging with proportional attention (classifiers) tome.py

``compress_checkpoint(src, method, options, out)`` loads a trained checkpoint, compresses it, evaluates it before
and after on its task and writes a checkpoint that ``lightformer eval`` and ``sample`` load directly
(``pipeline.py``); ``restore_structure`` rebuilds a compressed model's layers when such a checkpoint is loaded.
"""

from . import bitnet, int4, int8, magnitude_prune, structured_prune, svd, tome  # noqa: F401  (registration)
from .base import COMPRESSORS, CompressConfig, Compressor
from .bitnet import PackedBitLinear
from .pipeline import CompressResult, Finetune, compress_checkpoint, restore_structure
from .svd import LowRankLinear

__all__ = ["COMPRESSORS", "CompressConfig", "Compressor", "CompressResult", "Finetune", "LowRankLinear",
           "PackedBitLinear", "compress_checkpoint", "restore_structure"]
