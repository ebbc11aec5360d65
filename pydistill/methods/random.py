"""Random real subset: ``ipc`` random training images per class (the baseline every DD paper reports)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pydistill.methods.base import Method

__all__ = ["Config", "RandomSubset"]


@dataclass
class Config:
    """No hyperparameters beyond the selection; ``iterations`` is 0 (nothing to optimize)."""

    iterations: int = 0

    @classmethod
    def for_dataset(cls, name: str, ipc: int | None = None) -> "Config":
        return cls()


class RandomSubset(Method):
    """Picks ``ipc`` distinct random training images of each class at construction (from ``self.generator``).

    Classes with fewer than ``ipc`` training images contribute all they have. ``step`` does nothing.
    """

    Config = Config
    name = "random"

    def __init__(self, dataset, ipc, *, config=None, device="cpu", seed=0):
        super().__init__(dataset, ipc, config=config, device=device, seed=seed)
        if int(self.config.iterations) < 0:
            raise ValueError(f"config.iterations must be >= 0, got {self.config.iterations}")
        picks = []
        for idx in self.dataset.indices_by_class:
            perm = torch.randperm(idx.numel(), generator=self.generator, device=idx.device)[: self.ipc]
            picks.append(idx[perm])
        self.indices = torch.cat(picks)

    @property
    def num_iterations(self) -> int:
        return int(self.config.iterations)

    def step(self, it: int) -> dict[str, float]:
        return {}

    def synthetic_set(self):
        from pydistill.synthetic import SyntheticSet

        ds = self.dataset
        return SyntheticSet(
            ds.x_train[self.indices].clone(),
            ds.y_train[self.indices].clone(),
            None,
            {"method": self.name, "ipc": self.ipc, "num_classes": ds.num_classes, "indices": self.indices.tolist()},
        )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "indices": self.indices.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.indices = state["indices"].to(self.dataset.device)
