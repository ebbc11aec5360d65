"""Figures of a run: the synthetic image grid (one row per class) and the loss/accuracy curves (PNG files)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from pydistill.utils import atomic_target

__all__ = ["image_grid", "save_grid", "save_curves"]


def image_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    max_per_class: int = 10,
    pad: int = 1,
    min_cell: int = 32,
) -> np.ndarray:
    """Arrange images [N, C, H, W] in [0, 1] as a grid with one row per class; returns uint8 [H', W', 3].

    Soft labels [N, K] are reduced to their argmax. At most ``max_per_class`` images per row; tiny images are
    upscaled (nearest) so that a cell is at least ``min_cell`` pixels.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    labels = labels.argmax(1) if labels.dim() == 2 else labels
    images = images.detach().float().cpu().clamp(0, 1)
    labels = labels.detach().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] != 3:
        images = images[:, :3] if images.shape[1] > 3 else images[:, :1].expand(-1, 3, -1, -1)
    h, w = images.shape[2:]
    scale = max(1, math.ceil(min_cell / max(h, w)))
    if scale > 1:
        images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        h, w = h * scale, w * scale
    cols = max(1, min(max_per_class, max([int((labels == c).sum()) for c in range(num_classes)] + [1])))
    grid = np.ones((num_classes * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for c in range(num_classes):
        sel = images[labels == c][:cols]
        for j in range(sel.shape[0]):
            y0, x0 = pad + c * (h + pad), pad + j * (w + pad)
            grid[y0 : y0 + h, x0 : x0 + w] = sel[j].permute(1, 2, 0).numpy()
    return (grid * 255).round().astype(np.uint8)


def save_grid(path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor, num_classes: int, **kw) -> None:
    """Write :func:`image_grid` (images already in [0, 1], e.g. ``dataset.denormalize(x)``) as a PNG."""
    import matplotlib.image

    grid = image_grid(images, labels, num_classes, **kw)
    with atomic_target(path) as tmp:
        matplotlib.image.imsave(tmp, grid, format="png")


def save_curves(path: str | os.PathLike, log: list[dict], *, title: str = "") -> None:
    """Plot every logged scalar against ``iteration`` (left) and evaluation accuracies (right) to a PNG.

    ``log`` entries: ``{"iteration": it, name: value, ...}``; entries with ``"eval_acc"`` are accuracies.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_l, ax_a = fig.subplots(1, 2)
    series: dict[str, tuple[list, list]] = {}
    for e in log:
        if "eval_acc" in e:
            continue
        for k, v in e.items():
            if k == "iteration" or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(e.get("iteration", len(xs)))
            ys.append(v)
    for k, (xs, ys) in sorted(series.items()):
        ax_l.plot(xs, ys, label=k)
    if series:
        ax_l.legend(fontsize=8)
        positive = all(v > 0 for _, ys in series.values() for v in ys)
        if (
            positive
            and max(max(ys) for _, ys in series.values()) / max(min(min(ys) for _, ys in series.values()), 1e-30) > 100
        ):
            ax_l.set_yscale("log")
    else:
        ax_l.text(0.5, 0.5, "no logged scalars", ha="center", va="center", transform=ax_l.transAxes)
    ax_l.set_xlabel("iteration")
    ax_l.set_title("training scalars")
    evals = [e for e in log if "eval_acc" in e]
    if evals:
        xs = [e["iteration"] for e in evals]
        ys = [100 * e["eval_acc"] for e in evals]
        es = [100 * e.get("eval_std", 0.0) for e in evals]
        ax_a.errorbar(xs, ys, yerr=es, marker="o", capsize=3)
    else:
        ax_a.text(0.5, 0.5, "no evaluation during the run", ha="center", va="center", transform=ax_a.transAxes)
    ax_a.set_xlabel("iteration")
    ax_a.set_ylabel("test accuracy (%)")
    ax_a.set_title("evaluation")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png")


def save_experiments(path: str | os.PathLike, per_experiment: list[list[float]], *, title: str = "") -> None:
    """Strip plot of each experiment's network accuracies (fractions, shown in %) with the pooled mean +- std."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4, 1 + 0.8 * len(per_experiment)), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    pooled = 100 * np.concatenate([np.asarray(a, dtype=float) for a in per_experiment])
    for k, accs in enumerate(per_experiment):
        ys = 100 * np.asarray(accs, dtype=float)
        ax.scatter(np.full(len(ys), k) + np.linspace(-0.15, 0.15, len(ys)), ys, s=12)
        ax.errorbar(k + 0.3, ys.mean(), yerr=ys.std(), fmt="o", color="black", capsize=3)
    ax.axhline(pooled.mean(), color="gray", linestyle="--", label=f"pooled {pooled.mean():.2f} +- {pooled.std():.2f}")
    ax.set_xticks(range(len(per_experiment)))
    ax.set_xlabel("experiment")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
