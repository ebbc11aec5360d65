"""The interface every distillation method implements (DD, DC/DSA, DM, MTT, SSD-KD, MGD3, random subset).

A method owns its synthetic set and optimizers. ``step(it)`` runs one outer iteration and returns logged
scalars; ``state_dict()``/``load_state_dict()`` capture everything needed to resume bit-exactly, including
``self.generator`` (a ``torch.Generator`` on the method's device from which all randomness must be drawn).
Each method module defines a dataclass ``Config`` holding its paper defaults, with a classmethod
``Config.for_dataset(name, ipc)`` for dataset/IPC-dependent defaults; the CLI overrides its fields.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import torch

from pydistill.methods.common import class_labels, init_synthetic_images

__all__ = ["Method", "default_config"]


def default_config(config_cls, dataset_name: str, ipc: int):
    """``config_cls.for_dataset(dataset_name, ipc)`` when defined, else ``config_cls()``."""
    if config_cls is None:
        return None
    factory = getattr(config_cls, "for_dataset", None)
    if callable(factory):
        return factory(dataset_name, ipc)
    return config_cls()


class Method(abc.ABC):
    """Abstract distillation method.

    Attributes set here: ``dataset`` (moved to ``device``), ``ipc``, ``config`` (a ``Config`` instance; None ->
    ``Config.for_dataset(dataset.name, ipc)``; a dict -> ``Config(**dict)``), ``device``, ``seed`` and
    ``generator`` (seeded with ``seed``).
    """

    name: str = "method"
    Config: Any = None  # the method's dataclass of hyperparameters

    def __init__(self, dataset, ipc: int, *, config=None, device="cpu", seed: int = 0):
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be a positive int (images per class), got {ipc!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.device = torch.device(device)
        self.dataset = dataset.to(self.device)
        self.ipc = int(ipc)
        self.seed = int(seed)
        if config is None:
            config = default_config(self.Config, dataset.name, self.ipc)
        elif isinstance(config, dict) and self.Config is not None:
            config = self.Config(**config)
        elif self.Config is not None and dataclasses.is_dataclass(self.Config) and not isinstance(config, self.Config):
            raise TypeError(
                f"config must be a {self.Config.__module__}.{self.Config.__qualname__}, a dict or None, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)

    @property
    @abc.abstractmethod
    def num_iterations(self) -> int:
        """Number of outer iterations (``step`` is called with it = 0 .. num_iterations - 1)."""

    @abc.abstractmethod
    def step(self, it: int) -> dict[str, float]:
        """Run outer iteration ``it``; return scalars to log (e.g. ``{"loss": 0.3}``)."""

    @abc.abstractmethod
    def synthetic_set(self):
        """The current distilled set (a ``pydistill.synthetic.SyntheticSet``; tensors detached)."""

    def state_dict(self) -> dict:
        """Everything to resume exactly; subclasses extend ``super().state_dict()``."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; subclasses call ``super().load_state_dict(state)``."""
        if "generator" not in state:
            raise KeyError("method state lacks 'generator' (was it written by Method.state_dict?)")
        self.generator.set_state(state["generator"].cpu())

    def config_dict(self) -> dict:
        """The config as a plain dict (for logs, metrics.json and resume checks)."""
        from pydistill.utils import to_jsonable

        cfg = self.config
        if cfg is None:
            return {}
        if dataclasses.is_dataclass(cfg):
            return to_jsonable(cfg)
        if isinstance(cfg, dict):
            return to_jsonable(cfg)
        return {"repr": repr(cfg)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dataset={self.dataset.name!r}, ipc={self.ipc}, device={self.device}, "
            f"seed={self.seed})"
        )


class LearnedImagesMixin:
    """For a method whose whole learned state is ``self.images`` [N, C, H, W] (a leaf tensor), fixed
    ``self.labels`` [N] and the images' optimizer ``self.opt_img`` (DC/DSA, DM): the synthetic set and the
    checkpoint state. Put it before :class:`Method` in the bases."""

    def init_learned_images(self, cfg) -> None:
        """The DSA strategy (when ``cfg.dsa``), class labels, images initialised per ``cfg.init`` and their
        SGD(``cfg.lr_img``, momentum ``cfg.momentum_img``)."""
        if cfg.dsa:
            from pydistill.data import dsa_strategy_for

            self.strategy = cfg.dsa_strategy or dsa_strategy_for(self.dataset.name)
        self.labels = class_labels(self.dataset.num_classes, self.ipc, self.device)
        self.images = init_synthetic_images(self, cfg.init).requires_grad_(True)
        self.opt_img = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum_img)

    @property
    def num_iterations(self) -> int:
        return int(self.config.iterations)

    def synthetic_set(self):
        from pydistill.synthetic import SyntheticSet

        return SyntheticSet(
            self.images.detach().clone(),
            self.labels.clone(),
            None,
            {"method": self.name, "ipc": self.ipc, "model": self.config.model, "dsa": bool(self.config.dsa)},
        )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "images": self.images.detach().clone(), "opt_img": self.opt_img.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
        self.opt_img.load_state_dict(state["opt_img"])
