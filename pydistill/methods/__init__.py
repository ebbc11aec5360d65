"""Distillation methods, loaded on demand.

``METHODS`` maps a method name to ``"module:Class"`` inside ``pydistill.methods``; :func:`get_method` imports
it. Every class implements :class:`pydistill.methods.base.Method`.
"""

from __future__ import annotations

import importlib

__all__ = ["METHODS", "get_method", "Method"]

METHODS: dict[str, str] = {
    "random": "random:RandomSubset",
    "dd": "dd:DD",
    "dc": "dc:DC",
    "dsa": "dc:DSA",
    "dm": "dm:DM",
    "mtt": "mtt:MTT",
    "ssdkd": "ssdkd:SSDKD",
    "mgd3": "mgd3:MGD3",
    "mgd3-unguided": "mgd3:MGD3Unguided",
}


def get_method(name: str):
    """The method class registered under ``name`` (see ``METHODS``), imported on demand."""
    key = str(name).lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    module_name, cls_name = METHODS[key].split(":")
    full = f"pydistill.methods.{module_name}"
    try:
        module = importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name in (full, "pydistill.methods"):
            raise ImportError(
                f"method {key!r} is registered as {full}.{cls_name}, but {full} is not part of this install"
            ) from exc
        raise ImportError(
            f"method {key!r} ({full}) needs the module {exc.name!r}, which is not installed ({exc})"
        ) from exc
    try:
        return getattr(module, cls_name)
    except AttributeError as exc:
        raise ImportError(f"{full} does not define {cls_name} (registered for method {key!r})") from exc


def __getattr__(name):
    if name == "Method":
        from pydistill.methods.base import Method

        return Method
    raise AttributeError(f"module 'pydistill.methods' has no attribute {name!r}")
