"""Where a measurement ran: CPU model, torch version, git commit, time. Recorded in every bench record."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else ``"unknown"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(path: str | os.PathLike[str] | None = None) -> str:
    """``git rev-parse --short HEAD`` of the checkout containing this package (or ``path``); ``"unknown"`` when
    it is not a checkout, has no commit yet, or git is missing."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def timestamp() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine_info() -> dict[str, str]:
    """``{"cpu", "torch", "python", "git_commit", "timestamp"}``; torch is imported lazily."""
    import torch

    return {"cpu": cpu_model(), "torch": torch.__version__, "python": platform.python_version(),
            "git_commit": git_commit(), "timestamp": timestamp()}
