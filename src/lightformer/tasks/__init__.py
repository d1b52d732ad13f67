"""Tasks: real data (text corpora, Fashion-MNIST, Shakespeare, the standard library's source) and seeded benchmark
generators (capability probes, Long Range Arena), behind one batch interface (``tasks/base.py``).

Every module of this folder is imported here, so adding a task is adding one file that registers itself in
``TASKS``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (IGNORE, KINDS, METRICS, SPLITS, TASKS, ClassificationTask, Loss, PairTask, RegressionTask,
                   SequenceTask, Task, TaskConfig, create_task, direction)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base",) and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Task", "TaskConfig", "SequenceTask", "ClassificationTask", "PairTask", "RegressionTask",
           "Loss", "create_task", "direction", "IGNORE", "KINDS", "METRICS", "SPLITS"]
