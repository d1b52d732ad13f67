"""The on-disk cache of generated task data (ListOps and Pathfinder pools): where it lives and atomic writes."""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np


def cache_dir() -> pathlib.Path:
    """Where generated task data is cached: ``$LIGHTFORMER_CACHE/tasks`` when the variable is set, else
    ``~/.cache/lightformer/tasks``."""
    root = os.environ.get("LIGHTFORMER_CACHE")
    return (pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "lightformer") / "tasks"


def atomic_savez(path: pathlib.Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` through a temporary file in the same folder and ``os.replace``, so a reader never
    sees a partial file (two writers race harmlessly: the last complete file wins).

    Raises:
        OSError: the folder cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
