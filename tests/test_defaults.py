"""Method defaults follow the official code (DC, DD, DM, MTT), MTT's linear lr mode is the official SGD step, and
the shared seeded network builder."""

import dataclasses

import pytest
import torch

from pydistill.data import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"width": 8, "depth": 1}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(12, seed=1, n_test_per_class=5)


@pytest.fixture(scope="module")
def experts(digits, tmp_path_factory):
    from pydistill.methods.mtt import train_experts

    out = tmp_path_factory.mktemp("experts")
    train_experts(
        digits,
        out,
        num_experts=1,
        epochs=3,
        lr=0.05,
        batch_size=64,
        dsa=False,
        model="ConvNet",
        model_kwargs=TINY,
        seed=0,
        log=None,
    )
    return out


def test_dc_dsa_dm_defaults():
    from pydistill.methods.dc import Config as DCConfig
    from pydistill.methods.dc import DSAConfig
    from pydistill.methods.dm import Config as DMConfig

    assert DCConfig().init == "noise" and DCConfig.for_dataset("mnist", 1).init == "noise"
    assert DSAConfig().init == "real" and DSAConfig.for_dataset("cifar10", 10).dsa
    assert DCConfig.for_dataset("digits", 1).init == "real"  # our CPU preset
    assert DMConfig.for_dataset("cifar10", 50).lr_img == 1.0
    assert DMConfig.for_dataset("cifar10", 100).lr_img == 10.0
    assert DMConfig.for_dataset("cifar100", 100).lr_img == 1.0


def test_dd_defaults():
    from pydistill.methods.dd import Config

    assert Config().init_mode == "random"
    one = Config.for_dataset("mnist", 1)
    assert (one.distill_steps, one.distill_epochs, one.model) == (1, 3, "LeNet")  # 10 images x 3 epochs
    assert Config.for_dataset("mnist", 10).distill_steps == 10
    assert Config.for_dataset("cifar10", 10).model == "AlexCifarNet"


def test_alexcifarnet_shape():
    from pydistill.models import seeded_network

    net = seeded_network("AlexCifarNet", 3, 10, (32, 32), 0)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net.embed(torch.zeros(2, 3, 32, 32)).shape == (2, 192)
    assert sum(p.numel() for p in net.features.parameters()) == 3 * 64 * 25 + 64 + 64 * 64 * 25 + 64
    assert net.fc[0].in_features == 4096


def test_seeded_network_is_reproducible_and_leaves_rng():
    from pydistill.models import get_network, seeded_network

    before = torch.get_rng_state()
    a = seeded_network("ConvNet", 1, 10, (8, 8), 123, **TINY)
    b = seeded_network("ConvNet", 1, 10, (8, 8), 123, **TINY)
    assert torch.equal(before, torch.get_rng_state())
    torch.manual_seed(123)
    c = get_network("ConvNet", 1, 10, (8, 8), **TINY)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_mtt_table_rows_and_fallback():
    from pydistill.methods.mtt.method import MTT_TABLE, Config

    c = Config.for_dataset("cifar10", 1)
    assert (c.syn_steps, c.expert_epochs, c.max_start_epoch, c.lr_img, c.lr_lr, c.lr_teacher, c.zca) == (
        50,
        2,
        2,
        100.0,
        1e-7,
        0.01,
        True,
    )
    c = Config.for_dataset("cifar10", 50)
    assert (c.lr_img, c.zca) == (1000.0, False)
    c = Config.for_dataset("cifar100", 50)
    assert (c.syn_steps, c.batch_syn, c.zca) == (80, 125, True)
    c = Config.for_dataset("tinyimagenet", 10)
    assert (c.lr_img, c.lr_lr, c.batch_syn, c.model) == (10000.0, 1e-4, 200, "ConvNetD4")
    assert Config().lr_param == "linear" and Config.for_dataset("digits", 1).lr_param == "log"
    with pytest.warns(UserWarning, match="CIFAR-100 IPC 10 row|cifar100 IPC 10 row"):
        c = Config.for_dataset("cifar100", 20)
    assert c.syn_steps == MTT_TABLE["cifar100"][10][0]
    with pytest.warns(UserWarning, match="CIFAR-10 IPC 1 row"):
        c = Config.for_dataset("svhn", 1)
    assert c.zca is False


def _mtt(digits, experts, lr_param, **kw):
    from pydistill.methods.mtt import MTT
    from pydistill.methods.mtt.method import Config

    cfg = dataclasses.replace(
        Config.for_dataset("digits", 1),
        buffers=str(experts),
        syn_steps=2,
        expert_epochs=1,
        max_start_epoch=2,
        iterations=2,
        lr_img=1.0,
        lr_lr=1e-5,
        dsa=False,
        lr_param=lr_param,
        model_kwargs=None,
        **kw,
    )
    return MTT(digits, 1, config=cfg, seed=0)


def test_mtt_linear_lr_is_the_official_sgd_step(digits, experts):
    m = _mtt(digits, experts, "linear")
    lr0 = m.lr
    m.step(0)
    g1 = float(m.lr_param.grad)
    assert g1 != 0
    lr1 = lr0 - 1e-5 * g1  # SGD(lr_lr, momentum 0.5), first step: the buffer is the gradient
    assert m.lr == pytest.approx(lr1, rel=1e-6) and abs(lr1 - lr0) > 1e-3 * lr0
    m.step(1)
    g2 = float(m.lr_param.grad)
    assert m.lr == pytest.approx(lr1 - 1e-5 * (0.5 * g1 + g2), rel=1e-6)
    state = m.state_dict()
    assert "lr" in state and "log_lr" not in state
    m2 = _mtt(digits, experts, "linear")
    m2.load_state_dict(state)
    assert m2.lr == m.lr
    # the log parametrisation takes the same first step to first order
    ml = _mtt(digits, experts, "log")
    ml.step(0)
    assert ml.lr - lr0 == pytest.approx(lr1 - lr0, rel=2e-2)
    with pytest.raises(KeyError, match="lr_param"):
        ml.load_state_dict(state)
    with pytest.raises(ValueError, match="lr_param"):
        _mtt(digits, experts, "sqrt")


def test_dm_batchnorm_one_forward_over_all_classes(digits):
    from pydistill.methods.dm import DM, Config

    cfg = dataclasses.replace(
        Config.for_dataset("digits", 2), model="ConvNetBN", model_kwargs=TINY, batch_real=4, iterations=1, dsa=False
    )
    m = DM(digits, 2, config=cfg, seed=0)
    before = m.images.detach().clone()
    # the loss: per-class mean embeddings of ONE forward over every class (batch statistics over all classes)
    from pydistill import distributed as pdist
    from pydistill.methods.common import fresh_network

    probe = DM(digits, 2, config=cfg, seed=0)
    net = fresh_network(probe, cfg)
    iter_seed = int(torch.randint(0, 2**62, (1,), generator=probe.generator).item())
    reals = [digits.sample_real(c, 4, pdist.derived_generator("cpu", iter_seed, c)) for c in range(10)]
    net.train()
    with torch.no_grad():
        er = net.embed(torch.cat(reals)).split(4)
        es = net.embed(probe.images.detach()).split(2)
    expect = sum(float((r.mean(0) - s.mean(0)).pow(2).sum()) for r, s in zip(er, es)) / 10
    out = m.step(0)
    assert out["loss"] == pytest.approx(expect, rel=1e-5)
    assert not torch.equal(before, m.images.detach())
