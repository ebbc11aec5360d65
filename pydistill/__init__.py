"""pydistill: dataset distillation on fused kernels.

Entry points: ``load_dataset`` (pydistill.data), ``get_network`` (pydistill.models), ``SyntheticSet``
(pydistill.synthetic), ``evaluate`` (pydistill.evaluate; the module is callable as the function),
``run_distillation`` (pydistill.runner), the methods in ``pydistill.methods``, the ops in ``pydistill.ops``.
Everything beyond the backend queries is imported lazily.
"""

import importlib

from pydistill._backend import backends, has_compiled

try:  # with the +pt<torch>cu<cuda> tag of the build (written by setup.py)
    from pydistill._build_info import VERSION as __version__
except ImportError:  # pragma: no cover - a source tree never built
    __version__ = "0.1.0"

_LAZY = {
    "load_dataset": ("pydistill.data", "load_dataset"),
    "Dataset": ("pydistill.data", "Dataset"),
    "get_network": ("pydistill.models", "get_network"),
    "SyntheticSet": ("pydistill.synthetic", "SyntheticSet"),
    "evaluate": ("pydistill.evaluate", None),  # the callable module
    "run_distillation": ("pydistill.runner", "run_distillation"),
    "get_method": ("pydistill.methods", "get_method"),
}

__all__ = ["backends", "has_compiled", "__version__", *sorted(_LAZY)]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'pydistill' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
