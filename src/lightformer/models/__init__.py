"""Transformers assembled from a ``ModelConfig``: the backbone, a causal language model and a sequence classifier."""

from .config import ModelConfig
from .heads import LanguageModel, SequenceClassifier
from .transformer import Transformer

__all__ = ["ModelConfig", "Transformer", "LanguageModel", "SequenceClassifier"]
