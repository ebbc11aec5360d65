"""Load a pretrained diffusion model from a local folder (never from the network).

Supported layouts (diffusers ``save_pretrained`` formats):

- DiT class-conditional pipeline (``model_index.json`` naming ``DiTPipeline``: transformer + vae + scheduler,
  ImageNet labels from ``id2label``); sampled in the VAE latent space.
- Stable Diffusion (``model_index.json`` naming a ``StableDiffusion*Pipeline``; needs ``transformers``); the
  class name fills a prompt template; latent space.
- A class-conditional ``UNet2DModel`` (``num_class_embeds`` set) plus a scheduler config: ``unet/`` +
  ``scheduler/`` sub-folders (what ``pydistill train-diffusion`` writes, with ``pydistill.json``), or
  ``config.json`` + ``scheduler_config.json`` side by side; sampled in pixel space.

:class:`DiffusionModel` hides the differences: ``encode``/``decode`` between images in [-1, 1] and the sample
space, ``denoiser(...)`` for the sampler (classifier-free guidance included), ``make_scheduler("ddim"|"ddpm")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["DiffusionModel", "load_diffusion_model", "META_FILE", "missing_model_message"]

META_FILE = "pydistill.json"


def missing_model_message(path) -> str:
    return (
        f"no diffusion model at {str(path)!r}. MGD3 needs a local diffusers folder (it never downloads): train the "
        "small embedded default with `pydistill train-diffusion --dataset digits --out models/digits-ddpm` and "
        "pass `--model models/digits-ddpm` (Config field `model`), or point `model` at a local copy of a "
        "DiTPipeline (e.g. facebook/DiT-XL-2-256 saved with save_pretrained), a Stable Diffusion pipeline, or a "
        "class-conditional UNet2DModel with its scheduler config"
    )


def _import_diffusers():
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("MGD3 needs the `diffusers` package: pip install diffusers") from exc
    return diffusers


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class DiffusionModel:
    """A loaded diffusion model with one interface for pixel-space UNets and latent DiT / SD pipelines.

    Attributes: ``kind`` ("unet" | "dit" | "sd"), ``network`` (UNet / transformer), ``vae`` (or None),
    ``scaling_factor``, ``sample_shape`` (C, h, w) of what the sampler draws, ``image_size`` (H, W) and
    ``image_channels`` of the decoded images, ``num_classes`` (None for SD), ``null_class`` (label of the
    unconditional class, or None), ``labels`` (name -> class id, DiT), ``meta`` (pydistill.json or {}),
    ``scheduler_config``, ``learned_variance`` (the network outputs 2C channels: prediction + variance),
    ``cfg_channels`` (output channels classifier-free guidance combines).
    """

    def __init__(
        self,
        *,
        kind,
        path,
        network,
        scheduler_config,
        vae=None,
        scaling_factor=1.0,
        sample_shape,
        image_size,
        image_channels,
        num_classes=None,
        null_class=None,
        labels=None,
        meta=None,
        pipeline=None,
        device="cpu",
        dtype=torch.float32,
    ):
        self.kind = kind
        self.path = str(path)
        self.network = network
        self.scheduler_config = dict(scheduler_config)
        self.vae = vae
        self.scaling_factor = float(scaling_factor)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.image_size = tuple(int(s) for s in image_size)
        self.image_channels = int(image_channels)
        self.num_classes = num_classes
        self.null_class = null_class
        self.labels = labels or {}
        self.meta = meta or {}
        self.pipeline = pipeline
        self.device = torch.device(device)
        self.dtype = dtype
        out_ch = getattr(network.config, "out_channels", None)
        self.learned_variance = out_ch is not None and out_ch == 2 * self.sample_shape[0]
        # classifier-free guidance combines the first ``cfg_channels`` output channels; the rest come from the
        # conditional branch. DiT: 3, as its official forward_with_cfg guides model_out[:, :3] only ("for exact
        # reproducibility", facebookresearch/DiT models.py); otherwise every prediction channel.
        C = self.sample_shape[0]
        self.cfg_channels = min(3, C) if kind == "dit" else C

    # ------------------------------------------------------------------ schedulers
    def make_scheduler(self, name: str = "ddim"):
        """A fresh DDIMScheduler / DDPMScheduler built from the model's scheduler config."""
        diffusers = _import_diffusers()
        if name == "ddim":
            return diffusers.DDIMScheduler.from_config(self.scheduler_config)
        if name == "ddpm":
            extra = {"variance_type": "learned_range"} if self.learned_variance else {}
            if self.kind == "dit":
                # DiT's sampler (sample.py): create_diffusion(str(N)) respaces the 1000 steps to
                # round(i * 999 / (N - 1)) (respace.py space_timesteps, one section) = diffusers' "linspace",
                # and samples with clip_denoised=False.
                extra.update(timestep_spacing="linspace", clip_sample=False)
            return diffusers.DDPMScheduler.from_config(self.scheduler_config, **extra)
        raise ValueError(f"scheduler must be 'ddim' or 'ddpm', got {name!r}")

    # ------------------------------------------------------------------ images <-> sample space
    def to_model_images(self, x01: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] images in [0, 1] -> the model's resolution and channels, scaled to [-1, 1]."""
        x = x01.to(self.device, torch.float32).clamp(0, 1)
        x = _match_channels(x, self.image_channels)
        x = _resize(x, self.image_size)
        return x * 2 - 1

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] (model resolution) -> samples [N, *sample_shape] (VAE mean x scale)."""
        if self.vae is None:
            return x.to(self.device, self.dtype)
        outs = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(self.device, self.vae.dtype)
            outs.append(self.vae.encode(xb).latent_dist.mean * self.scaling_factor)
        return torch.cat(outs).to(self.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Samples [N, *sample_shape] -> images [N, image_channels, H, W] in [-1, 1] (not clipped)."""
        if self.vae is None:
            return z.float()
        outs = []
        for i in range(0, z.shape[0], batch_size):
            zb = z[i : i + batch_size].to(self.device, self.vae.dtype) / self.scaling_factor
            outs.append(self.vae.decode(zb).sample.float())
        return torch.cat(outs)

    # ------------------------------------------------------------------ conditioning
    def class_ids_for(self, class_names: Sequence[str], num_classes: int, class_ids=None) -> list:
        """Model conditioning per dataset class: class ids (UNet, DiT) or prompts' class names (SD)."""
        if class_ids is not None:
            ids = [int(c) for c in class_ids]
            if len(ids) != num_classes:
                raise ValueError(
                    f"class_ids must list one model class id per dataset class ({num_classes}), got {len(ids)}"
                )
            if self.num_classes is not None and not all(0 <= c < self.num_classes for c in ids):
                raise ValueError(f"class_ids must lie in [0, {self.num_classes}), got {ids}")
            return ids
        if self.kind == "sd":
            return list(class_names)
        if self.kind == "unet":
            if self.num_classes is None or self.num_classes < num_classes:
                raise ValueError(
                    f"the UNet at {self.path!r} knows {self.num_classes} classes but the dataset has {num_classes}; "
                    "train one for this dataset with `pydistill train-diffusion` or pass class_ids"
                )
            return list(range(num_classes))
        # DiT: look the dataset's class names up in id2label
        ids, missing = [], []
        for name in class_names:
            key = str(name).replace("_", " ").strip().lower()
            found = next((i for lab, i in self.labels.items() if lab.lower() == key), None)
            (ids if found is not None else missing).append(found if found is not None else name)
        if missing:
            raise ValueError(
                f"class names {missing} are not labels of the DiT pipeline at {self.path!r}; pass class_ids "
                "(one ImageNet id per dataset class) in the MGD3 config"
            )
        return ids

    @torch.no_grad()
    def denoiser(
        self, cond: list, guidance_scale: float = 1.0, prompt_template: str = "{name}"
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``fn(x_t [B, ...], t [B]) -> model output`` for a batch whose row b has condition ``cond[b]``.

        guidance_scale > 1 runs the unconditional branch too (null class / empty prompt) on the same x_t (the batch
        doubled: conditional rows first) and returns ``uncond + s * (cond - uncond)`` on the first
        ``cfg_channels`` output channels (DiT: 3 of its 4 epsilon channels, as the official ``forward_with_cfg``;
        others: all prediction channels); the remaining channels (DiT: epsilon channel 3 and the 4 learned-variance
        channels) pass through from the conditional branch.
        """
        cfg = guidance_scale > 1.0
        B = len(cond)
        if cfg and self.kind != "sd" and self.null_class is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs an unconditional (null) class, which the model at "
                f"{self.path!r} does not declare; use guidance_scale=1 or a model trained with label dropout "
                "(`pydistill train-diffusion` adds one)"
            )
        dev = self.device
        if self.kind == "sd":
            prompts = [prompt_template.format(name=str(c).replace("_", " ")) for c in cond]
            pe, ne = self.pipeline.encode_prompt(prompts, dev, 1, cfg)
            context = torch.cat([pe, ne]) if cfg else pe
        else:
            labels = torch.tensor([int(c) for c in cond], device=dev, dtype=torch.long)
            if cfg:
                labels = torch.cat([labels, torch.full_like(labels, int(self.null_class))])
        k = self.cfg_channels
        net = self.network

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if x.shape[0] != B:
                raise ValueError(f"denoiser built for {B} conditions got a batch of {x.shape[0]}")
            xin = torch.cat([x, x]) if cfg else x
            tin = torch.cat([t, t]) if cfg else t
            xin = xin.to(self.dtype)
            if self.kind == "unet":
                out = net(xin, tin, class_labels=labels).sample
            elif self.kind == "dit":
                out = net(xin, timestep=tin, class_labels=labels).sample
            else:
                out = net(xin, tin, encoder_hidden_states=context).sample
            out = out.float()
            if cfg:
                c_out, u_out = out[:B], out[B:]
                guided = u_out[:, :k] + guidance_scale * (c_out[:, :k] - u_out[:, :k])
                out = torch.cat([guided, c_out[:, k:]], dim=1)
            return out

        return fn


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot map {x.shape[1]}-channel images to {channels} channels")


def _resize(x: torch.Tensor, size: tuple) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=down)


def _cast(obj, device, dtype):
    obj = obj.to(device)
    return obj if dtype == torch.float32 else obj.to(dtype)


def load_diffusion_model(path, *, device="cpu", dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """Load the model at local folder ``path`` (layouts in the module docstring) onto ``device``."""
    if path is None or str(path) == "":
        raise FileNotFoundError(missing_model_message(path))
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(missing_model_message(root))
    diffusers = _import_diffusers()
    device = torch.device(device)
    kw = {"local_files_only": True, "use_safetensors": True}  # never unpickle .bin weights (they can run code)
    try:
        import accelerate  # noqa: F401
    except ImportError:
        kw["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, without its warning
    meta = _read_json(root / META_FILE) if (root / META_FILE).is_file() else {}

    if (root / "model_index.json").is_file():
        cls_name = _read_json(root / "model_index.json").get("_class_name", "")
        if cls_name == "DiTPipeline":
            pipe = _cast(diffusers.DiTPipeline.from_pretrained(str(root), **kw), device, dtype)
            tr = pipe.transformer
            vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
            h = int(tr.config.sample_size)
            n_cls = int(tr.config.num_embeds_ada_norm)
            return DiffusionModel(
                kind="dit",
                path=root,
                network=tr.eval(),
                vae=pipe.vae.eval(),
                scaling_factor=pipe.vae.config.scaling_factor,
                scheduler_config=pipe.scheduler.config,
                sample_shape=(tr.config.in_channels, h, h),
                image_size=(h * vae_scale, h * vae_scale),
                image_channels=pipe.vae.config.in_channels,
                num_classes=n_cls,
                null_class=n_cls,
                labels=dict(pipe.labels),
                meta=meta,
                pipeline=pipe,
                device=device,
                dtype=dtype,
            )
        if cls_name.startswith("StableDiffusion"):
            try:
                pipe = _cast(
                    diffusers.StableDiffusionPipeline.from_pretrained(
                        str(root), safety_checker=None, requires_safety_checker=False, **kw
                    ),
                    device,
                    dtype,
                )
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ImportError("Stable Diffusion models need `transformers` (pip install transformers)") from exc
            un = pipe.unet
            vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
            h = int(un.config.sample_size)
            return DiffusionModel(
                kind="sd",
                path=root,
                network=un.eval(),
                vae=pipe.vae.eval(),
                scaling_factor=pipe.vae.config.scaling_factor,
                scheduler_config=pipe.scheduler.config,
                sample_shape=(un.config.in_channels, h, h),
                image_size=(h * vae_scale, h * vae_scale),
                image_channels=pipe.vae.config.in_channels,
                meta=meta,
                pipeline=pipe,
                device=device,
                dtype=dtype,
            )
        if not (root / "unet").is_dir():
            raise ValueError(
                f"unsupported pipeline {cls_name!r} at {str(root)!r}: MGD3 loads DiTPipeline, StableDiffusion "
                "pipelines, or a class-conditional UNet2DModel + scheduler"
            )

    # a class-conditional UNet2DModel + scheduler config
    if (root / "unet" / "config.json").is_file():
        unet_dir = root / "unet"
    elif (root / "config.json").is_file():
        unet_dir = root
    else:
        raise FileNotFoundError(
            f"{str(root)!r} holds no diffusers model (no model_index.json, unet/config.json or config.json). "
            + missing_model_message(root)
        )
    sched_file = next(
        (p for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json") if p.is_file()), None
    )
    if sched_file is None:
        raise FileNotFoundError(
            f"the UNet at {str(root)!r} has no scheduler config (expected scheduler/scheduler_config.json or "
            "scheduler_config.json); save one with DDPMScheduler(...).save_pretrained(path/'scheduler')"
        )
    cfg = _read_json(unet_dir / "config.json")
    if cfg.get("_class_name") != "UNet2DModel":
        raise ValueError(f"{str(unet_dir)!r} holds a {cfg.get('_class_name')!r}; expected a UNet2DModel")
    if not cfg.get("num_class_embeds") or cfg.get("class_embed_type") not in (None, "null"):
        raise ValueError(
            f"the UNet2DModel at {str(unet_dir)!r} is not class-conditional with a label embedding "
            "(num_class_embeds must be set and class_embed_type None); MGD3 generates per class"
        )
    unet = _cast(diffusers.UNet2DModel.from_pretrained(str(unet_dir), **kw), device, dtype).eval()
    sched_cfg = _read_json(sched_file)
    n_embeds = int(unet.config.num_class_embeds)
    null_class = meta.get("null_class")
    num_classes = int(meta.get("num_classes", n_embeds - (1 if null_class is not None else 0)))
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return DiffusionModel(
        kind="unet",
        path=root,
        network=unet,
        scheduler_config=sched_cfg,
        sample_shape=(unet.config.in_channels, *size),
        image_size=size,
        image_channels=unet.config.in_channels,
        num_classes=num_classes,
        null_class=None if null_class is None else int(null_class),
        meta=meta,
        device=device,
        dtype=dtype,
    )
