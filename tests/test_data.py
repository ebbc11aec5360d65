"""Dataset loaders, normalization, ZCA, per-class sampling (pydistill.data)."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from pydistill.data import ZCA, Dataset, cache_home, data_home, default_root, dsa_strategy_for, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits(digits):
    d = digits
    assert isinstance(d, Dataset)
    assert d.name == "digits" and d.num_classes == 10 and d.channel == 1 and d.im_size == (8, 8)
    assert d.x_train.shape == (1442, 1, 8, 8) and d.x_test.shape == (355, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert torch.bincount(d.y_train).min() >= 140 and torch.bincount(d.y_test).min() >= 34
    # normalized with the training statistics
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    raw = d.denormalize(d.x_train)
    assert float(raw.min()) >= 0 and float(raw.max()) <= 1
    # values are multiples of 1/16 in the source data
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-4)
    assert len(d.class_names) == 10


def test_per_class_sampling(digits):
    d = digits
    idx = d.indices_by_class
    assert idx is d.indices_by_class  # cached
    assert sum(i.numel() for i in idx) == d.x_train.shape[0]
    for c in (0, 7):
        g = torch.Generator().manual_seed(3)
        x = d.sample_real(c, 13, g)
        assert x.shape == (13, 1, 8, 8)
        # every sample is a distinct training image of class c
        match = (x.flatten(1)[:, None] == d.x_train.flatten(1)[None]).all(-1)
        rows = match.float().argmax(1)
        assert match.any(1).all() and (d.y_train[rows] == c).all() and rows.unique().numel() == 13
        again = d.sample_real(c, 13, torch.Generator().manual_seed(3))
        assert torch.equal(x, again)
    n_c = idx[2].numel()
    assert d.sample_real(2, n_c + 50).shape[0] == n_c  # at most the class size, no repeats
    with pytest.raises(ValueError, match="class id"):
        d.sample_real(10, 1)
    with pytest.raises(ValueError, match="n must be"):
        d.sample_real(0, 0)


def test_subset_and_to(digits):
    s = digits.subset(3, seed=1, n_test_per_class=2)
    assert torch.bincount(s.y_train, minlength=10).tolist() == [3] * 10
    assert torch.bincount(s.y_test, minlength=10).tolist() == [2] * 10
    assert torch.equal(s.x_train, digits.subset(3, seed=1).x_train)
    assert not torch.equal(s.x_train, digits.subset(3, seed=2).x_train)
    assert s.to("cpu") is s
    with pytest.raises(ValueError, match="n_per_class"):
        digits.subset(0)


def test_dsa_strategy_for():
    assert "flip" not in dsa_strategy_for("digits")
    assert "flip" not in dsa_strategy_for("MNIST") and "flip" not in dsa_strategy_for("svhn")
    assert dsa_strategy_for("cifar10") == "color_crop_cutout_flip_scale_rotate"


def test_missing_dataset_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar10.npz") in msg and "cifar-10-batches-py" in msg and "PYDISTILL_DATA" in msg
    # the three ways to fix it: root=/--data-root, $PYDISTILL_DATA, the default data home (or --download)
    assert "root=" in msg and "--data-root" in msg and str(cache_home() / "datasets") in msg and "--download" in msg
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="val"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet-22k", root=tmp_path)


def _rand_u8(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_cifar_npz_tmp(tmp_path):
    xtr, xte = _rand_u8((30, 32, 32, 3), 0), _rand_u8((10, 32, 32, 3), 1)
    ytr, yte = np.arange(30) % 10, np.arange(10)
    np.savez(
        tmp_path / "cifar10.npz", x_train=xtr, y_train=ytr.astype(np.uint8), x_test=xte, y_test=yte.astype(np.uint8)
    )
    d = load_dataset("cifar10", root=tmp_path)
    assert d.x_train.shape == (30, 3, 32, 32) and d.channel == 3 and d.class_names[0] == "airplane"
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    expect = (torch.from_numpy(xtr).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(d.x_train, expect)
    assert d.y_train.tolist() == ytr.tolist()
    torch.testing.assert_close(d.denormalize(d.x_test), torch.from_numpy(xte).permute(0, 3, 1, 2).float() / 255)


def test_cifar_pickles_tmp(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": _rand_u8((4, 3072), i), "labels": [i, 0, 1, 2]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _rand_u8((3, 3072), 9), "labels": [9, 8, 7]}, f)
    d = load_dataset("cifar10", root=tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.y_train[:4].tolist() == [1, 0, 1, 2]
    assert d.y_test.tolist() == [9, 8, 7] and d.num_classes == 10


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private $XDG_CACHE_HOME (where decompressed idx files are staged)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "pydistill"


def test_mnist_idx_tmp(tmp_path, cache):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    xtr, xte = _rand_u8((12, 28, 28), 0), _rand_u8((5, 28, 28), 1)
    _write_idx(raw / "train-images-idx3-ubyte.gz", xtr)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", xte)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    d = load_dataset("mnist", root=tmp_path)
    assert d.x_train.shape == (12, 1, 28, 28) and d.im_size == (28, 28)
    torch.testing.assert_close(d.x_train, (torch.from_numpy(xtr)[:, None].float() / 255 - 0.1307) / 0.3081)
    assert d.y_train.tolist() == (np.arange(12) % 10).tolist()
    # the data folder is left as it was (read-only in CI); the decompressed copies live in the cache
    assert sorted(p.name for p in raw.iterdir()) == sorted(p.name for p in raw.glob("*.gz"))
    assert len(list(cache.glob("staged/*/MNIST/raw/train-images-idx3-ubyte"))) == 1


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_like_torchvision_layout(tmp_path, cache, name, folder):
    """torchvision's own layout (decompressed idx files in <root>/<Class>/raw) is read in place."""
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    xtr, xte = _rand_u8((7, 28, 28), 2), _rand_u8((3, 28, 28), 3)
    for stem, arr in (
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", np.arange(7)),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", np.array([9, 0, 5])),
    ):
        _write_idx(raw / stem, arr)
    d = load_dataset(name, root=tmp_path)
    assert d.name == name and d.y_test.tolist() == [9, 0, 5] and d.x_test.shape == (3, 1, 28, 28)
    torch.testing.assert_close(d.denormalize(d.x_train), torch.from_numpy(xtr)[:, None].float() / 255)
    assert not cache.exists()  # nothing staged
    if name == "fashionmnist":
        assert d.class_names[0] == "T-shirt/top"


def test_cifar100_pickles_with_meta(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"c{i}" for i in range(100)]
    xtr, xte = _rand_u8((6, 3072), 4), _rand_u8((2, 3072), 5)
    for fname, x, y in (("train", xtr, [99, 0, 1, 2, 3, 4]), ("test", xte, [7, 99])):
        with open(folder / fname, "wb") as f:
            pickle.dump({"data": x, "fine_labels": y, "coarse_labels": [0] * len(y)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": []}, f)
    d = load_dataset("cifar100", root=tmp_path)
    assert d.num_classes == 100 and d.class_names == names and d.y_train.tolist() == [99, 0, 1, 2, 3, 4]
    torch.testing.assert_close(
        d.denormalize(d.x_test), torch.from_numpy(xte).float().view(2, 3, 32, 32) / 255, atol=1e-6, rtol=0
    )


def test_svhn_mat_tmp(tmp_path):
    from scipy.io import savemat

    folder = tmp_path / "SVHN"
    folder.mkdir()
    xs = {}
    for split, n, labels in (("train", 5, [10, 1, 2, 3, 10]), ("test", 3, [4, 10, 9])):
        x = _rand_u8((32, 32, 3, n), n)  # format 2: [H, W, C, N], label 10 is the digit 0
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": np.asarray(labels, dtype=np.uint8)[:, None]})
        xs[split] = x
    d = load_dataset("svhn", root=tmp_path)
    assert d.y_train.tolist() == [0, 1, 2, 3, 0] and d.y_test.tolist() == [4, 0, 9]
    expect = torch.from_numpy(xs["train"]).permute(3, 2, 0, 1).float() / 255
    torch.testing.assert_close(d.denormalize(d.x_train), expect, atol=1e-6, rtol=0)


def test_data_home_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("PYDISTILL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "pydistill" / "datasets" == default_root()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_home() == tmp_path / "home" / ".cache" / "pydistill" / "datasets"
    monkeypatch.setenv("PYDISTILL_DATA", str(tmp_path / "env"))
    assert data_home() == tmp_path / "env"
    assert data_home(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "env")):
        load_dataset("cifar10")  # no file: the error names $PYDISTILL_DATA's folder


def test_download_passes_through_to_torchvision(tmp_path, monkeypatch):
    """download=True hands the data home to torchvision with download=True (a fake reader: no network here)."""
    import torchvision.datasets as tvd

    calls = []

    class FakeMNIST:
        classes = [str(i) for i in range(10)]

        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            self.data = torch.zeros(4 if train else 2, 28, 28, dtype=torch.uint8)
            self.targets = torch.arange(4 if train else 2)

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    d = load_dataset("mnist", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert d.x_train.shape == (4, 1, 28, 28)


def test_from_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.rand(12, 3, 6, 5, generator=g), torch.rand(4, 3, 6, 5, generator=g)
    ytr, yte = torch.arange(12) % 3, torch.tensor([0, 1, 2, 2])
    d = Dataset.from_tensors(xtr, ytr, xte, yte, name="toy", class_names=["a", "b", "c"])
    assert d.name == "toy" and d.num_classes == 3 and d.channel == 3 and d.im_size == (6, 5)
    torch.testing.assert_close(d.x_train.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.x_train.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.mean, xtr.mean((0, 2, 3)).tolist())
    torch.testing.assert_close(d.denormalize(d.x_test), xte)
    raw = Dataset.from_tensors(
        (xtr * 255).to(torch.uint8), ytr, (xte * 255).to(torch.uint8), yte, name="toy", normalize=False
    )
    assert raw.mean == [0.0] * 3 and raw.num_classes == 3
    torch.testing.assert_close(raw.x_train, (xtr * 255).to(torch.uint8).float() / 255)
    with pytest.raises(ValueError, match=r"y_test must hold class ids in \[0, 3\)"):
        Dataset.from_tensors(xtr, ytr, xte, torch.tensor([0, 1, 2, 3]), name="toy", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="y_train must be integer class ids"):
        Dataset.from_tensors(xtr, ytr.float(), xte, yte, name="toy")
    with pytest.raises(ValueError, match="x_test images are"):
        Dataset.from_tensors(xtr, ytr, xte[:, :1], yte, name="toy")
    with pytest.raises(ValueError, match=r"no image of the classes \[3\]"):
        Dataset.from_tensors(xtr, ytr, xte, yte, name="toy", class_names=list("abcd"))
    with pytest.raises(ValueError, match="name must be"):
        Dataset.from_tensors(xtr, ytr, xte, yte, name="")


def test_from_torch():
    g = torch.Generator().manual_seed(1)
    xtr, xte = torch.rand(8, 1, 4, 4, generator=g), torch.rand(3, 1, 4, 4, generator=g)
    ytr, yte = torch.arange(8) % 2, torch.tensor([1, 0, 1])
    tr, te = torch.utils.data.TensorDataset(xtr, ytr), torch.utils.data.TensorDataset(xte, yte)
    d = Dataset.from_torch(tr, te, name="pairs")
    ref = Dataset.from_tensors(xtr, ytr, xte, yte, name="pairs")
    torch.testing.assert_close(d.x_train, ref.x_train)
    assert d.y_test.tolist() == [1, 0, 1] and d.class_names == ["0", "1"]

    class PIL:  # items that are not tensors: a clear error
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return object(), 0

    with pytest.raises(TypeError, match=r"train_dataset\[0\] must be \(image tensor.*ToTensor"):
        Dataset.from_torch(PIL(), te, name="x")


def test_imagefolder_tmp(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cname in ("cat", "dog"):
            (tmp_path / split / cname).mkdir(parents=True)
            for i in range(n):
                size = (12, 10) if split == "train" else (20, 16)
                Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                    tmp_path / split / cname / f"{i}.png"
                )
    d = load_dataset(f"imagefolder:{tmp_path}")
    assert d.class_names == ["cat", "dog"] and d.x_train.shape == (6, 3, 10, 12)
    assert d.x_test.shape == (4, 3, 10, 12)  # resized to the training size
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(float(d.x_train.mean())) < 1e-4  # normalized with its own statistics
    r = load_dataset(f"imagefolder:{tmp_path}", image_size=8, channels=1)
    assert r.x_train.shape == (6, 1, 8, 8) and r.x_test.shape == (4, 1, 8, 8)


def test_zca_whitens_sample():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=g)
    x = (torch.randn(600, 12, generator=g) @ mix + 3).reshape(600, 3, 2, 2)
    zca = ZCA.fit(x, eps=1e-6)
    w = zca.transform(x).reshape(600, -1).double()
    cov = torch.cov(w.T)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(zca.inverse(zca.transform(x)), x, atol=1e-3, rtol=1e-4)
    # ZCA (unlike PCA whitening) is the symmetric whitening: W == W^T
    torch.testing.assert_close(zca.W, zca.W.T)
    with pytest.raises(ValueError, match="features per image"):
        zca.transform(torch.zeros(2, 1, 2, 2))


def test_digits_zca(digits):
    z = load_dataset("digits", zca=True, zca_eps=0.01)
    assert z.zca is not None and z.mean == [0.0] and z.std == [1.0]
    cov = torch.cov(z.x_train.flatten(1).T.double())
    eig = torch.linalg.eigvalsh(cov)
    assert float(eig.max()) <= 1.0 + 1e-3  # s / (s + eps) <= 1
    # denormalize undoes the whitening: the original [0, 1] pixels come back
    torch.testing.assert_close(z.denormalize(z.x_train), digits.denormalize(digits.x_train), atol=2e-3, rtol=0)


def _shared():
    root = default_root()
    return root


@pytest.mark.skipif(
    _shared() is None or not (_shared() / "MNIST" / "raw").is_dir(), reason="MNIST not found under $PYDISTILL_DATA"
)
def test_mnist_shared():
    d = load_dataset("mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(float(d.x_train.mean())) < 1e-2 and abs(float(d.x_train.std()) - 1) < 1e-2


@pytest.mark.skipif(
    _shared() is None or not (_shared() / "cifar10.npz").is_file(), reason="cifar10.npz not found under $PYDISTILL_DATA"
)
def test_cifar10_shared():
    d = load_dataset("cifar10")
    assert d.x_train.shape == (50000, 3, 32, 32) and d.x_test.shape == (10000, 3, 32, 32)
    assert d.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(d.y_train).tolist() == [5000] * 10
    # the published per-channel mean is the training mean
    assert d.x_train.mean((0, 2, 3)).abs().max() < 2e-3
