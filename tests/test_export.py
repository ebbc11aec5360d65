"""SyntheticSet.to_tensors and pydistill export: .pt (MTT / DD-Ranking layout), .npz, imagefolder read back equal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pydistill.data import Dataset, load_dataset
from pydistill.export import export_synthetic
from pydistill.synthetic import SyntheticSet


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _set(ds, lr=None, soft=False):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ds.num_classes).repeat_interleave(2)
    images = torch.randn(labels.numel(), ds.channel, *ds.im_size, generator=g)
    if soft:
        labels = torch.softmax(torch.randn(labels.numel(), ds.num_classes, generator=g), 1)
    return SyntheticSet(images, labels, lr, {"method": "dm", "dataset": ds.name, "ipc": 2})


def test_to_tensors(digits):
    syn = _set(digits, lr=torch.tensor(0.02))
    t = syn.to_tensors()
    assert set(t) == {"images", "labels", "lr"} and t["images"].device.type == "cpu"
    assert torch.equal(t["images"], syn.images) and torch.equal(t["labels"], syn.labels)
    assert torch.equal(t["lr"], torch.tensor(0.02))
    assert "lr" not in _set(digits).to_tensors()


@pytest.mark.parametrize("lr", [None, torch.tensor(0.0125), torch.tensor([0.1, 0.2, 0.3])])
def test_pt_export_reads_back(tmp_path, digits, lr):
    syn = _set(digits, lr=lr)
    files = export_synthetic(syn, tmp_path / "pt", "pt", dataset=digits)
    names = sorted(p.name for p in files)
    assert names == sorted(["images_best.pt", "labels_best.pt", "meta.json"] + ([] if lr is None else ["lr_best.pt"]))
    # what an MTT / DD-Ranking evaluation script does: torch.load of plain tensors
    images = torch.load(tmp_path / "pt" / "images_best.pt", weights_only=True)
    labels = torch.load(tmp_path / "pt" / "labels_best.pt", weights_only=True)
    assert images.shape == (20, 1, 8, 8) and images.dtype == torch.float32 and torch.equal(images, syn.images)
    assert labels.dtype == torch.int64 and torch.equal(labels, syn.labels)
    if lr is not None:
        assert torch.equal(torch.load(tmp_path / "pt" / "lr_best.pt", weights_only=True), lr)
    meta = json.loads((tmp_path / "pt" / "meta.json").read_text())
    assert meta["dataset"] == "digits" and meta["dataset_mean"] == digits.mean and meta["dataset_std"] == digits.std


def test_npz_export_reads_back(tmp_path, digits):
    syn = _set(digits, lr=torch.tensor(0.5), soft=True)
    (path,) = export_synthetic(syn, tmp_path / "set", "npz")
    assert path == tmp_path / "set.npz"
    with np.load(path) as z:
        assert np.array_equal(z["images"], syn.images.numpy()) and np.array_equal(z["labels"], syn.labels.numpy())
        assert float(z["lr"]) == 0.5 and json.loads(str(z["meta"]))["method"] == "dm"


@pytest.mark.parametrize("channels", [1, 3])
def test_imagefolder_export_reads_back(tmp_path, channels):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    g = torch.Generator().manual_seed(channels)
    x = torch.rand(12, channels, 6, 7, generator=g)
    y = torch.arange(12) % 3
    ds = Dataset.from_tensors(x, y, x, y, name="toy", class_names=["a cat", "dog/wolf", "x"])
    syn = _set(ds)
    files = export_synthetic(syn, tmp_path / "folder", "imagefolder", dataset=ds)
    assert len(files) == 6
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["000_a_cat", "001_dog_wolf", "002_x"]
    expect = (ds.denormalize(syn.images) * 255).round().to(torch.uint8)
    back = ImageFolder(str(tmp_path / "folder"))  # what a folder-reading evaluation does
    assert [c for _, c in back.samples] == syn.labels.tolist()
    for (path, _), want in zip(back.samples, expect):
        arr = np.array(Image.open(path))
        got = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="needs dataset="):
        export_synthetic(syn, tmp_path / "f2", "imagefolder")


def test_export_errors(tmp_path, digits):
    with pytest.raises(ValueError, match="format must be one of"):
        export_synthetic(_set(digits), tmp_path, "tfrecord")
    with pytest.raises(TypeError, match="SyntheticSet"):
        export_synthetic({"images": 1}, tmp_path, "pt")


def test_cli_export(tmp_path, digits, capsys):
    from pydistill.cli import main

    syn = _set(digits, lr=torch.tensor(0.01))
    syn.save(tmp_path / "s.safetensors")
    assert (
        main(
            ["export", "--synthetic", str(tmp_path / "s.safetensors"), "--format", "pt", "--out", str(tmp_path / "pt")]
        )
        == 0
    )
    assert torch.equal(torch.load(tmp_path / "pt" / "images_best.pt", weights_only=True), syn.images)
    assert (
        main(
            [
                "export",
                "--synthetic",
                str(tmp_path / "s.safetensors"),
                "--format",
                "imagefolder",
                "--out",
                str(tmp_path / "png"),
            ]
        )
        == 0
    )  # dataset "digits" as recorded in the file
    assert len(list((tmp_path / "png").glob("*/*.png"))) == 20
    assert "wrote 20 file(s)" in capsys.readouterr().out
