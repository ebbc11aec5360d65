"""SSD-KD: loss pieces against hand-computed values, replay sampling, and a tiny end-to-end run with resume."""
import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from pydistill.generator import Generator
from pydistill.kd import (
    BNStatsLoss,
    bn_stats_distance,
    class_frequencies,
    importance_weights,
    kd_loss,
    modulating_phi,
    priority,
)


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
    freq = torch.tensor([5 / 9, 2 / 9, 2 / 9])
    # diversity = min(1, 1/(K f)) = [9/15, 1, 1]; difficulty = (1 - p)^2 = [0.04, 0.25, 0.25]
    phi = modulating_phi(t, freq, gamma=2.0)
    torch.testing.assert_close(phi, torch.tensor([0.6 * 0.04, 0.25, 0.25]), rtol=1e-5, atol=1e-7)
    # each factor alone, and another gamma
    torch.testing.assert_close(modulating_phi(t, freq, 2.0, use_difficulty=False), torch.tensor([0.6, 1.0, 1.0]))
    torch.testing.assert_close(modulating_phi(t, freq, 1.0, use_diversity=False), torch.tensor([0.2, 0.5, 0.5]),
                               rtol=1e-5, atol=1e-7)
    # a class absent from the buffer and the batch is not penalised; gamma = 0 leaves diversity only
    phi0 = modulating_phi(t, torch.tensor([0.0, 0.5, 0.5]), gamma=0.0)
    torch.testing.assert_close(phi0, torch.tensor([1.0, 2 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="class_freq"):
        modulating_phi(t, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="gamma"):
        modulating_phi(t, freq, gamma=-1.0)


def test_importance_weights_hand_computed():
    p = torch.tensor([0.1, 0.4, 0.25], dtype=torch.float64)
    # (4 p)^-0.5 = [1/sqrt(0.4), 1/sqrt(1.6), 1]; batch max = 1/sqrt(0.4)
    w = importance_weights(p, 4, 0.5)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, math.sqrt(0.4)], dtype=torch.float64))
    # global max from the smallest probability in the buffer: (4 * 0.05)^-0.5 = sqrt(5)
    w = importance_weights(p, 4, 0.5, min_probability=0.05)
    ref = torch.tensor([0.4 ** -0.5, 1.6 ** -0.5, 1.0], dtype=torch.float64) / math.sqrt(5)
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(importance_weights(p, 4, 0.0), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="probabilities"):
        importance_weights(torch.tensor([0.0, 0.5]), 2, 0.5)
    with pytest.raises(ValueError, match="beta"):
        importance_weights(p, 4, -0.1)


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
    meta = train_teacher(digits_small, path, model="ConvNetBN", model_kwargs={"width": 8}, epochs=2,
                         batch_size=32, lr=0.05, verbose=False)
    return path, meta


def test_teacher_file_and_resume(digits_small, tiny_teacher, tmp_path, monkeypatch):
    from pydistill.methods import ssdkd

    path, meta = tiny_teacher
    assert meta["complete"] and meta["model"] == "ConvNetBN" and meta["epochs_done"] == 2
    assert 0.0 <= meta["test_accuracy"] <= 1.0
    net, m2 = ssdkd.load_teacher(path)
    assert not net.training and m2["test_accuracy"] == meta["test_accuracy"]
    assert ssdkd.train_teacher(digits_small, path, model="ConvNetBN", model_kwargs={"width": 8}, epochs=2,
                               batch_size=32, lr=0.05, verbose=False)["epochs_done"] == 2  # complete: no work
    # crash during epoch 2, then resume: same weights as the uninterrupted run
    out = str(tmp_path / "t.pt")
    calls = {"n": 0}
    real = ssdkd.test_accuracy

    def flaky(net_, ds_):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(net_, ds_)

    kw = dict(model="ConvNetBN", model_kwargs={"width": 8}, epochs=2, batch_size=32, lr=0.05, verbose=False)
    monkeypatch.setattr(ssdkd, "test_accuracy", flaky)
    with pytest.raises(KeyboardInterrupt):
        ssdkd.train_teacher(digits_small, out, **kw)
    part = torch.load(out, weights_only=True)
    assert part["epochs_done"] == 1 and not part["complete"]
    with pytest.raises(ValueError, match="not finished"):
        ssdkd.load_teacher(out)
    monkeypatch.setattr(ssdkd, "test_accuracy", real)
    ssdkd.train_teacher(digits_small, out, **kw)
    a, b = torch.load(out, weights_only=True)["state_dict"], torch.load(path, weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="epochs"):
        ssdkd.train_teacher(digits_small, out, **{**kw, "epochs": 3})


def _tiny_config(teacher, **kw):
    from pydistill.methods.ssdkd import Config

    cfg = Config(teacher=teacher, student="ConvNetW32", student_kwargs={}, rounds=4, synthesis_batch=10,
                 g_steps=2, kd_steps=2, batch_size=12, buffer_size=25, latent_dim=16, gen_width=8,
                 lr_student=0.05)
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


def test_replay_weight_norm_and_uniform_mix(digits_small, tiny_teacher):
    from pydistill.methods.ssdkd import SSDKD

    path, _ = tiny_teacher
    m = SSDKD(digits_small, 1, config=_tiny_config(path, buffer_size=5, alpha=1.0, priority_eps=1e-3), seed=1)
    delta = torch.tensor([0.1, 0.4, 1.0, 2.0, 0.5])
    m.buffer.add(torch.zeros(5, 1, 8, 8), torch.zeros(5, 10), delta)
    p = (delta.double() + 1e-3) / (delta.double() + 1e-3).sum()

    def check(slots, w, probs, p_max_weight):
        want = (5 * probs[slots]) ** -0.5
        torch.testing.assert_close(w.double(), want / p_max_weight, rtol=1e-5, atol=1e-6)

    m.config.weight_norm = "buffer"  # the largest weight any buffer item could get is 1
    slots, w = m._sample_weighted(41, 0.5)
    check(slots, w, p, (5 * p.min()) ** -0.5)
    m.config.weight_norm = "batch"  # the largest weight in this batch is 1
    slots, w = m._sample_weighted(41, 0.5)
    check(slots, w, p, ((5 * p[slots]) ** -0.5).max())
    assert float(w.max()) == 1.0
    m.config.uniform_mix = 0.5  # P = 0.5 / |B| + 0.5 P_prio; the last 20 of 40 slots are drawn uniformly
    slots, w = m._sample_weighted(40, 0.5)
    check(slots, w, 0.5 * p + 0.1, ((5 * (0.5 * p[slots] + 0.1)) ** -0.5).max())
    m.config.weight_norm = "buffer"
    slots, w = m._sample_weighted(40, 0.5)
    check(slots, w, 0.5 * p + 0.1, (5 * (0.5 * p.min() + 0.1)) ** -0.5)
    m.config.weight_norm = "mean"  # weights proportional to (|B| P)^-beta with batch mean 1
    slots, w = m._sample_weighted(40, 0.5)
    want = (5 * (0.5 * p[slots] + 0.1)) ** -0.5
    torch.testing.assert_close(w.double(), want / want.mean(), rtol=1e-5, atol=1e-6)
    m.config.uniform_mix = 1.0  # uniform replay: every weight is 1
    slots, w = m._sample_weighted(40, 1.0)
    assert torch.equal(w, torch.ones(40))
    # prioritized draws follow P: slot 3 (largest delta) is drawn more often than slot 0 (smallest)
    m.config.uniform_mix = 0.0
    counts = torch.bincount(m._sample_weighted(400, 0.5)[0], minlength=5)
    assert counts[3] > 5 * counts[0]
    with pytest.raises(ValueError, match="config.weight_norm"):
        SSDKD(digits_small, 1, config=_tiny_config(path, weight_norm="max"))
    with pytest.raises(ValueError, match="config.uniform_mix"):
        SSDKD(digits_small, 1, config=_tiny_config(path, uniform_mix=1.5))
