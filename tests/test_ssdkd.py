"""SSD-KD: phi / IS weights / meta update against hand-computed values, replay sampling, warm-up, end to end."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from pydistill.methods.ssdkd.generator import Generator, MetaGenerator
from pydistill.methods.ssdkd.losses import (
    BNStatsLoss,
    adversarial_loss,
    bn_stats_distance,
    class_counts,
    class_frequencies,
    kd_loss,
    modulating_phi,
    priority,
    task_loss,
)
from pydistill.ops import importance_weights


# ------------------------------------------------------------------------------------------ phi
def _logits(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_class_frequencies_hand_computed():
    buf = torch.tensor([0, 0, 0, 0, 1, 2])
    batch = torch.tensor([0, 1, 2])
    f = class_frequencies(buf, batch, 3)
    torch.testing.assert_close(f, torch.tensor([5 / 9, 2 / 9, 2 / 9]))
    # empty buffer: the batch alone
    torch.testing.assert_close(class_frequencies(None, torch.tensor([1, 1, 0, 1]), 3), torch.tensor([0.25, 0.75, 0.0]))
    with pytest.raises(ValueError, match="labels must lie in"):
        class_frequencies(buf, torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="batch_labels"):
        class_frequencies(buf, torch.tensor([], dtype=torch.long), 3)


def test_phi_hand_computed():
    t = _logits([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.25, 0.25, 0.5]])
    # buffer of 6 samples: 4 of class 0, 1 of class 1, 1 of class 2
    counts = class_counts(torch.tensor([0, 0, 0, 0, 1, 2]), 3)
    torch.testing.assert_close(counts, torch.tensor([4.0, 1.0, 1.0]))
    # paper form: diversity = 1 - n_B(c_T)/|B| = [1 - 4/6, 1 - 1/6, 1 - 1/6]; difficulty (1 - p_T)^2 = [.04, .25, .25]
    phi = modulating_phi(t, counts, gamma=2.0)
    torch.testing.assert_close(
        phi, torch.tensor([(2 / 6) * 0.04, (5 / 6) * 0.25, (5 / 6) * 0.25]), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(
        modulating_phi(t, counts, 2.0, use_difficulty=False), torch.tensor([2 / 6, 5 / 6, 5 / 6])
    )
    torch.testing.assert_close(
        modulating_phi(t, counts, 1.0, use_diversity=False), torch.tensor([0.2, 0.5, 0.5]), rtol=1e-5, atol=1e-7
    )
    # empty buffer: diversity 1; a class that fills the buffer: phi 0
    torch.testing.assert_close(modulating_phi(t, class_counts(None, 3), gamma=0.0), torch.ones(3))
    torch.testing.assert_close(
        modulating_phi(t, torch.tensor([5.0, 0.0, 0.0]), gamma=0.0), torch.tensor([0.0, 1.0, 1.0])
    )
    # our earlier ratio form on class frequencies: min(1, 1/(K f)) = [9/15, 1, 1]
    freq = torch.tensor([5 / 9, 2 / 9, 2 / 9])
    torch.testing.assert_close(
        modulating_phi(t, freq, 2.0, diversity="ratio"), torch.tensor([0.6 * 0.04, 0.25, 0.25]), rtol=1e-5, atol=1e-7
    )
    # phi taken for given classes (the task loss's targets, phi_class="target"): classes [1, 1, 0] ->
    # diversity [1 - 1/6, 1 - 1/6, 1 - 4/6], p_T(c) = [.1, .5, .25] -> focal [.81, .25, .5625]
    y = torch.tensor([1, 1, 0])
    torch.testing.assert_close(
        modulating_phi(t, counts, 2.0, classes=y),
        torch.tensor([(5 / 6) * 0.81, (5 / 6) * 0.25, (2 / 6) * 0.5625]),
        rtol=1e-5,
        atol=1e-7,
    )
    with pytest.raises(ValueError, match="classes"):
        modulating_phi(t, counts, 2.0, classes=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="buffer_counts"):
        modulating_phi(t, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="gamma"):
        modulating_phi(t, counts, gamma=-1.0)
    with pytest.raises(ValueError, match="diversity"):
        modulating_phi(t, counts, diversity="entropy")


def test_task_and_adversarial_losses_hand_computed():
    t = _logits([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3]])
    y = torch.tensor([0, 2])
    phi = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert float(task_loss(t, y, phi)) == pytest.approx((0.5 * -math.log(0.8) + 2.0 * -math.log(0.3)) / 2)
    s = _logits([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1]])  # agrees with the teacher on sample 0 only
    kl0 = sum(p * math.log(p / q) for p, q in zip([0.8, 0.1, 0.1], [0.6, 0.3, 0.1]))
    kl1 = sum(p * math.log(p / q) for p, q in zip([0.2, 0.5, 0.3], [0.7, 0.2, 0.1]))
    torch.testing.assert_close(adversarial_loss(s, t), torch.tensor(-kl0 / 2, dtype=torch.float64))
    torch.testing.assert_close(
        adversarial_loss(s, t, agree_mask=False), torch.tensor(-(kl0 + kl1) / 2, dtype=torch.float64)
    )


def test_importance_weights_hand_computed():
    p = torch.tensor([0.1, 0.4, 0.25], dtype=torch.float64)
    # (4 p)^-0.5 = [1/sqrt(0.4), 1/sqrt(1.6), 1]; batch max = 1/sqrt(0.4)
    w = importance_weights(p, 0.5, 4)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, math.sqrt(0.4)], dtype=torch.float64))
    # the paper's normalisation: max over the buffer, from its smallest probability: (4 * 0.05)^-0.5 = sqrt(5)
    w = importance_weights(p, 0.5, 4, min_probability=0.05)
    ref = torch.tensor([0.4**-0.5, 1.6**-0.5, 1.0], dtype=torch.float64) / math.sqrt(5)
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(importance_weights(p, 0.0, 4), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta"):
        importance_weights(p, -0.1, 4)


def test_replay_importance_weights_over_the_buffer():
    buf = _buffer(4, alpha=1.0, eps=0.0)
    buf.add(torch.zeros(4, 1, 2, 2), torch.eye(4, 3), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    probs = torch.tensor([0.2, 0.4], dtype=torch.float64)  # P of slots 1 and 3 (priorities 2/10 and 4/10)
    # paper: (|B| P)^-beta / max over B, the max at the smallest P = 0.1: (0.4)^-1
    w = buf.importance_weights(probs, 1.0, "buffer")
    torch.testing.assert_close(w, torch.tensor([(0.8**-1) / (0.4**-1), (1.6**-1) / (0.4**-1)]))
    torch.testing.assert_close(buf.importance_weights(probs, 1.0, "batch"), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(buf.importance_weights(probs, 1.0, "mean"), torch.tensor([4 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="norm"):
        buf.importance_weights(probs, 1.0, "max")


def test_kd_loss_and_priority():
    s = torch.randn(5, 7, dtype=torch.float64)
    t = torch.randn(5, 7, dtype=torch.float64)
    T = 3.0
    p = torch.softmax(t / T, 1)
    ref = (p * (p.log() - torch.log_softmax(s / T, 1))).sum(1) * T * T
    torch.testing.assert_close(kd_loss(s, t, T, reduction="none"), ref)
    torch.testing.assert_close(kd_loss(s, t, T), ref.mean())
    p1 = torch.softmax(t, 1)
    torch.testing.assert_close(priority(t, s), (p1 * (p1.log() - torch.log_softmax(s, 1))).sum(1))
    assert torch.all(priority(t, t) < 1e-12)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(s, t[:, :3])


# ------------------------------------------------------------------------------------------ BN hooks
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 5 * 5, 4)
        self.bn1d = nn.BatchNorm1d(4)
        self.nostats = nn.BatchNorm1d(4, track_running_stats=False)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.nostats(self.bn1d(self.fc(h.flatten(1))))


def test_bn_hook_loss_equals_manual():
    net = _Net().double()
    with torch.no_grad():
        for bn in (net.bn, net.bn1d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(7, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    with BNStatsLoss(net) as hook:
        assert hook.num_layers == 2  # the layer without running stats is skipped
        net(x)
        loss = hook.loss()
    a = net.conv(x)
    b = net.fc(torch.relu(net.bn(a)).flatten(1))
    manual = 0.0
    for inp, bn in ((a, net.bn), (b, net.bn1d)):
        dims = [d for d in range(inp.dim()) if d != 1]
        mu = inp.mean(dims)
        var = ((inp - mu.view(1, -1, *[1] * (inp.dim() - 2))) ** 2).mean(dims)
        manual = manual + (mu - bn.running_mean).norm() + (var - bn.running_var).norm()
    torch.testing.assert_close(loss, manual)
    g_hook = torch.autograd.grad(loss, x, retain_graph=True)[0]
    g_man = torch.autograd.grad(manual, x)[0]
    torch.testing.assert_close(g_hook, g_man)
    # hooks removed: further forwards record nothing
    net(x)
    assert float(hook.loss()) == 0.0


def test_bn_hook_disabled_and_no_bn():
    net = _Net().eval()
    hook = BNStatsLoss(net)
    hook.enabled = False
    net(torch.randn(3, 2, 5, 5))
    assert float(hook.loss()) == 0.0
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    h2 = BNStatsLoss(plain)
    plain(torch.randn(3, 4))
    assert h2.num_layers == 0 and float(h2.loss()) == 0.0
    with pytest.raises(ValueError, match="running_mean"):
        bn_stats_distance(torch.randn(2, 3, 4), torch.zeros(2), torch.ones(2))


def test_bn_hook_momentum_hand_computed():
    bn = nn.BatchNorm1d(2).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    hook = BNStatsLoss(bn, momentum=0.9)
    x1 = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)  # mean [1, 2], biased var [1, 1]
    bn(x1)
    l1 = hook.loss()  # no moving average yet: plain distance
    torch.testing.assert_close(l1, torch.tensor(3.0 + math.sqrt(1 + 0.25), dtype=torch.float64))
    hook.update_momentum()  # ema = stats of x1
    x2 = torch.tensor([[4.0, 0.0], [6.0, 0.0]], dtype=torch.float64)  # mean [5, 0], var [1, 0]
    bn(x2)
    # blended: 0.1 * stat(x2) + 0.9 * ema = mean [1.4, 1.8], var [1.0, 0.9]
    want = math.hypot(0.4, 2.8) + math.hypot(-1.0, 0.4)
    torch.testing.assert_close(hook.loss(), torch.tensor(want, dtype=torch.float64))
    hook.update_momentum()  # ema = 0.9 ema + 0.1 stat(x2) = mean [1.4, 1.8], var [1.0, 0.9]
    torch.testing.assert_close(hook.ema[0][0], torch.tensor([1.4, 1.8], dtype=torch.float64))
    state = hook.state_dict()
    other = BNStatsLoss(bn, momentum=0.9)
    other.load_state_dict(state)
    torch.testing.assert_close(other.ema[0][1], torch.tensor([1.0, 0.9], dtype=torch.float64))
    with pytest.raises(ValueError, match="momentum"):
        BNStatsLoss(bn, momentum=1.0)


# ------------------------------------------------------------------------------------------ meta generator
def _tiny_meta(meta, **kw):
    torch.manual_seed(0)
    prior = nn.Linear(2, 3).double()
    return prior, MetaGenerator(
        prior, lr_g=0.1, lr_z=0.05, g_steps=2, meta=meta, meta_optimizer="sgd", meta_lr=0.5, **kw
    )


def _tiny_loss(x):
    return (x**2).sum() + x.sum(), {}


@pytest.mark.parametrize("meta", ["fomaml", "reptile"])
def test_meta_update_matches_hand_computed_first_order_step(meta):
    prior, mg = _tiny_meta(meta)
    z0 = torch.tensor([[0.3, -0.7], [1.1, 0.2]], dtype=torch.float64)
    w0, b0 = prior.weight.detach().clone(), prior.bias.detach().clone()

    # by hand: loss L = sum(x^2 + x), x = z W^T + b, dL/dx = 2x + 1; first Adam steps from zero state move each
    # entry by -lr * g / (|g| + eps) (step 1) and -lr * m_hat / (sqrt(v_hat) + eps) (step 2)
    def grads(w, b, z):
        g = 2 * (z @ w.T + b) + 1
        return g.T @ z, g.sum(0), g @ w

    def adam2(p0, g_first, g_second_fn, lr):
        eps, b1, b2 = 1e-8, 0.5, 0.999
        p1 = p0 - lr * g_first / (g_first.abs() + eps)
        g2 = g_second_fn(p1)
        m = b1 * (1 - b1) * g_first + (1 - b1) * g2
        v = b2 * (1 - b2) * g_first**2 + (1 - b2) * g2**2
        m_hat, v_hat = m / (1 - b1**2), v / (1 - b2**2)
        return p1, p1 - lr * m_hat / (v_hat.sqrt() + eps)

    gw0, gb0, gz0 = grads(w0, b0, z0)
    w1 = w0 - 0.1 * gw0 / (gw0.abs() + 1e-8)
    b1_ = b0 - 0.1 * gb0 / (gb0.abs() + 1e-8)
    z1 = z0 - 0.05 * gz0 / (gz0.abs() + 1e-8)
    gw1, gb1, gz1 = grads(w1, b1_, z1)
    _, w2 = adam2(w0, gw0, lambda _: gw1, 0.1)
    _, b2 = adam2(b0, gb0, lambda _: gb1, 0.1)
    _, z2 = adam2(z0, gz0, lambda _: gz1, 0.05)
    if meta == "fomaml":  # sum of the clone's gradients at each inner step
        w_new, b_new = w0 - 0.5 * (gw0 + gw1), b0 - 0.5 * (gb0 + gb1)
    else:  # reptile: g = theta - theta'
        w_new, b_new = w0 - 0.5 * (w0 - w2), b0 - 0.5 * (b0 - b2)

    best, logs, z_out = mg.round(z0, _tiny_loss)
    torch.testing.assert_close(prior.weight.detach(), w_new)
    torch.testing.assert_close(prior.bias.detach(), b_new)
    torch.testing.assert_close(z_out, z2)
    # the returned images are those of the inner step with the lowest loss
    x0, x1 = z0 @ w0.T + b0, z1 @ w1.T + b1_
    l0, l1 = float(_tiny_loss(x0)[0]), float(_tiny_loss(x1)[0])
    torch.testing.assert_close(best, x0 if l0 < l1 else x1)
    assert logs["loss_g"] == pytest.approx(min(l0, l1))


def test_meta_generator_errors_and_state():
    prior, mg = _tiny_meta("fomaml")
    with pytest.raises(ValueError, match="meta must be"):
        MetaGenerator(prior, lr_g=0.1, lr_z=0.1, g_steps=1, meta="maml2")
    with pytest.raises(ValueError, match="g_steps"):
        MetaGenerator(prior, lr_g=0.1, lr_z=0.1, g_steps=0)
    adam = MetaGenerator(prior, lr_g=0.1, lr_z=0.1, g_steps=3)
    assert adam.meta_lr == pytest.approx(0.3)  # the base: lr_g * g_steps
    adam.round(torch.randn(4, 2, dtype=torch.float64), _tiny_loss)
    state = adam.state_dict()
    prior2 = nn.Linear(2, 3).double()
    again = MetaGenerator(prior2, lr_g=0.1, lr_z=0.1, g_steps=3)
    again.load_state_dict(state)
    torch.testing.assert_close(prior2.weight, prior.weight)
    assert again.meta_opt.state_dict()["state"].keys() == adam.meta_opt.state_dict()["state"].keys()


# ------------------------------------------------------------------------------------------ generator
@pytest.mark.parametrize("size", [8, 28, 32, 11])
def test_generator_shapes_and_range(size):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    g = Generator(latent_dim=16, channel=3, im_size=size, mean=mean, std=std, width=4)
    with torch.no_grad():
        x = g(torch.randn(5, 16))
    assert x.shape == (5, 3, size, size)
    pix = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert float(pix.min()) >= -1e-6 and float(pix.max()) <= 1 + 1e-6
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(5, 15))
    with pytest.raises(ValueError, match="std"):
        Generator(16, 3, size, mean, [0.1, 0.0, 0.1])


# ------------------------------------------------------------------------------------------ replay buffer
def _buffer(capacity, replace="oldest", alpha=0.6, eps=1e-3):
    from pydistill.methods.ssdkd import ReplayBuffer

    return ReplayBuffer(capacity, (1, 2, 2), 3, alpha=alpha, eps=eps, replace=replace)


def test_replay_sampling_matches_priorities_chi_square():
    buf = _buffer(7, alpha=0.7, eps=0.01)
    delta = torch.tensor([0.0, 0.05, 0.3, 1.0, 2.5, 0.7, 0.12])
    buf.add(torch.randn(7, 1, 2, 2), torch.randn(7, 3), delta)
    expected = (delta + 0.01) ** 0.7
    expected = expected / expected.sum()
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(7, dtype=torch.float64)
    n_draws, batch = 0, 61
    for _ in range(300):
        slots, probs = buf.sample_prioritized(batch, g)
        torch.testing.assert_close(probs.double(), expected.double()[slots], rtol=1e-6, atol=1e-12)
        counts += torch.bincount(slots, minlength=7).double()
        n_draws += batch
    exp_counts = expected.double() * n_draws
    chi2 = float(((counts - exp_counts) ** 2 / exp_counts).sum())
    assert chi2 < 22.46, (chi2, counts, exp_counts)  # chi-square, 6 dof, p = 0.001
    # a wrong distribution (uniform) is rejected by the same test
    uni = torch.full((7,), n_draws / 7, dtype=torch.float64)
    assert float(((counts - uni) ** 2 / uni).sum()) > 22.46


def test_replay_refresh_and_replacement():
    buf = _buffer(4)
    s1 = buf.add(torch.zeros(3, 1, 2, 2), torch.eye(3), torch.tensor([0.5, 0.1, 0.9]))
    assert s1.tolist() == [0, 1, 2] and buf.size == 3
    assert buf.labels[:3].tolist() == [0, 1, 2]
    s2 = buf.add(torch.ones(3, 1, 2, 2), torch.eye(3).flip(0), torch.tensor([0.2, 0.3, 0.4]))
    # one free slot, then the oldest (slots 0 and 1) are overwritten
    assert s2.tolist() == [3, 0, 1] and buf.size == 4 and buf.ptr == 2
    torch.testing.assert_close(buf.delta, torch.tensor([0.3, 0.4, 0.9, 0.2]))
    torch.testing.assert_close(buf.tree.get(torch.arange(4)).float(), (buf.delta + 1e-3) ** 0.6)
    s3 = buf.add(torch.full((2, 1, 2, 2), 2.0), torch.eye(3)[:2], torch.tensor([1.0, 1.0]))
    assert s3.tolist() == [2, 3] and buf.ptr == 0
    # refresh: the last write of a duplicated slot wins
    buf.update(torch.tensor([1, 1, 0]), torch.tensor([5.0, 6.0, 0.0]))
    torch.testing.assert_close(buf.delta[:2], torch.tensor([0.0, 6.0]))
    torch.testing.assert_close(buf.tree.get(torch.tensor([0, 1])).float(), torch.tensor([1e-3, 6.001]) ** 0.6)
    # lowest-priority replacement
    low = _buffer(3, replace="lowest")
    low.add(torch.zeros(3, 1, 2, 2), torch.eye(3), torch.tensor([0.5, 0.1, 0.9]))
    assert low.add(torch.ones(2, 1, 2, 2), torch.eye(3)[:2], torch.tensor([2.0, 3.0])).tolist() == [1, 0]
    torch.testing.assert_close(low.delta, torch.tensor([3.0, 2.0, 0.9]))
    with pytest.raises(ValueError, match="replace"):
        _buffer(3, replace="random")


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def digits_small():
    from pydistill.data import load_dataset

    return load_dataset("digits").subset(12, seed=0, n_test_per_class=6)


@pytest.fixture(scope="module")
def tiny_teacher(digits_small, tmp_path_factory):
    from pydistill.methods.ssdkd import train_teacher

    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pt")
    meta = train_teacher(
        digits_small,
        path,
        model="ConvNetBN",
        model_kwargs={"width": 8},
        epochs=2,
        batch_size=32,
        lr=0.05,
        verbose=False,
    )
    return path, meta


def test_teacher_file_and_resume(digits_small, tiny_teacher, tmp_path, monkeypatch):
    from pydistill.methods import ssdkd
    from pydistill.methods.ssdkd import teacher as teacher_mod

    path, meta = tiny_teacher
    assert meta["complete"] and meta["model"] == "ConvNetBN" and meta["epochs_done"] == 2
    assert 0.0 <= meta["test_accuracy"] <= 1.0
    net, m2 = ssdkd.load_teacher(path)
    assert not net.training and m2["test_accuracy"] == meta["test_accuracy"]
    assert (
        ssdkd.train_teacher(
            digits_small,
            path,
            model="ConvNetBN",
            model_kwargs={"width": 8},
            epochs=2,
            batch_size=32,
            lr=0.05,
            verbose=False,
        )["epochs_done"]
        == 2
    )  # complete: no work
    # crash during epoch 2, then resume: same weights as the uninterrupted run
    out = str(tmp_path / "t.pt")
    calls = {"n": 0}
    real = teacher_mod.test_accuracy

    def flaky(net_, ds_):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(net_, ds_)

    kw = dict(model="ConvNetBN", model_kwargs={"width": 8}, epochs=2, batch_size=32, lr=0.05, verbose=False)
    monkeypatch.setattr(teacher_mod, "test_accuracy", flaky)
    with pytest.raises(KeyboardInterrupt):
        ssdkd.train_teacher(digits_small, out, **kw)
    part = torch.load(out, weights_only=True)
    assert part["epochs_done"] == 1 and not part["complete"]
    with pytest.raises(ValueError, match="not finished"):
        ssdkd.load_teacher(out)
    monkeypatch.setattr(teacher_mod, "test_accuracy", real)
    ssdkd.train_teacher(digits_small, out, **kw)
    a, b = torch.load(out, weights_only=True)["state_dict"], torch.load(path, weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="epochs"):
        ssdkd.train_teacher(digits_small, out, **{**kw, "epochs": 3})


def _tiny_config(teacher, **kw):
    from pydistill.methods.ssdkd import Config

    cfg = Config(
        teacher=teacher,
        student="ConvNetW32",
        student_kwargs={},
        rounds=4,
        warmup=1,
        synthesis_batch=10,
        g_steps=2,
        kd_steps=2,
        batch_size=12,
        buffer_size=25,
        latent_dim=16,
        gen_width=8,
        lr_student=0.05,
        reset_l0_round=2,
    )
    return dataclasses.replace(cfg, **kw)


def _same_state(a, b):
    for (ka, va), (kb, vb) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    for k in ("images", "logits", "delta"):
        torch.testing.assert_close(getattr(a.buffer, k), getattr(b.buffer, k), rtol=0, atol=0)
    assert a.synthesized == b.synthesized and a.buffer.ptr == b.buffer.ptr


def test_ssdkd_end_to_end_outputs_and_resume(digits_small, tiny_teacher, tmp_path, monkeypatch):
    from pydistill.methods.ssdkd import SSDKD, STUDENT_FILE
    from pydistill.runner import run_distillation

    path, _ = tiny_teacher
    cfg = _tiny_config(path)
    run = dict(checkpoint_every=2, progress=False, final_eval=False)

    full = SSDKD(digits_small, 2, config=cfg, seed=3)
    metrics = run_distillation(full, tmp_path / "full", **run)
    for f in ("checkpoint.pt", "synthetic.safetensors", "grid.png", "curves.png", "metrics.json"):
        assert (tmp_path / "full" / f).is_file(), f
    if not (tmp_path / "full" / STUDENT_FILE).exists():  # until the runner calls method.save_outputs(out_dir)
        full.save_outputs(str(tmp_path / "full"))
    student = torch.load(tmp_path / "full" / STUDENT_FILE, weights_only=True)
    assert student["model"] == "ConvNetW32" and student["synthesized_samples"] == 40
    on_disk = json.loads((tmp_path / "full" / "metrics.json").read_text())
    extra = on_disk["extra"]
    assert extra["synthesized_samples"] == 40 and extra["teacher"] == "ConvNetBN"
    assert 0 <= extra["student_accuracy"] <= 1 and 0 <= extra["teacher_accuracy"] <= 1
    final = metrics["final_scalars"]
    assert final["buffer"] == 25 and final["synthesized"] == 40 and final["loss_bn"] > 0  # the teacher has BN
    for k in ("loss_ce", "loss_adv", "loss_kd", "phi_mean", "weight_mean"):
        assert math.isfinite(final[k]), k
    assert 0 < final["weight_mean"] <= 1
    syn = full.synthetic_set()
    assert syn.images.shape[1:] == (1, 8, 8) and syn.labels.dtype == torch.int64
    assert torch.bincount(syn.labels, minlength=10).max() <= 2

    # crash in round 3 (after the checkpoint at 2), then resume in a fresh process-like object
    step = SSDKD.step

    def crashing(self, it):
        if it == 3:
            raise KeyboardInterrupt
        return step(self, it)

    monkeypatch.setattr(SSDKD, "step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_distillation(SSDKD(digits_small, 2, config=cfg, seed=3), tmp_path / "resumed", **run)
    monkeypatch.setattr(SSDKD, "step", step)
    again = SSDKD(digits_small, 2, config=cfg, seed=3)
    m2 = run_distillation(again, tmp_path / "resumed", **run)
    assert m2["resumed_from_iteration"] == 2
    _same_state(full, again)
    assert m2["extra"] == metrics["extra"]


def test_ssdkd_baseline_flags_and_errors(digits_small, tiny_teacher):
    from pydistill.methods.ssdkd import SSDKD

    path, _ = tiny_teacher
    base = SSDKD(digits_small, 1, config=_tiny_config(path, use_phi=False, use_priority=False, rounds=2))
    logs = [base.step(it) for it in range(2)]
    assert logs[-1]["phi_mean"] == 1.0 and logs[-1]["weight_mean"] == 1.0
    with pytest.raises(ValueError, match="config.teacher is required"):
        SSDKD(digits_small, 1, config=_tiny_config(None))
    with pytest.raises(FileNotFoundError, match="teacher file not found"):
        SSDKD(digits_small, 1, config=_tiny_config("/nonexistent/teacher.pt"))
    with pytest.raises(ValueError, match="config.g_steps"):
        SSDKD(digits_small, 1, config=_tiny_config(path, g_steps=0))
    with pytest.raises(ValueError, match="config.replace"):
        SSDKD(digits_small, 1, config=_tiny_config(path, replace="newest"))


def test_corrupt_teacher_file_is_refused(tmp_path):
    from pydistill.methods.ssdkd import TEACHER_FORMAT, load_teacher
    from pydistill.utils import CorruptCheckpointError, save_checked

    path = tmp_path / "teacher.pt"
    w = torch.randn(64)
    save_checked({"format": TEACHER_FORMAT, "complete": True, "model": "MLP", "state_dict": {"w": w}}, path)
    raw = bytearray(path.read_bytes())
    pos = raw.find(w.numpy().tobytes())  # the tensor's bytes are stored as they are: alter one of them
    assert pos > 0
    raw[pos + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError):
        load_teacher(str(path))
    path.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        load_teacher(str(path))


def test_warmup_switches_off_adversarial_and_kd(digits_small, tiny_teacher):
    from pydistill.methods.ssdkd import SSDKD

    path, _ = tiny_teacher
    m = SSDKD(digits_small, 1, config=_tiny_config(path, rounds=3, warmup=2, adv_agree_mask=False), seed=0)
    before = [p.detach().clone() for p in m.student.parameters()]
    for it in range(2):
        assert m.in_warmup(it)
        log = m.step(it)
        assert log["warmup"] == 1.0 and log["loss_adv"] == 0.0 and log["loss_kd"] == 0.0 and log["lr"] == 0.0
    assert m.student_steps == 0 and m.synthesized == 20 and m.buffer.size == 20  # the buffer fills meanwhile
    for p, q in zip(before, m.student.parameters()):
        assert torch.equal(p, q)
    assert not m.in_warmup(2)
    log = m.step(2)
    assert log["warmup"] == 0.0 and log["loss_adv"] < 0 and log["loss_kd"] > 0
    assert log["lr"] == pytest.approx(0.05)  # the first KD round starts the cosine at lr_student
    assert m.student_steps == 2
    assert any(not torch.equal(p, q) for p, q in zip(before, m.student.parameters()))
    with pytest.raises(ValueError, match="config.warmup"):
        SSDKD(digits_small, 1, config=_tiny_config(path, rounds=3, warmup=3))


def test_priorities_refreshed_as_weight_times_kl(digits_small, tiny_teacher):
    """After each student step the drawn samples get delta = w * KL(f_t || f_s) (w their IS weight)."""
    import copy

    from pydistill.methods.ssdkd import SSDKD

    path, _ = tiny_teacher
    m = SSDKD(digits_small, 1, config=_tiny_config(path, rounds=2, warmup=1, kd_steps=1, augment=False), seed=0)
    m.step(0)  # warm-up round: fills the buffer
    drawn = {}
    sample = m.buffer.sample

    def recording(*a, **kw):
        drawn["slots"], drawn["w"] = sample(*a, **kw)
        return drawn["slots"], drawn["w"]

    m.buffer.sample = recording
    student0 = copy.deepcopy(m.student)
    m.distill(1)
    slots, w = drawn["slots"], drawn["w"]
    assert float(w.max()) <= 1.0 and float(w.min()) < 1.0  # normalised by the buffer's largest weight
    x = m.buffer.images[slots]
    with torch.no_grad():
        want = w * priority(m.teacher(x), student0.train()(x))
    torch.testing.assert_close(m.buffer.delta[slots], want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        m.buffer.tree.get(slots).float(), (m.buffer.delta[slots] + 1e-3) ** 0.6, rtol=1e-5, atol=1e-7
    )


def test_phi_class_target_keeps_the_task_loss_alive_on_a_one_class_buffer(digits_small, tiny_teacher):
    """A buffer full of one teacher class (the generator's first rounds) must not zero the task loss of images
    the teacher still sees as that class but that are drawn towards another target (phi_class="target"): that
    zero froze the generator on one class on MNIST. The literal reading (phi_class="predicted") gives it."""
    from pydistill.methods.ssdkd import SSDKD

    path, _ = tiny_teacher
    k = digits_small.num_classes
    t_logits = _logits([[0.9] + [0.1 / (k - 1)] * (k - 1)] * 3).float()  # the teacher sees class 0
    targets = torch.tensor([0, 3, 7])
    for phi_class, want in (("target", [0.0, 1.0, 1.0]), ("predicted", [0.0, 0.0, 0.0])):
        m = SSDKD(digits_small, 1, config=_tiny_config(path, phi_class=phi_class, gamma=0.0))
        m.buffer.add(torch.zeros(5, digits_small.channel, 8, 8), t_logits[:1].repeat(5, 1), torch.ones(5))
        assert m.buffer.labels[: m.buffer.size].tolist() == [0] * 5
        torch.testing.assert_close(m.phi(t_logits, targets), torch.tensor(want))
    m = SSDKD(digits_small, 1, config=_tiny_config(path, gamma=2.0))  # focal term of the target's probability
    p3 = 0.1 / (k - 1)
    torch.testing.assert_close(m.phi(t_logits, targets), torch.tensor([0.01, (1 - p3) ** 2, (1 - p3) ** 2]))
    with pytest.raises(ValueError, match="config.phi_class"):
        SSDKD(digits_small, 1, config=_tiny_config(path, phi_class="argmax"))


def test_train_teacher_augments_three_channel_data(tmp_path, monkeypatch):
    """3-channel data is augmented by default (crop + flip, as the base): the run calls augment() and trains."""
    from pydistill.data import Dataset
    from pydistill.methods.ssdkd import teacher as teacher_mod

    g = torch.Generator().manual_seed(0)
    ds = Dataset.from_tensors(
        torch.rand(40, 3, 16, 16, generator=g),
        torch.arange(40) % 4,
        torch.rand(8, 3, 16, 16, generator=g),
        torch.arange(8) % 4,
        name="tiny-rgb",
    )
    calls = []
    real = teacher_mod._augment

    def spy(x, gen, **kw):
        calls.append(kw)
        return real(x, gen, **kw)

    monkeypatch.setattr(teacher_mod, "_augment", spy)
    meta = teacher_mod.train_teacher(ds, tmp_path / "t.pt", model="ConvNet", epochs=1, batch_size=16, verbose=False)
    assert meta["complete"] and len(calls) == 3 and calls[0] == {"flip": True, "pad": 2}
    calls.clear()
    teacher_mod.train_teacher(
        ds, tmp_path / "t2.pt", model="ConvNet", epochs=1, batch_size=16, verbose=False, augment=False
    )
    assert calls == []


def test_inversion_inspection_records_the_buffer(digits_small, tiny_teacher):
    import importlib.util
    import os

    from pydistill.methods.ssdkd import SSDKD

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "experiments", "ssdkd_inversion.py")
    spec = importlib.util.spec_from_file_location("ssdkd_inversion", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = SSDKD(digits_small, 1, config=_tiny_config(tiny_teacher[0], rounds=3, warmup=1, eval_every=2), seed=0)
    recs = mod.inspect_rounds(m, 3)
    assert [r["round"] for r in recs] == [0, 1, 2]
    assert [sum(r["buffer_class_counts"]) for r in recs] == [10, 20, 25]  # buffer_size 25 caps the third round
    assert recs[-1]["buffer_class_counts"] == torch.bincount(m.buffer.labels[:25], minlength=10).tolist()
    probs = torch.softmax(m.buffer.logits[:25], 1)
    assert recs[-1]["teacher_pmax"] == pytest.approx(float(probs.max(1).values.mean()))
    assert "student_acc" in recs[1] and "student_acc" not in recs[0] and recs[0]["warmup"] == 1.0
