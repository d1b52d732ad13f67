"""lightformer: faster and lighter Transformers, measured.

Every token mixer of the efficient-Transformer literature behind one interface (``Mixer``), checked against a naive
oracle, measured side by side on your own hardware.
"""

from __future__ import annotations

from typing import Any

from .mixers import MIXERS, Capabilities, Mixer, MixerConfig
from .models import LanguageModel, ModelConfig, SequenceClassifier, Transformer
from .tasks import TASKS, Task, create_task

__version__ = "0.1.0"


def create_mixer(name: str, *, dim: int, num_heads: int, causal: bool = False, **options: Any) -> Mixer:
    """Build the registered mixer ``name``: ``x [B, T, dim] -> [B, T, dim]``.

    Raises:
        ValueError: unknown ``name`` (the message lists the registered ones) or an option value it cannot honour.
        TypeError: an unknown option (the message names it and lists the valid ones).
    """
    return MIXERS.create(name, dim=dim, num_heads=num_heads, causal=causal, **options)


def list_mixers(pattern: str | None = None) -> list[str]:
    """Registered mixer names, sorted; ``pattern`` is a shell-style filter such as ``"*softmax*"``."""
    return MIXERS.names(pattern)


__all__ = ["create_mixer", "list_mixers", "create_task", "TASKS", "Task", "MIXERS", "Mixer", "MixerConfig",
           "Capabilities", "ModelConfig", "Transformer", "LanguageModel", "SequenceClassifier"]
