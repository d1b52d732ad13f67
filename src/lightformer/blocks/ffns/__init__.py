"""The registered FFNs (``FFNS``): one file per variant (the three GLU activations of one paper share one file)."""

from . import bilinear, glu, matformer, mlp, moe, polycom  # noqa: F401  (registration)
from .matformer import extract_submodel, set_model_granularity

__all__ = ["extract_submodel", "set_model_granularity"]
