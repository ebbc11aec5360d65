"""Train a small class-conditional pixel-space diffusion model (the embedded default model for MGD3).

``pydistill train-diffusion --dataset digits --out models/digits-ddpm [--epochs E | --steps S] [--device]``

The model is a diffusers ``UNet2DModel`` with a label embedding of ``num_classes + 1`` entries (the last one is
the null class of classifier-free guidance; labels are dropped to it with probability 0.1 during training),
trained with the epsilon-prediction DDPM loss on images scaled to [-1, 1]. Digits (8x8) trains at its native
resolution with a two-level UNet (about 0.65 M parameters; a few CPU minutes). Checkpoints
(``train_state.pt``) are written atomically and a rerun with the same ``--out`` resumes. The result is saved
in diffusers format: ``unet/`` (the EMA weights), ``scheduler/`` and ``pydistill.json`` (dataset, image size,
normalization, classes, null class).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pydistill.diffusion.loading import META_FILE, _import_diffusers
from pydistill.utils import deferred_stop

__all__ = ["train_diffusion", "default_unet_config", "register_cli", "DEFAULT_STEPS"]

DEFAULT_STEPS = 1500
STATE_FILE = "train_state.pt"


def default_unet_config(image_size: int, channels: int, num_classes: int, width: int = 32) -> dict:
    """UNet2DModel kwargs for small images: 2 levels up to 8 px, 3 up to 32 px, 4 beyond.

    image_size must be divisible by 2 ** (levels - 1). One extra label embedding = the null class.
    """
    levels = 2 if image_size <= 8 else 3 if image_size <= 32 else 4
    if image_size % (2 ** (levels - 1)):
        raise ValueError(f"image_size must be divisible by {2 ** (levels - 1)}, got {image_size}")
    boc = tuple(width * min(2**i, 4) for i in range(levels))
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if levels >= 3:  # self-attention at the coarsest level
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return dict(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=boc,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        num_class_embeds=num_classes + 1,
        norm_num_groups=min(8, width),
        attention_head_dim=8,
    )


def _train_size(im_size: tuple[int, int], image_size: int | None) -> int:
    if image_size is not None:
        if int(image_size) < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}")
        return int(image_size)
    s = max(im_size)
    levels = 2 if s <= 8 else 3 if s <= 32 else 4
    m = 2 ** (levels - 1)
    return int(math.ceil(s / m) * m)


def _save_dir_atomic(save_fn, dest: Path) -> None:
    """``save_fn(tmp_dir)`` then swap ``tmp_dir`` in for ``dest`` (old copy removed only after the swap)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    old = dest.with_name(f".{dest.name}.old")
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
    save_fn(str(tmp))
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)


@deferred_stop()  # SIGINT/SIGTERM: finish the optimizer step, save the state, raise utils.StopSignal
def train_diffusion(
    dataset: str = "digits",
    out: str | os.PathLike = "models/digits-ddpm",
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    image_size: int | None = None,
    width: int = 32,
    label_dropout: float = 0.1,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "squaredcos_cap_v2",
    ema_decay: float = 0.999,
    checkpoint_every: int = 250,
    n_per_class: int | None = None,
    data_root: str | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train (or resume) a class-conditional DDPM on ``dataset``; returns the output folder.

    steps: optimizer steps (default: ``epochs`` x ceil(N / batch_size), or DEFAULT_STEPS when neither is
    given). n_per_class: train on a random subset (small test fixtures). AdamW, linear warm-up (5%) then
    cosine decay of ``lr``; EMA of the weights (``ema_decay``) is what gets saved.
    """
    from pydistill.data import load_dataset
    from pydistill.utils import (
        atomic_write_text,
        load_checked,
        raise_if_stop_requested,
        resolve_device,
        save_checked,
        stop_requested,
    )

    diffusers = _import_diffusers()
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
    for name, v in (
        ("batch_size", batch_size),
        ("checkpoint_every", checkpoint_every),
        ("num_train_timesteps", num_train_timesteps),
    ):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if epochs is not None and int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    ds = load_dataset(dataset, data_root)
    if ds.zca is not None:
        raise ValueError("train-diffusion needs a dataset without ZCA")
    if n_per_class is not None:
        ds = ds.subset(int(n_per_class), seed=seed)
    size = _train_size(ds.im_size, image_size)
    x = ds.denormalize(ds.x_train)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < max(ds.im_size))
    x = (x * 2 - 1).to(dev)
    y = ds.y_train.to(dev)
    n = x.shape[0]
    total = (
        int(steps)
        if steps is not None
        else (int(epochs) * math.ceil(n / batch_size) if epochs is not None else DEFAULT_STEPS)
    )

    unet_cfg = default_unet_config(size, ds.channel, ds.num_classes, width)
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
        variance_type="fixed_small",
    )
    settings = dict(
        dataset=ds.name,
        image_size=size,
        unet=unet_cfg,
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        batch_size=batch_size,
        lr=lr,
        label_dropout=label_dropout,
        ema_decay=ema_decay,
        n_per_class=n_per_class,
        seed=seed,
    )
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored

    torch.manual_seed(seed)  # parameter init only
    model = diffusers.UNet2DModel(**unet_cfg).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, total // 20)

    def lr_at(s):  # linear warm-up, then cosine decay to 10% of lr
        if s < warm:
            return lr * (s + 1) / warm
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))

    gen = torch.Generator(device=dev).manual_seed(seed)
    abar = sched.alphas_cumprod.to(dev)
    step, losses, wall = 0, [], 0.0

    state_path = out / STATE_FILE
    if state_path.is_file():
        st = load_checked(state_path, map_location=dev)  # SHA-256 of the bytes, then weights_only loading
        if st["settings"] != settings:
            diff = {k: (st["settings"].get(k), v) for k, v in settings.items() if st["settings"].get(k) != v}
            raise ValueError(
                f"{state_path} was written with other settings {diff} (stored, requested); "
                "use another --out or delete the folder"
            )
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["generator"].cpu())
        step, losses, wall = int(st["step"]), list(st["losses"]), float(st["wall_time_s"])
        if step > total:
            raise ValueError(f"{state_path} is at step {step}, beyond the requested {total} steps")

    def checkpoint():
        save_checked(
            {
                "settings": settings,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "generator": gen.get_state(),
                "step": step,
                "losses": losses,
                "wall_time_s": wall,
            },
            state_path,
        )

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=f"train-diffusion {ds.name}", unit="step")
    model.train()
    t_start = time.perf_counter() - wall
    while step < total:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen, device=dev)
        x0, lab = x[idx], y[idx].clone()
        drop = torch.rand(lab.shape, generator=gen, device=dev) < label_dropout
        lab[drop] = ds.num_classes  # the null class
        t = torch.randint(0, num_train_timesteps, lab.shape, generator=gen, device=dev)
        eps = torch.randn(x0.shape, generator=gen, device=dev)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(model(xt, t, class_labels=lab).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
        step += 1
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        wall = time.perf_counter() - t_start
        if step % checkpoint_every == 0 or step == total or stop_requested():
            checkpoint()
        raise_if_stop_requested(
            None, f"stopped at step {step}/{total}; state saved to {state_path}. Rerun the same command to resume"
        )
    if bar is not None:
        bar.close()

    ema.eval()
    _save_dir_atomic(lambda p: ema.save_pretrained(p), out / "unet")
    _save_dir_atomic(lambda p: sched.save_pretrained(p), out / "scheduler")
    meta = {
        "format": "pydistill-ddpm-v1",
        "dataset": ds.name,
        "image_size": [size, size],
        "channels": ds.channel,
        "dataset_im_size": list(ds.im_size),
        "num_classes": ds.num_classes,
        "null_class": ds.num_classes,
        "class_names": list(ds.class_names),
        "normalization": "images in [-1, 1] = 2 * pixels01 - 1",
        "dataset_mean": ds.mean,
        "dataset_std": ds.std,
        "steps": step,
        "final_loss": (sum(losses[-50:]) / max(1, len(losses[-50:]))),
        "train_time_s": wall,
        "settings": settings,
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=1))
    return out


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``train-diffusion`` subcommand."""
    p = subparsers.add_parser(
        "train-diffusion",
        help="train a small class-conditional diffusion model (MGD3)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--dataset", default="digits")
    p.add_argument("--out", required=True, help="output folder (diffusers format; rerun to resume)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--image-size", type=int, default=None, help="training resolution (default: native, rounded up)")
    p.add_argument("--width", type=int, default=32, help="channels of the first UNet level")
    p.add_argument("--n-per-class", type=int, default=None, help="train on a random subset per class")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cli_main)
    return p


def _cli_main(args) -> int:
    out = train_diffusion(
        args.dataset,
        args.out,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        width=args.width,
        n_per_class=args.n_per_class,
        checkpoint_every=args.checkpoint_every,
        data_root=args.data_root,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"saved diffusion model to {out} (use it with: pydistill distill --method mgd3 --model {out} ...)")
    return 0
