"""SSD-KD: loss pieces against hand-computed values, replay sampling, and a tiny end-to-end run with resume."""
import json
import math
import os

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
