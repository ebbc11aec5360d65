"""Diffusion-model tools for MGD3: mode discovery, mode-guided sampling, model loading and training.

Needs the optional ``diffusers`` package (and scikit-learn for the modes); imported lazily.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "discover_modes": "guidance",
    "mode_guided_sample": "guidance",
    "guided_step": "guidance",
    "guidance_sigma": "guidance",
    "num_guided_steps": "guidance",
    "DiffusionModel": "loading",
    "load_diffusion_model": "loading",
    "train_diffusion": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pydistill.diffusion.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pydistill.diffusion' has no attribute {name!r}")
