"""Training on a (synthetic) set and measuring test accuracy (pydistill.evaluate)."""

import pytest
import torch
import torch.nn.functional as F

import pydistill
from pydistill.data import load_dataset
from pydistill.evaluate import evaluate, evaluate_baseline, soft_cross_entropy, test_accuracy, train_model
from pydistill.models import get_network
from pydistill.synthetic import SyntheticSet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tiny(digits):
    return digits.subset(4, seed=0, n_test_per_class=3)


def _random_subset(ds, ipc, seed):
    g = torch.Generator().manual_seed(seed)
    sel = torch.cat([i[torch.randperm(i.numel(), generator=g)[:ipc]] for i in ds.indices_by_class])
    return ds.x_train[sel], ds.y_train[sel]


def _net(ds, name="ConvNetW32", seed=0):
    torch.manual_seed(seed)
    return get_network(name, ds.channel, ds.num_classes, ds.im_size)


def test_train_model_learns_digits(digits):
    # Random real subset, 10 per class, a short schedule: measured 0.82-0.87 over seeds; threshold with margin.
    x, y = _random_subset(digits, 10, seed=0)
    net = _net(digits, "ConvNetW64")
    before = test_accuracy(net, digits)
    train_model(net, x, y, epochs=40, lr=0.02, batch_size=50, generator=torch.Generator().manual_seed(0))
    acc = test_accuracy(net, digits)
    assert before < 0.3 and acc > 0.70, (before, acc)


def test_soft_labels_equal_hard_for_one_hot(tiny):
    x, y = tiny.x_train, tiny.y_train
    a = train_model(_net(tiny), x, y, epochs=3, batch_size=16, generator=torch.Generator().manual_seed(1))
    b = train_model(
        _net(tiny), x, F.one_hot(y, 10).float(), epochs=3, batch_size=16, generator=torch.Generator().manual_seed(1)
    )
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    logits, t = torch.randn(5, 4), torch.softmax(torch.randn(5, 4), 1)
    torch.testing.assert_close(soft_cross_entropy(logits, t), F.cross_entropy(logits, t))


def test_learned_lr_scalar_replaces_lr(tiny):
    x, y = tiny.x_train, tiny.y_train
    a = train_model(_net(tiny), x, y, epochs=2, lr=0.05, generator=torch.Generator().manual_seed(2))
    b = train_model(
        _net(tiny), x, y, epochs=2, lr=0.01, learned_lr=torch.tensor(0.05), generator=torch.Generator().manual_seed(2)
    )
    c = train_model(_net(tiny), x, y, epochs=2, lr=0.01, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_lr_decay_at_half(tiny):
    # With momentum 0 and no weight decay, epoch 2 of 2 uses lr/10: compare with two manual SGD steps.
    x, y = tiny.x_train, tiny.y_train
    net = train_model(_net(tiny), x, y, epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=1000)
    ref = _net(tiny)
    for lr in (0.1, 0.01):
        grads = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= lr * g
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_dd_lr_replay(tiny):
    x, y = tiny.x_train[:20], tiny.y_train[:20]
    lrs = torch.tensor([0.1, 0.05, 0.02, 0.01])
    net = train_model(_net(tiny), x, y, epochs=0, learned_lr=lrs, dd_steps=2)
    ref = _net(tiny)
    for t in range(4):
        xb, yb = x.chunk(2)[t % 2], y.chunk(2)[t % 2]
        grads = torch.autograd.grad(F.cross_entropy(ref(xb), yb), list(ref.parameters()))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= lrs[t] * g
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="dd_steps"):
        train_model(_net(tiny), x, y, epochs=0, learned_lr=lrs)


def test_dsa_training_deterministic(tiny):
    pytest.importorskip("pydistill.ops.diff_augment")
    x, y = tiny.x_train, tiny.y_train
    s = "color_crop_cutout_scale_rotate"
    a = train_model(
        _net(tiny), x, y, epochs=2, batch_size=16, dsa_strategy=s, generator=torch.Generator().manual_seed(3)
    )
    b = train_model(
        _net(tiny), x, y, epochs=2, batch_size=16, dsa_strategy=s, generator=torch.Generator().manual_seed(3)
    )
    c = train_model(_net(tiny), x, y, epochs=2, batch_size=16, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_test_accuracy_matches_manual(tiny):
    net = _net(tiny).eval()
    with torch.no_grad():
        manual = (net(tiny.x_test).argmax(1) == tiny.y_test).float().mean().item()
    assert test_accuracy(net, tiny, batch_size=7) == pytest.approx(manual)
    assert not net.training


def test_evaluate_structure_and_determinism(tiny):
    syn = SyntheticSet(tiny.x_train, tiny.y_train, None, {"ipc": 4})
    kw = dict(models=("ConvNetW32", "MLP"), num_eval=2, epochs=2, dsa=False, progress=False, seed=5)
    res = evaluate(syn, tiny, **kw)
    assert set(res) == {"ConvNetW32", "MLP"}
    for r in res.values():
        assert (
            set(r)
            == {"mean", "std", "accs", "protocol", "augmentation", "strategy", "epochs", "lr_schedule", "statistic"}
            and len(r["accs"]) == 2
        )
        assert (r["protocol"], r["augmentation"], r["strategy"], r["epochs"]) == ("paper", "none", None, 2)
        assert all(0.0 <= a <= 1.0 for a in r["accs"])
        assert r["mean"] == pytest.approx(sum(r["accs"]) / 2)
    assert pydistill.evaluate(syn, tiny, **kw) == res  # the module is callable; same seed, same result
    before = torch.get_rng_state()
    evaluate(syn, tiny, **{**kw, "models": ("MLP",), "num_eval": 1})
    assert torch.equal(before, torch.get_rng_state())  # global RNG untouched


def test_evaluate_with_dsa_and_learned_lr(tiny):
    pytest.importorskip("pydistill.ops.diff_augment")
    syn = SyntheticSet(tiny.x_train, tiny.y_train, torch.tensor(0.02), {"ipc": 4})
    res = evaluate(syn, tiny, models=("ConvNetW32",), num_eval=1, epochs=2, progress=False)
    assert 0.0 <= res["ConvNetW32"]["mean"] <= 1.0


def test_evaluate_errors(tiny):
    with pytest.raises(ValueError, match="synthetic images"):
        evaluate(SyntheticSet(torch.randn(2, 3, 8, 8), torch.tensor([0, 1])), tiny, progress=False)
    with pytest.raises(ValueError, match="labels must lie"):
        evaluate(SyntheticSet(torch.randn(2, 1, 8, 8), torch.tensor([0, 10])), tiny, progress=False)
    with pytest.raises(TypeError, match="SyntheticSet"):
        evaluate((torch.randn(2, 1, 8, 8), torch.tensor([0, 1])), tiny)
    with pytest.raises(ValueError, match="num_eval"):
        evaluate(SyntheticSet(torch.randn(2, 1, 8, 8), torch.tensor([0, 1])), tiny, num_eval=0)
    with pytest.raises(ValueError, match="epochs"):
        train_model(_net(tiny), tiny.x_train, tiny.y_train, epochs=-1)
    with pytest.raises(ValueError, match="labels must be"):
        train_model(_net(tiny), tiny.x_train, tiny.y_train[:3], epochs=1)


def test_evaluate_baseline(tiny):
    r = evaluate_baseline(tiny, "random", 2, models=("MLP",), num_eval=2, epochs=2, dsa=False, progress=False)
    assert len(r["MLP"]["accs"]) == 2
    f = evaluate_baseline(tiny, "full", models=("MLP",), num_eval=1, epochs=1, dsa=False, progress=False)
    assert 0.0 <= f["MLP"]["mean"] <= 1.0
    with pytest.raises(ValueError, match="kind"):
        evaluate_baseline(tiny, "best", 2)
    with pytest.raises(ValueError, match="ipc"):
        evaluate_baseline(tiny, "random", None)
