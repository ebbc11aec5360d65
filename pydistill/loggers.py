"""Optional experiment loggers for :func:`pydistill.runner.run_distillation` (CLI: ``distill --logger tensorboard``).

A logger has ``log(entry)`` (one entry of the run's log: ``{"iteration": i, <scalar>: value, ...}`` after each
iteration, or ``{"iteration": i, "eval_acc": a, "eval_std": s, "eval_model": name}`` after an evaluation) and
``close()``. Scalars go to TensorBoard as ``train/<name>`` at step ``iteration``; evaluations as
``eval/<model>/accuracy`` and ``eval/<model>/std`` (fractions in [0, 1]).
"""

from __future__ import annotations

import math
import os

__all__ = ["LOGGERS", "TensorBoardLogger", "make_logger"]

LOGGERS = ("none", "tensorboard")


class TensorBoardLogger:
    """Writes the run's scalars as TensorBoard event files in ``log_dir`` (needs ``pip install tensorboard``)."""

    def __init__(self, log_dir: str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "--logger tensorboard needs the tensorboard package: "
                "pip install 'pydistill[tensorboard]' (or pip install tensorboard)"
            ) from None
        self.log_dir = os.fspath(log_dir)
        self._writer = SummaryWriter(self.log_dir)

    def log(self, entry: dict) -> None:
        step = int(entry.get("iteration", 0))
        if "eval_acc" in entry:
            model = str(entry.get("eval_model", "model"))
            self._writer.add_scalar(f"eval/{model}/accuracy", float(entry["eval_acc"]), step)
            if entry.get("eval_std") is not None:
                self._writer.add_scalar(f"eval/{model}/std", float(entry["eval_std"]), step)
            return
        for key, value in entry.items():
            if key == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(float(value)):
                self._writer.add_scalar(f"train/{key}", float(value), step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def make_logger(kind: str | None, out_dir: str | os.PathLike):
    """None for ``kind`` None/"none", else a logger writing under ``out_dir`` (tensorboard: ``out_dir/tensorboard``)."""
    if kind in (None, "none"):
        return None
    if kind == "tensorboard":
        return TensorBoardLogger(os.path.join(os.fspath(out_dir), "tensorboard"))
    raise ValueError(f"logger must be one of {LOGGERS}, got {kind!r}")
