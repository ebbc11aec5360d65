"""Your own data and networks: Dataset.from_tensors/from_torch through DC and DM, register_network / a factory as
Config.model through distill and evaluate, the embedding hook DM uses, $PYDISTILL_PLUGINS, timm networks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pydistill.data import Dataset
from pydistill.evaluate import evaluate
from pydistill.models import embed_features, get_network, register_network, unregister_network

pytestmark = pytest.mark.usefixtures("one_thread")


def _made_up(n_train=16, n_test=8, k=3, seed=0):
    """k classes of 1x8x8 images: class c is a bright horizontal band at rows 2c..2c+1 plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n * k) % k
        x = 0.2 * torch.rand(n * k, 1, 8, 8, generator=g)
        for c in range(k):
            x[y == c, :, 2 * c : 2 * c + 2, :] += 0.7
        return x.clamp(0, 1), y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    return xtr, ytr, xte, yte


class TinyNet(nn.Module):
    """A user's network without an ``embed`` method: DM uses the input of its last Linear."""

    def __init__(self, channel, num_classes, im_size, width=8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channel, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class NoLinearNet(nn.Module):
    def __init__(self, channel, num_classes, im_size):
        super().__init__()
        self.conv = nn.Conv2d(channel, num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@pytest.fixture
def tiny_net():
    register_network("TestTinyNet", TinyNet)
    yield "TestTinyNet"
    unregister_network("TestTinyNet")


def _distill(method_name, dataset, out, **changes):
    from pydistill.methods import get_method
    from pydistill.runner import run_distillation

    cls = get_method(method_name)
    cfg = cls.Config.for_dataset(dataset.name, 2)
    cfg = type(cfg)(**{**cfg.__dict__, **changes})
    method = cls(dataset, 2, config=cfg, seed=0)
    method.initial_images = method.images.detach().clone()
    metrics = run_distillation(
        method,
        out,
        progress=False,
        final_eval=True,
        eval_kwargs={"models": ("TestTinyNet",), "num_eval": 2, "epochs": 60, "dsa": False},
    )
    return method, metrics


@pytest.mark.parametrize(
    "method_name,changes",
    [
        # real init: DC's official noise init cannot learn this set in 2 iterations (chance, 1/3)
        (
            "dc",
            {
                "iterations": 2,
                "outer_loop": 2,
                "inner_loop": 1,
                "batch_real": 8,
                "bn_images_per_class": 4,
                "init": "real",
            },
        ),
        ("dm", {"iterations": 4, "batch_real": 8}),
    ],
)
def test_own_data_and_network_through_distill_and_evaluate(tmp_path, tiny_net, method_name, changes):
    xtr, ytr, xte, yte = _made_up()
    ds = Dataset.from_tensors(xtr, ytr, xte, yte, name="bands", class_names=["top", "middle", "bottom"])
    method, metrics = _distill(
        method_name, ds, tmp_path, model=tiny_net, model_kwargs={"width": 8}, dsa=method_name == "dm", **changes
    )
    syn = method.synthetic_set()
    assert syn.images.shape == (6, 1, 8, 8) and torch.isfinite(syn.images).all()
    assert metrics["dataset"] == "bands" and metrics["config"]["model"] == "TestTinyNet"
    acc = metrics["accuracies"]["TestTinyNet"]
    assert len(acc["accs"]) == 2 and acc["mean"] > 0.6  # 3 well-separated classes: chance is 1/3
    assert json.loads((tmp_path / "metrics.json").read_text())["dataset"] == "bands"
    # the images moved (the loss reached them through the user's network)
    assert (syn.images - method.initial_images).abs().max() > 1e-4


def test_from_torch_dataset_with_a_factory_as_config_model(tmp_path, tiny_net):
    xtr, ytr, xte, yte = _made_up(seed=1)
    ds = Dataset.from_torch(
        torch.utils.data.TensorDataset(xtr, ytr), torch.utils.data.TensorDataset(xte, yte), name="bands-torch"
    )

    def factory(channel, num_classes, im_size):
        return TinyNet(channel, num_classes, im_size, width=4)

    method, metrics = _distill("dm", ds, tmp_path, model=factory, iterations=3, batch_real=8)
    assert metrics["config"]["model"].endswith("factory")  # a stable name, not a memory address
    assert metrics["accuracies"]["TestTinyNet"]["mean"] > 0.6


def test_embedding_hook():
    x = torch.randn(5, 1, 8, 8)
    builtin = get_network("ConvNet", 1, 3, (8, 8), width=4, depth=1)
    torch.testing.assert_close(embed_features(builtin, x), builtin.embed(x))  # the embed() method first
    net = TinyNet(1, 3, (8, 8))
    torch.testing.assert_close(embed_features(net, x), net.body(x))  # else the last Linear's input
    with pytest.raises(TypeError, match="no embed\\(x\\) method and no nn.Linear"):
        embed_features(NoLinearNet(1, 3, (8, 8)), x)


def test_dm_with_a_network_without_an_embedding_fails_clearly(tmp_path):
    from pydistill.methods.dm import DM

    xtr, ytr, xte, yte = _made_up()
    ds = Dataset.from_tensors(xtr, ytr, xte, yte, name="bands")
    cfg = DM.Config(model=NoLinearNet, iterations=1, batch_real=4, dsa=False)
    with pytest.raises(TypeError, match="NoLinearNet has no embed"):
        DM(ds, 1, config=cfg).step(0)


def test_register_network_errors(tiny_net):
    with pytest.raises(ValueError, match="already registered"):
        register_network("TestTinyNet", NoLinearNet)
    with pytest.raises(ValueError, match="built-in network name"):
        register_network("ConvNet", TinyNet)
    with pytest.raises(TypeError, match="factory must be callable"):
        register_network("X", 3)
    with pytest.raises(ValueError, match="unknown network 'Nope'.*TestTinyNet.*register_network"):
        get_network("Nope", 1, 3, 8)
    with pytest.raises(TypeError, match="returned int, expected an nn.Module"):
        get_network(lambda c, k, s: 3, 1, 3, 8)

    @register_network("TestDecorated")
    def decorated(channel, num_classes, im_size):
        return TinyNet(channel, num_classes, im_size)

    try:
        assert isinstance(get_network("TestDecorated", 1, 3, 8), TinyNet)
    finally:
        unregister_network("TestDecorated")


def test_cli_eval_models_with_a_plugin_network(tmp_path, monkeypatch, capsys):
    """--eval-models names a network a $PYDISTILL_PLUGINS module registers."""
    from pydistill.cli import main
    from pydistill.data import load_dataset
    from pydistill.synthetic import SyntheticSet

    (tmp_path / "my_nets_plugin.py").write_text(
        "from pydistill.models import register_network\n"
        "from torch import nn\n"
        "@register_network('PluginMLP')\n"
        "def plugin_mlp(channel, num_classes, im_size):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(channel * im_size[0] * im_size[1], 16), nn.ReLU(),\n"
        "                         nn.Linear(16, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYDISTILL_PLUGINS", "my_nets_plugin")
    digits = load_dataset("digits")
    idx = torch.cat([torch.nonzero(digits.y_train == c).flatten()[:5] for c in range(10)])
    SyntheticSet(digits.x_train[idx], digits.y_train[idx], meta={"dataset": "digits"}).save(tmp_path / "s.safetensors")
    try:
        rc = main(
            [
                "evaluate",
                "--synthetic",
                str(tmp_path / "s.safetensors"),
                "--eval-models",
                "PluginMLP",
                "--num-eval",
                "1",
                "--eval-epochs",
                "300",
                "--no-eval-dsa",
                "--no-progress",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "acc.json"),
            ]
        )
    finally:
        unregister_network("PluginMLP")
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "acc.json").read_text())
    assert res["PluginMLP"]["mean"] > 0.5  # 5 real images per class, 10 classes: chance is 0.1


def test_timm_network_evaluates():
    pytest.importorskip("timm")
    net = get_network("timm:resnet10t", 1, 3, (8, 8))
    x = torch.randn(2, 1, 8, 8)
    assert net(x).shape == (2, 3)
    feats = embed_features(net, x)
    assert feats.shape == (2, net.num_features)
    xtr, ytr, xte, yte = _made_up(n_train=6, n_test=4)
    ds = Dataset.from_tensors(xtr, ytr, xte, yte, name="bands")
    res = evaluate(_subset_set(ds), ds, models=("timm:resnet10t",), num_eval=1, epochs=2, dsa=False, progress=False)
    assert 0.0 <= res["timm:resnet10t"]["mean"] <= 1.0 and len(res["timm:resnet10t"]["accs"]) == 1
    with pytest.raises(ValueError, match="timm:not_a_model"):
        get_network("timm:not_a_model", 1, 3, 8)


def _subset_set(ds):
    from pydistill.synthetic import SyntheticSet

    return SyntheticSet(ds.x_train[:6].clone(), ds.y_train[:6].clone())
