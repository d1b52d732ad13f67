"""One trainer: loop, evaluation, schedule, checkpoint/resume."""

from .config import PRESETS, RunConfig, TrainConfig, parse_duration
from .trainer import Trainer, TrainResult

__all__ = ["PRESETS", "RunConfig", "TrainConfig", "Trainer", "TrainResult", "parse_duration"]
