"""The registered norms (``NORMS``): one file per variant."""

from . import layernorm, rmsnorm, scalenorm  # noqa: F401  (registration)
