"""Evaluation protocols (paper / uniform), DC's evaluation augmentation, the official lr schedule and the runner's
best-evaluation tracking (MTT's reported statistic)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pydistill.data import load_dataset
from pydistill.dc_augment import dc_augment, dc_augmentation_for
from pydistill.evaluate import evaluate, evaluate_baseline, resolve_protocol, train_model
from pydistill.models import get_network
from pydistill.synthetic import SyntheticSet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("digits").subset(3, seed=0, n_test_per_class=3)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ selection
def test_resolve_protocol_paper_and_uniform():
    dsa_digits = "color_crop_cutout_scale_rotate"
    p = resolve_protocol("paper", "dc", "mnist", "ConvNet")
    assert (p["augmentation"], p["strategy"], p["epochs"]) == ("dc", "crop_scale_rotate", 1000)
    p = resolve_protocol("paper", "dc", "cifar10", "ConvNet")
    assert (p["augmentation"], p["strategy"], p["epochs"]) == ("none", None, 300)
    p = resolve_protocol("paper", "dc", "cifar10", "ConvNetBN")
    assert (p["augmentation"], p["strategy"], p["epochs"]) == ("dc", "crop_noise", 1000)
    for method in ("dsa", "dm", "mtt", None):
        p = resolve_protocol("paper", method, "mnist", "ConvNet")
        assert (p["augmentation"], p["strategy"], p["epochs"]) == ("dsa", dsa_digits, 1000)
    p = resolve_protocol("uniform", "dc", "mnist", "ConvNet")
    assert (p["augmentation"], p["strategy"], p["epochs"]) == ("dsa", dsa_digits, 1000)
    assert resolve_protocol("paper", "dsa", "cifar10", "ConvNet")["strategy"] == "color_crop_cutout_flip_scale_rotate"
    p = resolve_protocol("paper", "dsa", "mnist", "ConvNet", dsa=False, epochs=7)
    assert (p["augmentation"], p["strategy"], p["epochs"]) == ("none", None, 7)
    assert resolve_protocol("paper", "dc", "mnist", "ConvNet", dsa=True)["augmentation"] == "dsa"
    assert all(
        resolve_protocol(pr, "dc", "mnist", "ConvNet")["lr_schedule"] == "official" for pr in ("paper", "uniform")
    )
    with pytest.raises(ValueError, match="protocol"):
        resolve_protocol("published", "dc", "mnist", "ConvNet")


def test_evaluate_records_protocol(tiny):
    mnist_like = dataclasses.replace(tiny, name="mnist")  # 8x8 images named MNIST: DC's MNIST augmentation
    syn = SyntheticSet(tiny.x_train, tiny.y_train, None, {"method": "dc", "ipc": 3})
    kw = dict(models=("ConvNetW32",), num_eval=1, epochs=1, progress=False)
    r = evaluate(syn, mnist_like, **kw)["ConvNetW32"]
    assert (r["protocol"], r["augmentation"], r["strategy"], r["epochs"]) == ("paper", "dc", "crop_scale_rotate", 1)
    assert r["statistic"] == "mean +- std over 1 networks" and "5 experiments x 20" in r["official_statistic"]
    r = evaluate(syn, tiny, **kw)["ConvNetW32"]
    assert (r["augmentation"], r["strategy"]) == ("none", None)
    r = evaluate(syn, tiny, protocol="uniform", **kw)["ConvNetW32"]
    assert (r["protocol"], r["augmentation"], r["strategy"]) == ("uniform", "dsa", "color_crop_cutout_scale_rotate")
    r = evaluate(syn, tiny, compared_with="dsa", **kw)["ConvNetW32"]
    assert r["augmentation"] == "dsa"
    b = evaluate_baseline(tiny, "random", 2, compared_with="dc", **kw)["ConvNetW32"]
    assert (b["protocol"], b["augmentation"]) == ("paper", "none")
    b = evaluate_baseline(tiny, "random", 2, **kw)["ConvNetW32"]
    assert b["augmentation"] == "dsa"
    with pytest.raises(ValueError, match="protocol"):
        evaluate(syn, tiny, protocol="fair", **kw)


# ------------------------------------------------------------------------------------------------ DC augmentation
def test_dc_augmentation_for_matches_get_daparam():
    assert dc_augmentation_for("mnist", "ConvNet") == "crop_scale_rotate"
    assert dc_augmentation_for("MNIST", "LeNet") == "crop_scale_rotate"
    assert dc_augmentation_for("cifar10", "ConvNet") == "none"
    assert dc_augmentation_for("fashionmnist", "ConvNet") == "none"
    assert dc_augmentation_for("cifar10", "ConvNetBN") == "crop_noise"
    assert dc_augmentation_for("mnist", "ConvNetBN") == "crop_noise"  # the model test wins, as officially


def test_dc_crop_is_a_mean_padded_shift():
    x = torch.arange(9.0).view(1, 1, 3, 3)  # batch mean 4.0
    pad = torch.full((5, 5), 4.0)
    pad[1:4, 1:4] = x[0, 0]
    windows = [pad[r : r + 3, c : c + 3] for r in (0, 1) for c in (0, 1)]  # offsets 0 .. 2 * crop - 1
    seen = set()
    for seed in range(20):
        out = dc_augment(x, "crop", _gen(seed), crop=1)[0, 0]
        hits = [i for i, w in enumerate(windows) if torch.equal(out, w)]
        assert len(hits) == 1, out
        seen.add(hits[0])
    assert seen == {0, 1, 2, 3}
    assert torch.equal(x, torch.arange(9.0).view(1, 1, 3, 3))  # input untouched


def test_dc_scale_and_rotate_hand_cases():
    x = torch.rand(3, 1, 6, 6, generator=_gen(0))
    torch.testing.assert_close(dc_augment(x, "scale", _gen(1), scale=0.0), x)  # factor 1: identity
    ones = torch.ones(8, 1, 8, 8)
    for seed in range(4):
        out = dc_augment(ones, "scale", _gen(seed), scale=0.5)
        assert set(out.unique().tolist()) <= {0.0, 1.0}  # nearest resize on a zero canvas
        for img in out[:, 0]:
            rows, cols = img.sum(1) > 0, img.sum(0) > 0
            r, c = rows.nonzero().flatten(), cols.nonzero().flatten()
            assert torch.equal(img[r.min() : r.max() + 1, c.min() : c.max() + 1], torch.ones(len(r), len(c)))
            assert abs(int(r.min()) - (7 - int(r.max()))) <= 1  # centred
    const = torch.full((4, 2, 7, 7), 2.0)
    torch.testing.assert_close(dc_augment(const, "rotate", _gen(0)), const, atol=1e-5, rtol=0)  # cval = mean
    angles_zero = [torch.allclose(dc_augment(x[:1], "rotate", _gen(s), rotate=1), x[:1], atol=1e-5) for s in range(12)]
    assert any(angles_zero) and not all(angles_zero)  # angle in {-1, 0} degrees


def test_dc_noise_and_one_transform_per_image():
    x = torch.zeros(64, 1, 8, 8)
    out = dc_augment(x, "noise", _gen(0), noise=0.5)
    assert 0.45 < float(out.std()) < 0.55
    y = 2 * torch.arange(64.0).view(1, 1, 8, 8).repeat(32, 1, 1, 1)  # integers, batch mean 63
    out = dc_augment(y, "crop_noise", _gen(1), crop=2, noise=1e-3)
    crops = (out - out.round()).abs().amax(dim=(1, 2, 3)) == 0  # exact values: cropped, else noisy
    assert 0 < int(crops.sum()) < 32
    with pytest.raises(ValueError, match="strategy"):
        dc_augment(x, "crop_flip", _gen(0))


# ------------------------------------------------------------------------------------------------ lr schedule
def test_official_lr_schedule_hand_computed(tiny):
    # E = 4: E + 1 = 5 epochs; epochs 0..3 at lr with momentum, then lr/10 from a fresh SGD (momentum cleared).
    x, y = tiny.x_train, tiny.y_train
    torch.manual_seed(0)
    net = get_network("ConvNetW32", tiny.channel, tiny.num_classes, tiny.im_size)
    ref = get_network("ConvNetW32", tiny.channel, tiny.num_classes, tiny.im_size)
    ref.load_state_dict(net.state_dict())
    train_model(
        net,
        x,
        y,
        epochs=4,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=1000,
        lr_schedule="official",
        generator=_gen(0),
    )
    params = list(ref.parameters())
    buf = None
    for ep in range(5):
        lr = 0.05 if ep <= 3 else 0.005
        if ep == 4:
            buf = None
        grads = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
        buf = list(grads) if buf is None else [0.9 * b + g for b, g in zip(buf, grads)]
        with torch.no_grad():
            for p, b in zip(params, buf):
                p -= lr * b
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        train_model(net, x, y, epochs=1, lr_schedule="cosine")


# ------------------------------------------------------------------------------------------------ best evaluation
def test_runner_keeps_best_evaluated_set(tiny, tmp_path, monkeypatch):
    import pydistill.evaluate as ev
    from pydistill.methods.base import Method
    from pydistill.runner import run_distillation

    class Counting(Method):
        """Images = the number of steps taken; the fake evaluation scores them 0.3, 0.8, 0.5, 0.6."""

        name = "counting"

        def __init__(self, dataset, ipc, **kw):
            super().__init__(dataset, ipc, **kw)
            self.images = torch.zeros(dataset.num_classes * ipc, dataset.channel, *dataset.im_size)

        num_iterations = 4

        def step(self, it):
            self.images.fill_(it + 1)
            return {"loss": 0.0}

        def synthetic_set(self):
            labels = torch.arange(self.dataset.num_classes).repeat_interleave(self.ipc)
            return SyntheticSet(self.images.clone(), labels, None, {"method": self.name, "ipc": self.ipc})

        def state_dict(self):
            return {**super().state_dict(), "images": self.images.clone()}

        def load_state_dict(self, state):
            super().load_state_dict(state)
            self.images = state["images"].clone()

    score = {1: 0.3, 2: 0.8, 3: 0.5, 4: 0.6}

    def fake_evaluate(syn, dataset, **kw):
        acc = score[int(syn.images.flatten()[0])]
        return {"ConvNet": {"mean": acc, "std": 0.0, "accs": [acc]}}

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    metrics = run_distillation(Counting(tiny, 1), tmp_path, eval_every=1, progress=False, checkpoint_every=10)
    assert metrics["best_eval"]["iteration"] == 2 and metrics["best_eval"]["eval_acc"] == 0.8
    assert metrics["test_acc_mean"] == 0.6  # the final set is kept too
    best = SyntheticSet.load(tmp_path / "synthetic_best.safetensors")
    assert float(best.images.flatten()[0]) == 2.0 and best.meta["iteration"] == 2
    final = SyntheticSet.load(tmp_path / "synthetic.safetensors")
    assert float(final.images.flatten()[0]) == 4.0
