"""torchao, imported on demand: the quantisation methods' one outside dependency (the ``compress`` extra).

torchao's API moves between releases (configs renamed, tensor classes replaced, ``torchao.sparsity`` deleted after
0.18.0), so the project pins one version, ``TORCHAO_VERSION``, in ``pyproject.toml``; another installed version
gets a warning, and the version that quantised a checkpoint is recorded in it.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from types import ModuleType

#: the torchao release the quantisation methods are written and tested against (pyproject's ``compress`` extra)
TORCHAO_VERSION = "0.18.0"


def torchao() -> ModuleType:
    """The ``torchao`` module.

    Raises:
        ImportError: torchao is not installed (the message says how to install the pinned version).
    """
    # at import its x86 wheels log a failed load of every CUDA-only extension (unused on CPU), and torch logs a
    # deprecation of how it registers an enum with torch.compile: neither concerns eager CPU inference
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        module = importlib.import_module("torchao")
    except ImportError as e:
        raise ImportError(f"the quantisation methods need torchao=={TORCHAO_VERSION}: "
                          f"pip install 'lightformer[compress]' (or pip install torchao=={TORCHAO_VERSION})") from e
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    version = getattr(module, "__version__", "?")
    if not str(version).startswith(TORCHAO_VERSION):
        warnings.warn(f"torchao {version} is installed; lightformer's quantisation is written for torchao=="
                      f"{TORCHAO_VERSION}, whose API it uses", RuntimeWarning, stacklevel=2)
    return module


def version() -> str:
    return str(getattr(torchao(), "__version__", "?"))
