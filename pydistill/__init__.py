"""pydistill: dataset distillation on fused kernels."""
from pydistill._backend import backends, has_compiled

__version__ = "0.1.0"

__all__ = ["backends", "has_compiled", "__version__"]
