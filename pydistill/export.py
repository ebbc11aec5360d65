"""Write a synthetic set in forms other tools read: ``pt``, ``npz``, ``imagefolder`` (``pydistill export``).

- ``pt`` (the layout MTT's ``distill.py`` saves and DD-Ranking-style evaluation scripts load):
  ``<out>/images_best.pt`` float32 [N, C, H, W] in the dataset's normalised space, ``<out>/labels_best.pt``
  int64 [N] (or float [N, K] soft labels), ``<out>/lr_best.pt`` the learned lr (scalar, or [T] for DD) when the
  set has one, and ``<out>/meta.json`` (method, dataset, ipc, ... and the dataset's mean/std when known).
- ``npz``: one ``<out>`` file (``.npz`` appended when missing) with arrays ``images``, ``labels``, optional ``lr``
  and ``meta`` (a JSON string).
- ``imagefolder``: ``<out>/<kkk>_<class name>/<i>.png`` displayable [0, 1] images (normalisation and ZCA undone
  by the dataset) quantised to 8 bits, one folder per class; the zero-padded class id keeps torchvision's
  ``ImageFolder`` (sorted folder names) giving back the same labels. Soft labels are exported by their argmax.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from pydistill.utils import atomic_write_bytes, atomic_write_text, to_jsonable

__all__ = ["FORMATS", "export_synthetic", "register_cli"]

FORMATS = ("pt", "npz", "imagefolder")


def _torch_bytes(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


def _class_folder(c: int, names, k: int) -> str:
    name = names[c] if names is not None and c < len(names) else str(c)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or str(c)
    return f"{c:0{max(3, len(str(k - 1)))}d}_{safe}"


def export_synthetic(syn, out: str | os.PathLike, format: str, *, dataset=None) -> list[Path]:
    """Write ``syn`` (a :class:`~pydistill.synthetic.SyntheticSet`) to ``out`` as ``format`` (one of ``FORMATS``);
    returns the files written. ``dataset`` (a :class:`~pydistill.data.Dataset`): needed for ``imagefolder`` (to undo
    the normalisation; class names), recorded (mean/std, class names) in the others' metadata when given."""
    from pydistill.synthetic import SyntheticSet

    if not isinstance(syn, SyntheticSet):
        raise TypeError(f"syn must be a pydistill.synthetic.SyntheticSet, got {type(syn).__name__}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    t = syn.to_tensors()
    meta = dict(syn.meta)
    if dataset is not None:
        meta.update(
            dataset_mean=list(dataset.mean),
            dataset_std=list(dataset.std),
            zca=dataset.zca is not None,
            class_names=list(dataset.class_names),
        )
    meta_json = json.dumps(to_jsonable(meta), sort_keys=True, indent=1) + "\n"
    out = Path(out)
    written = []
    if format == "pt":
        out.mkdir(parents=True, exist_ok=True)
        files = {"images_best.pt": t["images"].float(), "labels_best.pt": t["labels"]}
        if "lr" in t:
            files["lr_best.pt"] = t["lr"].float()
        for name, tensor in files.items():
            atomic_write_bytes(out / name, _torch_bytes(tensor))
            written.append(out / name)
        atomic_write_text(out / "meta.json", meta_json)
        written.append(out / "meta.json")
    elif format == "npz":
        if out.suffix != ".npz":
            out = out.with_name(out.name + ".npz")
        arrays = {"images": t["images"].float().numpy(), "labels": t["labels"].numpy(), "meta": np.array(meta_json)}
        if "lr" in t:
            arrays["lr"] = t["lr"].float().numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(out, buf.getvalue())
        written.append(out)
    else:
        written = _write_imagefolder(syn, out, dataset)
    return written


def _write_imagefolder(syn, out: Path, dataset) -> list[Path]:
    from PIL import Image

    if dataset is None:
        raise ValueError(
            "format='imagefolder' needs dataset= (its mean/std or ZCA turn the normalised images back "
            "into pixels); CLI: the set's recorded --dataset must be loadable, or pass --dataset"
        )
    images = syn.images.detach().float().to(dataset.device)
    if tuple(images.shape[1:]) != (dataset.channel, *dataset.im_size):
        raise ValueError(
            f"the set's images are {tuple(images.shape[1:])} but dataset {dataset.name!r} has "
            f"{(dataset.channel, *dataset.im_size)}; pass the dataset it was distilled from"
        )
    pixels = (dataset.denormalize(images) * 255).round().to(torch.uint8).cpu()
    labels = syn.hard_labels.cpu()
    k = max(int(dataset.num_classes), int(labels.max()) + 1 if labels.numel() else 0)
    written, count = [], {}
    for i in range(pixels.shape[0]):
        c = int(labels[i])
        folder = out / _class_folder(c, dataset.class_names, k)
        folder.mkdir(parents=True, exist_ok=True)
        j = count.get(c, 0)
        count[c] = j + 1
        arr = pixels[i].permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        path = folder / f"{j:05d}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------------------
def _cli_export(args) -> int:
    from pydistill.synthetic import SyntheticSet

    syn = SyntheticSet.load(args.synthetic)
    dataset = None
    name = args.dataset or syn.meta.get("dataset")
    if args.format == "imagefolder" or args.dataset:
        if not name:
            raise ValueError(f"{args.synthetic} does not record its dataset; pass --dataset")
        from pydistill.data import load_dataset

        dataset = load_dataset(name, args.data_root, zca=bool(syn.meta.get("zca", False)))
    files = export_synthetic(syn, args.out, args.format, dataset=dataset)
    print(f"wrote {len(files)} file(s) to {args.out} ({args.format}: {len(syn)} images)")
    return 0


def register_cli(subparsers):
    """Add ``pydistill export --synthetic FILE --format {pt,npz,imagefolder} --out PATH``."""
    p = subparsers.add_parser(
        "export",
        help="write a synthetic set as .pt tensors (MTT/DD-Ranking layout), .npz or a folder of PNGs per class",
    )
    p.add_argument("--synthetic", required=True, help="synthetic.safetensors file")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output folder (pt, imagefolder) or file (npz)")
    p.add_argument(
        "--dataset",
        default=None,
        help="dataset the set was distilled from (default: as recorded; loaded for imagefolder)",
    )
    p.add_argument(
        "--data-root", default=None, help="dataset folder (default: $PYDISTILL_DATA, else ~/.cache/pydistill/datasets)"
    )
    p.set_defaults(func=_cli_export)
    return p
