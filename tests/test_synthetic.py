"""SyntheticSet: validation, save/load round trip, integrity checks (pydistill.synthetic)."""

import json
import os

import pytest
import torch

from pydistill.synthetic import CorruptFileError, SyntheticSet


def _hard():
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(
        torch.randn(6, 1, 5, 7, generator=g),
        torch.tensor([0, 0, 1, 1, 2, 2]),
        torch.tensor(0.0123),
        {"method": "mtt", "dataset": "digits", "ipc": 2, "note": (1, 2), "nested": {"a": [1.5]}},
    )


def test_round_trip_hard_labels_scalar_lr(tmp_path):
    s = _hard()
    p = tmp_path / "sub" / "syn.safetensors"
    s.save(p)
    r = SyntheticSet.load(p)
    assert torch.equal(r.images, s.images) and torch.equal(r.labels, s.labels) and torch.equal(r.lr, s.lr)
    assert r.meta == {"method": "mtt", "dataset": "digits", "ipc": 2, "note": [1, 2], "nested": {"a": [1.5]}}
    assert r.ipc == 2 and r.num_classes == 3 and len(r) == 6 and not r.soft
    assert [f for f in os.listdir(p.parent)] == ["syn.safetensors"]  # no temporary file left behind


def test_round_trip_soft_labels_vector_lr(tmp_path):
    labels = torch.softmax(torch.randn(4, 5), 1)
    s = SyntheticSet(torch.randn(4, 3, 2, 2), labels, torch.rand(30), {})
    s.save(tmp_path / "a.safetensors")
    r = SyntheticSet.load(tmp_path / "a.safetensors")
    assert r.soft and r.num_classes == 5 and r.ipc == 0 and r.lr.shape == (30,)
    torch.testing.assert_close(r.labels, labels, rtol=0, atol=0)
    assert torch.equal(r.hard_labels, labels.argmax(1))
    n = SyntheticSet(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))
    n.save(tmp_path / "b.safetensors")
    assert SyntheticSet.load(tmp_path / "b.safetensors").lr is None


def test_overwrite_is_atomic_replacement(tmp_path):
    p = tmp_path / "s.safetensors"
    _hard().save(p)
    t = SyntheticSet(torch.zeros(2, 1, 5, 7), torch.tensor([0, 1]))
    t.save(p)
    assert SyntheticSet.load(p).images.shape[0] == 2


def test_corruption_detected(tmp_path):
    p = tmp_path / "s.safetensors"
    _hard().save(p)
    data = bytearray(p.read_bytes())
    # flip one byte inside the tensor payload (the last bytes of the file)
    bad = tmp_path / "flip.safetensors"
    data2 = bytearray(data)
    data2[-5] ^= 0xFF
    bad.write_bytes(bytes(data2))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        SyntheticSet.load(bad)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(bytes(data[: len(data) - 17]))
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        SyntheticSet.load(trunc)
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CorruptFileError):
        SyntheticSet.load(tmp_path / "tiny.safetensors")
    # a valid safetensors file that is not a synthetic set
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CorruptFileError, match="not a pydistill synthetic set"):
        SyntheticSet.load(tmp_path / "other.safetensors")
    # header tampering: change the recorded metadata but not the tensors
    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8 : 8 + n]))
    header["__metadata__"]["sha256"] = "0" * 64
    hb = json.dumps(header).encode()
    (tmp_path / "hdr.safetensors").write_bytes(len(hb).to_bytes(8, "little") + hb + bytes(data[8 + n :]))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        SyntheticSet.load(tmp_path / "hdr.safetensors")


def test_validation():
    x = torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="images must be"):
        SyntheticSet(torch.randn(4, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        SyntheticSet(x, torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="rows"):
        SyntheticSet(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="soft labels"):
        SyntheticSet(x, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="lr must be"):
        SyntheticSet(x, torch.zeros(4, dtype=torch.long), torch.zeros(2, 2))
    s = SyntheticSet(x, torch.zeros(4, dtype=torch.long), 0.01)
    assert s.lr.dim() == 0
    d = s.detach()
    assert d.images is not s.images and torch.equal(d.images, s.images)
