"""Datasets as in-memory tensors: loaders, normalization, ZCA whitening, per-class sampling.

Every loader returns a :class:`Dataset` whose images are float32 ``[N, C, H, W]`` normalized per channel
(``(x - mean) / std`` with ``x`` in [0, 1]) and whose labels are int64 ``[N]``. No network access: files are
read from ``root`` (argument, else ``$PYDISTILL_DATA``, else ``../shared/datasets`` next to the repository
or the working directory). ``"digits"`` ships with scikit-learn and needs no files.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["Dataset", "ZCA", "load_dataset", "dsa_strategy_for", "default_root", "DATASETS"]

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
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")
_IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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
            b = flat[i:i + batch_size]
            out[i:i + batch_size] = ((b - mean) @ mat) if center else (b @ mat + mean)
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
                raise ValueError(f"{arg} must be [N, {self.channel}, {self.im_size[0]}, {self.im_size[1]}], "
                                 f"got {tuple(t.shape)}")
        for x, y, arg in ((self.x_train, self.y_train, "y_train"), (self.x_test, self.y_test, "y_test")):
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{arg} must be int64 [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
        self.im_size = (int(self.im_size[0]), int(self.im_size[1]))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"classes={self.num_classes}, zca={self.zca is not None}, device={self.device})")

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device) -> "Dataset":
        """A copy with every tensor on ``device`` (self when already there)."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        return dataclasses.replace(
            self, x_train=self.x_train.to(device), y_train=self.y_train.to(device), x_test=self.x_test.to(device),
            y_test=self.y_test.to(device), zca=None if self.zca is None else self.zca.to(device))

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
# Roots and errors
# ----------------------------------------------------------------------------------------------------------------
def default_root() -> Path | None:
    """``$PYDISTILL_DATA``, else ``../shared/datasets`` relative to the repository or the cwd when it exists."""
    env = os.environ.get("PYDISTILL_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    for cand in (repo.parent / "shared" / "datasets", Path.cwd().parent / "shared" / "datasets",
                 Path.cwd() / "shared" / "datasets"):
        if cand.is_dir():
            return cand
    return None


def _missing(name: str, looked: list[Path], how: str) -> FileNotFoundError:
    paths = "\n  ".join(str(p) for p in looked) or "(no data root: pass root= or set PYDISTILL_DATA)"
    return FileNotFoundError(
        f"dataset {name!r} not found. Looked at:\n  {paths}\n{how}\n"
        "Pass root=... (CLI: --data-root) or set the PYDISTILL_DATA environment variable to the folder holding it.")


# ----------------------------------------------------------------------------------------------------------------
# Loaders (return uint8/float images in [0, 1] as float32 NCHW tensors + int64 labels)
# ----------------------------------------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims).copy()


def _load_mnist_like(name: str, root: Path | None, folders: tuple[str, ...]):
    stems = {"xtr": "train-images-idx3-ubyte", "ytr": "train-labels-idx1-ubyte",
             "xte": "t10k-images-idx3-ubyte", "yte": "t10k-labels-idx1-ubyte"}
    looked = []
    roots = [] if root is None else [root / f / "raw" for f in folders] + [root / f for f in folders] + [root]
    for d in roots:
        found = {}
        for key, stem in stems.items():
            for cand in (d / (stem + ".gz"), d / stem):
                looked.append(cand)
                if cand.is_file():
                    found[key] = cand
                    break
        if len(found) == 4:
            arrs = {k: _read_idx(p) for k, p in found.items()}
            return arrs["xtr"][:, None], arrs["ytr"], arrs["xte"][:, None], arrs["yte"]
    raise _missing(name, looked, f"Expected the four idx files ({', '.join(s + '[.gz]' for s in stems.values())}) "
                                 f"in <root>/{folders[0]}/raw/ (torchvision's layout).")


def _load_cifar(name: str, root: Path | None):
    n = 10 if name == "cifar10" else 100
    looked = []
    if root is not None:
        for cand in (root / f"{name}.npz", root / name / f"{name}.npz", root / name.upper() / f"{name}.npz"):
            looked.append(cand)
            if cand.is_file():
                with np.load(cand) as z:
                    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
                    if missing:
                        raise ValueError(f"{cand} lacks the arrays {missing} (expected x_train/y_train/x_test/y_test)")
                    return (_hwc_to_chw(z["x_train"]), z["y_train"].reshape(-1), _hwc_to_chw(z["x_test"]),
                            z["y_test"].reshape(-1))
        folder = "cifar-10-batches-py" if n == 10 else "cifar-100-python"
        for d in (root / folder, root / name / folder, root / name.upper() / folder):
            looked.append(d)
            if d.is_dir():
                return _read_cifar_pickles(d, n)
    raise _missing(name, looked, f"Expected {name}.npz (x_train [N,32,32,3] uint8, y_train, x_test, y_test) or "
                                 f"torchvision's {'cifar-10-batches-py' if n == 10 else 'cifar-100-python'} folder.")


def _hwc_to_chw(x: np.ndarray) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C] or [N, C, H, W], got shape {x.shape}")
    return x if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3) else x.transpose(0, 3, 1, 2)


def _read_cifar_pickles(d: Path, n: int):
    def read(fname):
        with open(d / fname, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
        return np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels)

    if n == 10:
        parts = [read(f"data_batch_{i}") for i in range(1, 6)]
        xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        xte, yte = read("test_batch")
    else:
        (xtr, ytr), (xte, yte) = read("train"), read("test")
    return xtr, ytr, xte, yte


def _cifar_class_names(root: Path | None, n: int) -> list[str]:
    if n == 10:
        return list(_CIFAR10_CLASSES)
    if root is not None:
        for meta in (root / "cifar-100-python" / "meta", root / "cifar100" / "cifar-100-python" / "meta"):
            if meta.is_file():
                with open(meta, "rb") as f:
                    return list(pickle.load(f, encoding="latin1")["fine_label_names"])
    return [str(i) for i in range(n)]


def _load_svhn(root: Path | None):
    looked = []
    if root is not None:
        for d in (root / "SVHN", root / "svhn", root):
            tr, te = d / "train_32x32.mat", d / "test_32x32.mat"
            looked += [tr, te]
            if tr.is_file() and te.is_file():
                from scipy.io import loadmat

                out = []
                for p in (tr, te):
                    m = loadmat(p)
                    x = np.ascontiguousarray(m["X"].transpose(3, 2, 0, 1))
                    y = m["y"].reshape(-1).astype(np.int64) % 10  # label 10 is the digit 0
                    out += [x, y]
                return tuple(out)
    raise _missing("svhn", looked, "Expected torchvision's train_32x32.mat and test_32x32.mat (format 2).")


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

    base = Path(path).expanduser()
    tr = base / "train"
    te = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    if not tr.is_dir() or te is None:
        raise _missing(f"imagefolder:{path}", [tr, base / "val", base / "test"],
                       "Expected <path>/train/<class>/*.png|jpg and <path>/val/<class>/... (or test/).")
    classes = sorted(p.name for p in tr.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{tr} has no class subfolders")
    mode = {1: "L", 3: "RGB"}[channels]

    def read_split(split: Path):
        xs, ys = [], []
        size = None if image_size is None else (image_size, image_size) if isinstance(image_size, int) \
            else tuple(image_size)
        for c, cname in enumerate(classes):
            cdir = split / cname
            if not cdir.is_dir():
                continue
            for f in sorted(cdir.iterdir()):
                if f.suffix.lower() not in _IMG_EXT:
                    continue
                with Image.open(f) as im:
                    im = im.convert(mode)
                    if size is not None:
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
                if size is None:
                    size = arr.shape[:2]
                elif arr.shape[:2] != tuple(size):
                    raise ValueError(f"{f} is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                                     f"{size[1]}x{size[0]}; pass image_size= to resize")
                xs.append(arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1))
                ys.append(c)
        if not xs:
            raise ValueError(f"no images ({', '.join(_IMG_EXT)}) found under {split}")
        return np.stack(xs), np.asarray(ys, dtype=np.int64), size

    xtr, ytr, size = read_split(tr)
    xte, yte, _ = read_split(te)  # resized to the train size by load_dataset when they differ
    return xtr, ytr, xte, yte, classes


def load_dataset(name: str, root: str | os.PathLike | None = None, *, zca: bool = False, device="cpu",
                 zca_eps: float = 0.1, image_size: int | tuple[int, int] | None = None,
                 channels: int = 3) -> Dataset:
    """Load a dataset by name into memory.

    name: "digits" (scikit-learn, 1x8x8), "mnist"/"fashionmnist" (1x28x28 idx files), "svhn", "cifar10",
    "cifar100" (3x32x32), or "imagefolder:<path>" (``<path>/train`` and ``<path>/val`` or ``test``, one
    subfolder per class; ``image_size`` resizes, ``channels`` 1 or 3).
    zca: whiten with ZCA (fitted on the training set, ``zca_eps`` regularization) instead of mean/std scaling.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a dataset name such as {DATASETS}, got {name!r}")
    key = name.lower()
    root = Path(root).expanduser() if root is not None else default_root()
    class_names = None
    if key == "digits":
        xtr, ytr, xte, yte = _load_digits()
        mean = [float(xtr.mean())]
        std = [float(xtr.std())]
    elif key in ("mnist", "fashionmnist", "fashion-mnist", "fashion_mnist"):
        key = "mnist" if key == "mnist" else "fashionmnist"
        folders = ("MNIST", "mnist") if key == "mnist" else ("FashionMNIST", "fashionmnist", "fashion-mnist")
        xtr, ytr, xte, yte = _load_mnist_like(key, root, folders)
        mean, std = _STATS[key]
        if key == "fashionmnist":
            class_names = list(_FASHION_CLASSES)
    elif key == "svhn":
        xtr, ytr, xte, yte = _load_svhn(root)
        mean, std = _STATS[key]
    elif key in ("cifar10", "cifar100"):
        xtr, ytr, xte, yte = _load_cifar(key, root)
        mean, std = _STATS[key]
        class_names = _cifar_class_names(root, 10 if key == "cifar10" else 100)
    elif key.startswith("imagefolder:"):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        xtr, ytr, xte, yte, class_names = _load_imagefolder(name.split(":", 1)[1], image_size, channels)
        key = name
        xf = xtr.astype(np.float64) / 255.0
        mean = xf.mean(axis=(0, 2, 3)).tolist()
        std = xf.std(axis=(0, 2, 3)).tolist()
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")

    def to_tensor(x):
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()

    x_train, x_test = to_tensor(xtr), to_tensor(xte)
    y_train = torch.from_numpy(np.asarray(ytr).astype(np.int64))
    y_test = torch.from_numpy(np.asarray(yte).astype(np.int64))
    if key.startswith("imagefolder:") and x_test.shape[2:] != x_train.shape[2:]:
        x_test = torch.nn.functional.interpolate(x_test, size=x_train.shape[2:], mode="bilinear",
                                                 align_corners=False)
    num_classes = len(class_names) if class_names is not None else int(y_train.max()) + 1
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    zca_t = None
    if zca:
        zca_t = ZCA.fit(x_train, eps=zca_eps)
        x_train, x_test = zca_t.transform(x_train), zca_t.transform(x_test)
        mean, std = [0.0] * x_train.shape[1], [1.0] * x_train.shape[1]
    else:
        m = torch.tensor(mean).view(1, -1, 1, 1)
        s = torch.tensor(std).view(1, -1, 1, 1)
        x_train, x_test = (x_train - m) / s, (x_test - m) / s
    ds = Dataset(name=key, x_train=x_train.contiguous(), y_train=y_train, x_test=x_test.contiguous(), y_test=y_test,
                 num_classes=num_classes, class_names=list(class_names), channel=int(x_train.shape[1]),
                 im_size=(int(x_train.shape[2]), int(x_train.shape[3])), mean=[float(v) for v in mean],
                 std=[float(v) for v in std], zca=zca_t)
    return ds.to(device)


def random_subset_indices(dataset: Dataset, ipc: int, seed: int, draw: int) -> torch.Tensor:
    """Training-set indices of ``ipc`` random images per class (class-major, int64 on ``dataset.device``) for
    draw number ``draw`` of ``seed``: the random-real-subset baseline's draw (a new one per evaluated network)."""
    g = torch.Generator().manual_seed(int(seed) * 7919 + int(draw))
    picks = [idx.cpu()[torch.randperm(idx.numel(), generator=g)[:ipc]] for idx in dataset.indices_by_class]
    return torch.cat(picks).to(dataset.device)
__all__ += ["random_subset_indices"]
