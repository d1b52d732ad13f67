"""Token mixers, one file per paper/family. Importing this package imports every module in it, and each mixer
module registers its class in ``MIXERS`` (so a new mixer needs no edit here)."""

import importlib
import pkgutil

from .base import MIXERS, Capabilities, Mixer, MixerConfig

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MIXERS", "Capabilities", "Mixer", "MixerConfig"]
