"""Datasets as in-memory tensors: loaders, normalization, ZCA whitening, per-class sampling.

Every loader returns a :class:`Dataset` whose images are float32 ``[N, C, H, W]`` normalized per channel
(``(x - mean) / std`` with ``x`` in [0, 1]) and whose labels are int64 ``[N]``. Files are read with
``torchvision.datasets`` from the data home (:func:`data_home`: ``root``, else ``$PYDISTILL_DATA``, else
``$XDG_CACHE_HOME/pydistill/datasets`` or ``~/.cache/pydistill/datasets``); no network unless ``download=True``
lets torchvision fetch them. ``"digits"`` ships with scikit-learn and needs no files. Your own data:
:meth:`Dataset.from_tensors`, :meth:`Dataset.from_torch`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["Dataset", "ZCA", "load_dataset", "dsa_strategy_for", "default_root", "data_home", "cache_home", "DATASETS"]

DATASETS = ("digits", "mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "imagefolder:<path>")

# Published per-channel statistics of the [0, 1] training images (as used by DC/DSA/DM/MTT).
_STATS = {
    "mnist": ([0.1307], [0.3081]),
    "fashionmnist": ([0.2861], [0.3530]),
    "svhn": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
}
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


# ----------------------------------------------------------------------------------------------------------------
# ZCA
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ZCA:
    """ZCA whitening ``x -> (x - mean) @ W`` on flattened images, ``W = U diag(1/sqrt(s + eps)) U^T``.

    ``mean`` [D], ``W`` and ``W_inv`` [D, D] with ``D = C*H*W``; eps regularizes small eigenvalues
    (0.1 as in KIP/MTT on [0, 1] pixels).
    """

    mean: torch.Tensor
    W: torch.Tensor
    W_inv: torch.Tensor
    eps: float

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float = 0.1) -> "ZCA":
        """Fit on images ``x`` [N, C, H, W] (float64 internally)."""
        if x.dim() != 4:
            raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        flat = x.reshape(x.shape[0], -1).double()
        mean = flat.mean(0)
        centered = flat - mean
        cov = centered.T @ centered / max(flat.shape[0] - 1, 1)
        s, u = torch.linalg.eigh(cov)
        s = s.clamp_min(0)
        w = (u * (s + eps).rsqrt()) @ u.T
        w_inv = (u * (s + eps).sqrt()) @ u.T
        return cls(mean.float(), w.float(), w_inv.float(), float(eps))

    def transform(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Whiten ``x`` [N, C, H, W] (same shape out)."""
        return self._apply(x, self.W, batch_size, center=True)

    def inverse(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Undo :meth:`transform` (exact up to float error)."""
        return self._apply(x, self.W_inv, batch_size, center=False)

    def _apply(self, x, mat, batch_size, center):
        shape = x.shape
        flat = x.reshape(shape[0], -1)
        if flat.shape[1] != self.mean.numel():
            raise ValueError(f"x has {flat.shape[1]} features per image, the ZCA was fitted on {self.mean.numel()}")
        mean, mat = self.mean.to(x.device, x.dtype), mat.to(x.device, x.dtype)
        out = torch.empty_like(flat)
        for i in range(0, flat.shape[0], batch_size):
            b = flat[i : i + batch_size]
            out[i : i + batch_size] = ((b - mean) @ mat) if center else (b @ mat + mean)
        return out.reshape(shape)

    def to(self, device) -> "ZCA":
        return ZCA(self.mean.to(device), self.W.to(device), self.W_inv.to(device), self.eps)


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """An image classification dataset held as tensors.

    x_train/x_test: float32 [N, C, H, W], normalized (``(x - mean) / std``; with ``zca`` set, ZCA-whitened
    [0, 1] pixels instead and mean=0, std=1). y_train/y_test: int64 [N]. im_size: (H, W).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str]
    channel: int
    im_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    zca: ZCA | None = None
    _indices_by_class: list[torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        for arg in ("x_train", "x_test"):
            t = getattr(self, arg)
            if t.dim() != 4 or t.shape[1] != self.channel or tuple(t.shape[2:]) != tuple(self.im_size):
                raise ValueError(
                    f"{arg} must be [N, {self.channel}, {self.im_size[0]}, {self.im_size[1]}], got {tuple(t.shape)}"
                )
        for x, y, arg in ((self.x_train, self.y_train, "y_train"), (self.x_test, self.y_test, "y_test")):
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{arg} must be int64 [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
        self.im_size = (int(self.im_size[0]), int(self.im_size[1]))

    @classmethod
    def from_tensors(
        cls,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        *,
        name: str,
        class_names: list[str] | None = None,
        normalize: bool = True,
    ) -> "Dataset":
        """Bring your own data: images [N, C, H, W] (float in [0, 1], or uint8 0..255) and int labels [N] in
        [0, num_classes). normalize: scale by the per-channel mean/std of ``x_train`` (recorded, so
        :meth:`denormalize` returns the [0, 1] images); False keeps the images as given (mean 0, std 1).
        num_classes is ``len(class_names)``, else the largest label + 1."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string naming the dataset, got {name!r}")
        xs = []
        for arg, x in (("x_train", x_train), ("x_test", x_test)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{arg} must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
            if x.dim() != 4 or x.shape[0] < 1:
                raise ValueError(f"{arg} must be [N, C, H, W] with N >= 1, got shape {tuple(x.shape)}")
            if x.dtype == torch.uint8:
                x = x.float() / 255.0
            elif not x.is_floating_point():
                raise TypeError(f"{arg} must be float images in [0, 1] or uint8, got {x.dtype}")
            xs.append(x.detach().cpu().float())
        if xs[0].shape[1:] != xs[1].shape[1:]:
            raise ValueError(
                f"x_train images are {tuple(xs[0].shape[1:])} but x_test images are "
                f"{tuple(xs[1].shape[1:])}; both must be [C, H, W] alike"
            )
        ys = []
        for arg, y, x in (("y_train", y_train, xs[0]), ("y_test", y_test, xs[1])):
            y = torch.as_tensor(y)
            if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(f"{arg} must be integer class ids [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
            ys.append(y.detach().cpu().long())
        top = int(max(int(ys[0].max()), int(ys[1].max()))) + 1
        num_classes = len(class_names) if class_names is not None else top
        for arg, y in (("y_train", ys[0]), ("y_test", ys[1])):
            if int(y.min()) < 0 or int(y.max()) >= num_classes:
                raise ValueError(
                    f"{arg} must hold class ids in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]"
                )
        missing = sorted(set(range(num_classes)) - set(ys[0].unique().tolist()))
        if missing:
            raise ValueError(f"y_train has no image of the classes {missing[:10]}; every class needs training images")
        c = xs[0].shape[1]
        mean, std = (None, None) if normalize else ([0.0] * c, [1.0] * c)
        return _make_dataset(
            name, xs[0], ys[0], xs[1], ys[1], class_names=class_names, mean=mean, std=std, num_classes=num_classes
        )

    @classmethod
    def from_torch(
        cls, train_dataset, test_dataset, *, name: str, class_names: list[str] | None = None, normalize: bool = True
    ) -> "Dataset":
        """Bring your own ``torch.utils.data.Dataset``s (map-style, items ``(image tensor [C, H, W] in [0, 1],
        int label)``, e.g. a torchvision dataset with ``transform=ToTensor()``); read once into memory.
        class_names: default the train dataset's ``classes`` attribute when it has one. See :meth:`from_tensors`."""
        splits = []
        for arg, d in (("train_dataset", train_dataset), ("test_dataset", test_dataset)):
            if not hasattr(d, "__getitem__") or not hasattr(d, "__len__"):
                raise TypeError(
                    f"{arg} must be a map-style torch.utils.data.Dataset (with __getitem__ and "
                    f"__len__), got {type(d).__name__}"
                )
            xs, ys = [], []
            for i in range(len(d)):
                item = d[i]
                if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
                    got = type(item).__name__
                    if isinstance(item, (tuple, list)):
                        got += " of " + ", ".join(type(v).__name__ for v in item)
                    raise TypeError(
                        f"{arg}[{i}] must be (image tensor [C, H, W], int label), got {got} "
                        "(a torchvision dataset needs transform=torchvision.transforms.ToTensor())"
                    )
                x, y = item
                if x.dim() != 3:
                    raise ValueError(f"{arg}[{i}] image must be [C, H, W], got shape {tuple(x.shape)}")
                xs.append(x)
                ys.append(int(y))
            if not xs:
                raise ValueError(f"{arg} is empty")
            try:
                splits.append((torch.stack(xs), torch.tensor(ys, dtype=torch.int64)))
            except RuntimeError as exc:
                raise ValueError(f"{arg}: images differ in shape ({exc})") from None
        if class_names is None and getattr(train_dataset, "classes", None) is not None:
            class_names = [str(c) for c in train_dataset.classes]
        (xtr, ytr), (xte, yte) = splits
        return cls.from_tensors(xtr, ytr, xte, yte, name=name, class_names=class_names, normalize=normalize)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
            f"classes={self.num_classes}, zca={self.zca is not None}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device) -> "Dataset":
        """A copy with every tensor on ``device`` (self when already there)."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
            zca=None if self.zca is None else self.zca.to(device),
        )

    @property
    def indices_by_class(self) -> list[torch.Tensor]:
        """For each class, the int64 indices of its training images (on the dataset's device; cached)."""
        if self._indices_by_class is None:
            self._indices_by_class = [torch.nonzero(self.y_train == c).flatten() for c in range(self.num_classes)]
        return self._indices_by_class

    def sample_real(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``min(n, count_c)`` random training images of class ``c`` without replacement, [n, C, H, W].

        Sampling runs on the dataset's device; ``generator`` must live on that device.
        """
        if not 0 <= int(c) < self.num_classes:
            raise ValueError(f"c must be a class id in [0, {self.num_classes}), got {c}")
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        idx = self.indices_by_class[int(c)]
        perm = torch.randperm(idx.numel(), generator=generator, device=idx.device)[: int(n)]
        return self.x_train[idx[perm]]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images [N, C, H, W] -> displayable images in [0, 1] (ZCA is undone exactly)."""
        if self.zca is not None:
            x = self.zca.inverse(x.float())
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def subset(self, n_per_class: int, seed: int = 0, *, n_test_per_class: int | None = None) -> "Dataset":
        """A smaller dataset: ``n_per_class`` random training images per class (and optionally fewer test ones)."""
        if int(n_per_class) < 1:
            raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
        g = torch.Generator().manual_seed(int(seed))

        def pick(y, n):
            out = []
            for c in range(self.num_classes):
                idx = torch.nonzero(y.cpu() == c).flatten()
                out.append(idx[torch.randperm(idx.numel(), generator=g)[:n]])
            return torch.cat(out).to(y.device)

        tr = pick(self.y_train, int(n_per_class))
        kw = dict(x_train=self.x_train[tr], y_train=self.y_train[tr])
        if n_test_per_class is not None:
            te = pick(self.y_test, int(n_test_per_class))
            kw.update(x_test=self.x_test[te], y_test=self.y_test[te])
        return dataclasses.replace(self, **kw)


def dsa_strategy_for(name: str) -> str:
    """Default DSA strategy: no flip for digit datasets (digits, MNIST, SVHN)."""
    base = name.lower().split(":")[0]
    if base in ("digits", "mnist", "svhn"):
        return "color_crop_cutout_scale_rotate"
    return "color_crop_cutout_flip_scale_rotate"


# ----------------------------------------------------------------------------------------------------------------
# Data home and errors
# ----------------------------------------------------------------------------------------------------------------
def cache_home() -> Path:
    """``$XDG_CACHE_HOME/pydistill``, else ``~/.cache/pydistill`` (where pydistill may write: the default data home
    and the decompressed copies of ``.gz`` idx files)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pydistill"


def data_home(root: str | os.PathLike | None = None) -> Path:
    """The folder datasets are read from: ``root`` when given, else ``$PYDISTILL_DATA``, else
    ``cache_home() / "datasets"``. Never a path relative to the package or the working directory."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("PYDISTILL_DATA")
    if env:
        return Path(env).expanduser()
    return cache_home() / "datasets"


def default_root() -> Path:
    """The data home when no root is given (:func:`data_home` of None)."""
    return data_home(None)


def _missing(name: str, looked: list[Path], how: str) -> FileNotFoundError:
    paths = "\n  ".join(str(p) for p in looked)
    return FileNotFoundError(
        f"dataset {name!r} not found. Looked at:\n  {paths}\n{how}\nTo fix it, either:\n"
        "  1. pass root=... (CLI: --data-root DIR) naming the folder that holds it,\n"
        "  2. set the PYDISTILL_DATA environment variable to that folder, or\n"
        f"  3. put the files in the default data home {cache_home() / 'datasets'} (or let torchvision download "
        "them there: download=True, CLI --download)."
    )


# ----------------------------------------------------------------------------------------------------------------
# Loaders (through torchvision.datasets; return uint8/float images as NCHW arrays + int labels)
# ----------------------------------------------------------------------------------------------------------------
_MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _staged_idx_root(cls_name: str, folder: Path, files: dict[str, Path]) -> Path:
    """A root for torchvision's MNIST-style readers holding ``<root>/<cls_name>/raw/<stem>`` for every idx file of
    ``folder``: the files themselves when ``folder`` already is that layout, else decompressed copies (``.gz``) or
    links in ``cache_home()/staged`` (the data folder is never written: it may be read-only)."""
    if folder.name == "raw" and folder.parent.name == cls_name and all(p.suffix != ".gz" for p in files.values()):
        return folder.parent.parent
    h = hashlib.sha256()
    for stem in _MNIST_STEMS:
        st = files[stem].stat()
        h.update(f"{files[stem].resolve()}|{st.st_size}|{st.st_mtime_ns}|".encode())
    staged = cache_home() / "staged" / h.hexdigest()[:16]
    raw = staged / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem, src in files.items():
        dst = raw / stem
        if dst.is_file():
            continue
        tmp = raw / f".{stem}.{os.getpid()}.tmp"
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dst)  # atomic: a concurrent or killed run never leaves a half-written file
    return staged


def _load_mnist_like(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    if download:
        parts = [cls(str(root), train=t, download=True) for t in (True, False)]
    else:
        looked = []
        folders = ("MNIST", "mnist") if name == "mnist" else ("FashionMNIST", "fashionmnist", "fashion-mnist")
        found = None
        for d in [root / f / "raw" for f in folders] + [root / f for f in folders] + [root]:
            files = {}
            for stem in _MNIST_STEMS:
                for cand in (d / stem, d / (stem + ".gz")):
                    looked.append(cand)
                    if cand.is_file():
                        files[stem] = cand
                        break
            if len(files) == 4:
                found = (d, files)
                break
        if found is None:
            raise _missing(
                name,
                looked,
                f"Expected the four idx files ({', '.join(s + '[.gz]' for s in _MNIST_STEMS)})"
                f" in <root>/{folders[0]}/raw/ (torchvision's layout).",
            )
        staged = _staged_idx_root(cls.__name__, *found)
        parts = [cls(str(staged), train=t, download=False) for t in (True, False)]
    (xtr, ytr), (xte, yte) = [(p.data.numpy()[:, None], p.targets.numpy()) for p in parts]
    return xtr, ytr, xte, yte, list(parts[0].classes)


def _without_md5(cls):
    """A subclass of torchvision's CIFAR-10/100 or SVHN reader that checks its files exist instead of their MD5
    sums: the sums guard downloads of the official archives, while a local copy (re-packed, or a test's small
    files) is trusted like the ``.npz`` layout; a malformed file still fails when it is unpickled/loaded."""

    class Reader(cls):
        def _check_integrity(self) -> bool:
            if hasattr(self, "train_list"):
                names = [os.path.join(self.root, self.base_folder, f) for f, _ in self.train_list + self.test_list]
            else:
                names = [os.path.join(self.root, self.filename)]
            return all(os.path.isfile(f) for f in names)

        def _load_meta(self) -> None:  # CIFAR: class names from the meta file when present
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            self.classes = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    self.classes = list(pickle.load(f, encoding="latin1")[self.meta["key"]])

    Reader.__name__ = Reader.__qualname__ = cls.__name__
    return Reader


def _load_cifar(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    n = 10 if name == "cifar10" else 100
    folder = "cifar-10-batches-py" if n == 10 else "cifar-100-python"
    tv_cls = tvd.CIFAR10 if n == 10 else tvd.CIFAR100
    looked = []
    if download:
        parts = [tv_cls(str(root), train=t, download=True) for t in (True, False)]
    else:
        for cand in (root / f"{name}.npz", root / name / f"{name}.npz", root / name.upper() / f"{name}.npz"):
            looked.append(cand)
            if cand.is_file():
                with np.load(cand) as z:
                    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
                    if missing:
                        raise ValueError(f"{cand} lacks the arrays {missing} (expected x_train/y_train/x_test/y_test)")
                    return (
                        _hwc_to_chw(z["x_train"]),
                        z["y_train"].reshape(-1),
                        _hwc_to_chw(z["x_test"]),
                        z["y_test"].reshape(-1),
                        None,
                    )
        parts = None
        for d in (root / folder, root / name / folder, root / name.upper() / folder):
            looked.append(d)
            if d.is_dir():
                reader = _without_md5(tv_cls)
                parts = [reader(str(d.parent), train=t, download=False) for t in (True, False)]
                break
        if parts is None:
            raise _missing(
                name,
                looked,
                f"Expected {name}.npz (x_train [N,32,32,3] uint8, y_train, x_test, y_test) "
                f"or torchvision's {folder} folder.",
            )
    (xtr, ytr), (xte, yte) = [(p.data.transpose(0, 3, 1, 2), np.asarray(p.targets)) for p in parts]
    classes = parts[0].classes
    return xtr, ytr, xte, yte, None if classes is None else list(classes)


def _hwc_to_chw(x: np.ndarray) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C] or [N, C, H, W], got shape {x.shape}")
    return x if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3) else x.transpose(0, 3, 1, 2)


def _load_svhn(root: Path, download: bool):
    import torchvision.datasets as tvd

    if download:
        d = root / "SVHN"
        parts = [tvd.SVHN(str(d), split=s, download=True) for s in ("train", "test")]
    else:
        looked, parts = [], None
        for d in (root / "SVHN", root / "svhn", root):
            tr, te = d / "train_32x32.mat", d / "test_32x32.mat"
            looked += [tr, te]
            if tr.is_file() and te.is_file():
                reader = _without_md5(tvd.SVHN)
                parts = [reader(str(d), split=s, download=False) for s in ("train", "test")]
                break
        if parts is None:
            raise _missing("svhn", looked, "Expected torchvision's train_32x32.mat and test_32x32.mat (format 2).")
    # torchvision maps SVHN's label 10 (the digit 0) to 0
    (xtr, ytr), (xte, yte) = [(np.ascontiguousarray(p.data), p.labels) for p in parts]
    return xtr, ytr, xte, yte


def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # values 0..16
    y = d.target.astype(np.int64)
    # Fixed stratified split: every 5th image of each class (in file order) is a test image (1437/360).
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.nonzero(y == c)[0]
        test[idx[4::5]] = True
    return x[~test], y[~test], x[test], y[test]


def _load_imagefolder(path: str, image_size, channels):
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    base = Path(path).expanduser()
    tr = base / "train"
    te = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    if not tr.is_dir() or te is None:
        raise _missing(
            f"imagefolder:{path}",
            [tr, base / "val", base / "test"],
            "Expected <path>/train/<class>/*.png|jpg and <path>/val/<class>/... (or test/).",
        )
    try:
        train = ImageFolder(str(tr))  # torchvision: classes = sorted subfolders, samples = (file, class id)
    except FileNotFoundError as exc:
        raise ValueError(f"{tr}: {exc}") from None
    classes = list(train.classes)
    mode = {1: "L", 3: "RGB"}[channels]
    size = (
        None if image_size is None else (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    )

    def read(samples, split, fixed_size):
        nonlocal size
        xs, ys = [], []
        for f, c in samples:
            with Image.open(f) as im:
                im = im.convert(mode)
                if size is not None:
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
            if size is None:
                size = arr.shape[:2]
            elif fixed_size and arr.shape[:2] != tuple(size):
                raise ValueError(
                    f"{f} is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                    f"{size[1]}x{size[0]}; pass image_size= to resize"
                )
            xs.append(arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1))
            ys.append(c)
        if not xs:
            raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {split}")
        if any(x.shape != xs[0].shape for x in xs):
            raise ValueError(f"the images under {split} differ in size; pass image_size= to resize")
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    xtr, ytr = read(train.samples, tr, True)
    test_samples = make_dataset(str(te), train.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    size = None if image_size is None else size
    xte, yte = read(test_samples, te, image_size is not None)  # load_dataset resizes them to the train size
    return xtr, ytr, xte, yte, classes


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    zca: bool = False,
    device="cpu",
    zca_eps: float = 0.1,
    image_size: int | tuple[int, int] | None = None,
    channels: int = 3,
    download: bool = False,
) -> Dataset:
    """Load a dataset by name into memory.

    name: "digits" (scikit-learn, 1x8x8), "mnist"/"fashionmnist" (1x28x28 idx files), "svhn", "cifar10",
    "cifar100" (3x32x32), or "imagefolder:<path>" (``<path>/train`` and ``<path>/val`` or ``test``, one
    subfolder per class; ``image_size`` resizes, ``channels`` 1 or 3). Files are read with
    ``torchvision.datasets`` from :func:`data_home` (``root``, else ``$PYDISTILL_DATA``, else the cache);
    CIFAR-10/100 also from ``<root>/<name>.npz``.
    zca: whiten with ZCA (fitted on the training set, ``zca_eps`` regularization) instead of mean/std scaling.
    download: let torchvision download MNIST/FashionMNIST/CIFAR/SVHN into the data home (needs a network).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a dataset name such as {DATASETS}, got {name!r}")
    key = name.lower()
    home = data_home(root)
    class_names = None
    if key == "digits":
        xtr, ytr, xte, yte = _load_digits()
        mean = [float(xtr.mean())]
        std = [float(xtr.std())]
    elif key in ("mnist", "fashionmnist", "fashion-mnist", "fashion_mnist"):
        key = "mnist" if key == "mnist" else "fashionmnist"
        xtr, ytr, xte, yte, names = _load_mnist_like(key, home, download)
        mean, std = _STATS[key]
        if key == "fashionmnist":
            class_names = list(_FASHION_CLASSES)
    elif key == "svhn":
        xtr, ytr, xte, yte = _load_svhn(home, download)
        mean, std = _STATS[key]
    elif key in ("cifar10", "cifar100"):
        xtr, ytr, xte, yte, class_names = _load_cifar(key, home, download)
        mean, std = _STATS[key]
        if class_names is None:
            class_names = list(_CIFAR10_CLASSES) if key == "cifar10" else None
    elif key.startswith("imagefolder:"):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        xtr, ytr, xte, yte, class_names = _load_imagefolder(name.split(":", 1)[1], image_size, channels)
        key = name
        mean = std = None  # the training images' own statistics
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")

    def to_tensor(x):
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()

    x_train, x_test = to_tensor(xtr), to_tensor(xte)
    y_train = torch.from_numpy(np.asarray(ytr).astype(np.int64))
    y_test = torch.from_numpy(np.asarray(yte).astype(np.int64))
    if key.startswith("imagefolder:") and x_test.shape[2:] != x_train.shape[2:]:
        x_test = torch.nn.functional.interpolate(x_test, size=x_train.shape[2:], mode="bilinear", align_corners=False)
    return _make_dataset(
        key, x_train, y_train, x_test, y_test, class_names=class_names, mean=mean, std=std, zca=zca, zca_eps=zca_eps
    ).to(device)


def _make_dataset(
    name, x_train, y_train, x_test, y_test, *, class_names, mean, std, zca=False, zca_eps=0.1, num_classes=None
) -> Dataset:
    """A Dataset from [0, 1] float images [N, C, H, W] and int64 labels: ZCA-whitened (``zca``), else scaled by
    ``mean``/``std`` (per channel; None: the training images' own statistics)."""
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else int(y_train.max()) + 1
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    zca_t = None
    if zca:
        zca_t = ZCA.fit(x_train, eps=zca_eps)
        x_train, x_test = zca_t.transform(x_train), zca_t.transform(x_test)
        mean, std = [0.0] * x_train.shape[1], [1.0] * x_train.shape[1]
    else:
        if mean is None:
            xf = x_train.double()
            mean, std = xf.mean((0, 2, 3)).tolist(), xf.std((0, 2, 3), correction=0).clamp_min(1e-8).tolist()
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        x_train, x_test = (x_train - m) / s, (x_test - m) / s
    return Dataset(
        name=name,
        x_train=x_train.contiguous(),
        y_train=y_train,
        x_test=x_test.contiguous(),
        y_test=y_test,
        num_classes=int(num_classes),
        class_names=list(class_names),
        channel=int(x_train.shape[1]),
        im_size=(int(x_train.shape[2]), int(x_train.shape[3])),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        zca=zca_t,
    )


def random_subset_indices(dataset: Dataset, ipc: int, seed: int, draw: int) -> torch.Tensor:
    """Training-set indices of ``ipc`` random images per class (class-major, int64 on ``dataset.device``) for
    draw number ``draw`` of ``seed``: the random-real-subset baseline's draw (a new one per evaluated network)."""
    g = torch.Generator().manual_seed(int(seed) * 7919 + int(draw))
    picks = [idx.cpu()[torch.randperm(idx.numel(), generator=g)[:ipc]] for idx in dataset.indices_by_class]
    return torch.cat(picks).to(dataset.device)


__all__ += ["random_subset_indices"]
