"""Transformers assembled from a ``ModelConfig``: the backbone, a causal language model, a sequence classifier,
a two-tower matcher and an in-context regressor."""

from .config import ModelConfig
from .heads import InContextRegressor, LanguageModel, SequenceClassifier, TwoTowerClassifier
from .transformer import Transformer

__all__ = ["ModelConfig", "Transformer", "LanguageModel", "SequenceClassifier", "TwoTowerClassifier",
           "InContextRegressor"]
