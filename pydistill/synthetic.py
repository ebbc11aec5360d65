"""The distilled (synthetic) set: images, labels, optional learned learning rates, metadata; safe file I/O."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from pydistill.utils import atomic_write_bytes, to_jsonable

__all__ = ["SyntheticSet", "CorruptFileError"]

_FORMAT = "pydistill.SyntheticSet"
_VERSION = "2"  # 2: the SHA-256 covers the metadata JSON too (1: tensors only; still read, with a warning)


class CorruptFileError(ValueError):
    """A synthetic-set file is truncated, corrupt, or not a pydistill synthetic set."""


def _digest(tensors: dict[str, torch.Tensor], meta_json: str | None = None) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in name order, then (version 2) the
    metadata JSON string exactly as stored (None: version 1, tensors only)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if meta_json is not None:
        b = meta_json.encode("utf-8")
        h.update(f"meta|{len(b)}|".encode() + b)
    return h.hexdigest()


@dataclass
class SyntheticSet:
    """A distilled dataset.

    images: float32 [N, C, H, W] in the dataset's normalized space. labels: int64 [N] (hard) or float [N, K]
    (soft: probabilities or logits-derived targets). lr: learned learning rate(s) or None (a scalar for MTT,
    [T] for DD). meta: JSON-serializable dict (method, dataset, ipc, num_classes, ...).
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            raise ValueError(
                f"images must be a [N, C, H, W] tensor, got {getattr(self.images, 'shape', type(self.images).__name__)}"
            )
        if not self.images.is_floating_point():
            raise TypeError(f"images must be floating point, got {self.images.dtype}")
        if not isinstance(self.labels, torch.Tensor):
            raise TypeError(f"labels must be a tensor, got {type(self.labels).__name__}")
        n = self.images.shape[0]
        if self.labels.dim() == 1:
            if self.labels.dtype != torch.int64:
                raise TypeError(f"hard labels must be int64 [N], got {self.labels.dtype}")
        elif self.labels.dim() == 2:
            if not self.labels.is_floating_point():
                raise TypeError(f"soft labels [N, K] must be floating point, got {self.labels.dtype}")
        else:
            raise ValueError(f"labels must be int64 [N] or float [N, K], got shape {tuple(self.labels.shape)}")
        if self.labels.shape[0] != n:
            raise ValueError(f"labels has {self.labels.shape[0]} rows but images has {n}")
        if self.lr is not None:
            if not isinstance(self.lr, torch.Tensor):
                self.lr = torch.as_tensor(float(self.lr))
            if not self.lr.is_floating_point() or self.lr.dim() > 1:
                raise ValueError(f"lr must be a float scalar or [T] tensor, got {self.lr.dtype} {tuple(self.lr.shape)}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta must be a dict, got {type(self.meta).__name__}")

    # ------------------------------------------------------------------------------------------------------
    @property
    def soft(self) -> bool:
        return self.labels.dim() == 2

    @property
    def num_classes(self) -> int:
        if self.soft:
            return int(self.labels.shape[1])
        if "num_classes" in self.meta:
            return int(self.meta["num_classes"])
        return int(self.labels.max().item()) + 1 if self.labels.numel() else 0

    @property
    def ipc(self) -> int:
        """Images per class (``meta['ipc']`` when present, else N // num_classes)."""
        if "ipc" in self.meta:
            return int(self.meta["ipc"])
        k = self.num_classes
        return self.images.shape[0] // k if k else 0

    @property
    def hard_labels(self) -> torch.Tensor:
        """int64 [N]: the labels, or the argmax of soft labels."""
        return self.labels.argmax(1) if self.soft else self.labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "SyntheticSet":
        return SyntheticSet(
            self.images.to(device),
            self.labels.to(device),
            None if self.lr is None else self.lr.to(device),
            dict(self.meta),
        )

    def detach(self) -> "SyntheticSet":
        """A copy with detached, cloned tensors (safe to keep while the method keeps optimizing)."""
        return SyntheticSet(
            self.images.detach().clone(),
            self.labels.detach().clone(),
            None if self.lr is None else self.lr.detach().clone(),
            dict(self.meta),
        )

    # ------------------------------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"images": self.images.detach().cpu().contiguous(), "labels": self.labels.detach().cpu().contiguous()}
        if self.lr is not None:
            out["lr"] = self.lr.detach().cpu().reshape(self.lr.shape).contiguous()
        return out

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Detached CPU tensors: ``images`` [N, C, H, W] (the dataset's normalised space), ``labels`` int64 [N] or
        float [N, K], and ``lr`` (scalar or [T]) only when the set has a learned lr. See :mod:`pydistill.export`."""
        return self._tensors()

    def save(self, path: str | os.PathLike) -> None:
        """Write a ``.safetensors`` file atomically; meta as JSON and a SHA-256 of the tensors and that JSON in
        its metadata."""
        from safetensors.torch import save

        tensors = self._tensors()
        meta_json = json.dumps(to_jsonable(self.meta), sort_keys=True)
        metadata = {"format": _FORMAT, "version": _VERSION, "sha256": _digest(tensors, meta_json), "meta": meta_json}
        atomic_write_bytes(path, save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> "SyntheticSet":
        """Read a file written by :meth:`save`, verifying its SHA-256 (tensors and metadata); raises CorruptFileError
        when it fails. Safetensors parsing executes no code. A version-1 file (checksum over the tensors only)
        loads with a warning that its metadata is unchecked."""
        from safetensors.torch import load

        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        try:
            tensors = load(data)
            metadata = _read_metadata(data)
        except Exception as exc:  # safetensors raises its own error type on malformed input
            raise CorruptFileError(f"{path} is truncated or corrupt (not a readable safetensors file: {exc})") from exc
        if metadata.get("format") != _FORMAT:
            raise CorruptFileError(
                f"{path} is a safetensors file but not a pydistill synthetic set (format={metadata.get('format')!r})"
            )
        if "images" not in tensors or "labels" not in tensors:
            raise CorruptFileError(f"{path} lacks the 'images' or 'labels' tensor")
        expected = metadata.get("sha256")
        legacy = metadata.get("version") == "1"
        actual = _digest(tensors, None if legacy else metadata.get("meta", ""))
        if expected != actual:
            raise CorruptFileError(
                f"{path} is corrupt: SHA-256 of its tensors and metadata is {actual}, the file "
                f"records {expected} (edited or damaged)"
            )
        if legacy:
            import warnings

            warnings.warn(
                f"{path} was written by an older pydistill (format version 1): its metadata is not covered "
                "by the checksum; re-save it to protect it",
                stacklevel=2,
            )
        try:
            meta = json.loads(metadata.get("meta", "{}"))
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path} has unreadable metadata JSON: {exc}") from exc
        return cls(tensors["images"], tensors["labels"], tensors.get("lr"), meta).to(device)


def _read_metadata(data: bytes) -> dict:
    if len(data) < 8:
        raise ValueError("file shorter than the safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length exceeds file size")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__", {}))
