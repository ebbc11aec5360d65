"""Networks: shapes, parameter counts, embed/classifier, norms (pydistill.models)."""

import pytest
import torch
from torch import nn

from pydistill.models import NETWORKS, ConvNet, get_network, num_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def test_convnet_cifar10_param_count():
    net = get_network("ConvNet", 3, 10, (32, 32))
    assert num_parameters(net) == 320_010
    assert net.feat_shape == (128, 4, 4)
    gns = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(gns) == 3 and all(m.num_groups == m.num_channels == 128 and m.affine for m in gns)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None and c.kernel_size == (3, 3) for c in convs)


def test_convnet_mnist_padding():
    net = get_network("ConvNet", 1, 10, 28)
    assert net.features[0].padding == (3, 3) and net.feat_shape == (128, 4, 4)
    # 1-channel conv (1*128*9+128) + two 128->128 convs + 3 norms + Linear(2048, 10)
    assert num_parameters(net) == 1280 + 2 * 147584 + 768 + 20490


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 15, 13)])
def test_all_networks_shapes(shape):
    x = torch.randn(3, *shape)
    for name in NETWORKS:
        if shape == (3, 32, 32) and name in ("ResNet34", "ResNet34BN", "VGG11", "VGG11BN", "AlexNet"):
            x_ = x[:2]
        else:
            x_ = x
        net = get_network(name, shape[0], 7, shape[1:]).eval()
        with torch.no_grad():
            logits = net(x_)
            emb = net.embed(x_)
        assert logits.shape == (x_.shape[0], 7), name
        assert isinstance(net.classifier, nn.Linear) and emb.shape == (x_.shape[0], net.classifier.in_features), name
        torch.testing.assert_close(net.classifier(emb), logits, msg=name)


def test_variants_and_norms():
    def kinds(net, t):
        return sum(isinstance(m, t) for m in net.modules())

    assert len(get_network("ConvNetD4", 3, 10, 32).features) == 4 * 4
    assert get_network("ConvNetD5", 3, 10, 32).feat_shape == (128, 1, 1)
    assert get_network("ConvNetW64", 3, 10, 32).feat_shape == (64, 4, 4)
    assert get_network("ConvNet", 3, 10, 32, width=32, depth=2).feat_shape == (32, 8, 8)
    assert kinds(get_network("ConvNetBN", 3, 10, 32), nn.BatchNorm2d) == 3
    assert kinds(get_network("ConvNetNoNorm", 3, 10, 32), nn.GroupNorm) == 0
    assert kinds(get_network("ConvNet", 3, 10, 32, norm="batchnorm"), nn.BatchNorm2d) == 3
    assert kinds(get_network("ConvNetMP", 3, 10, 32), nn.MaxPool2d) == 3
    assert kinds(get_network("ResNet18", 3, 10, 32), nn.BatchNorm2d) == 0
    assert kinds(get_network("ResNet18BN", 3, 10, 32), nn.BatchNorm2d) > 0
    assert kinds(get_network("ResNet34", 3, 10, 32), nn.BatchNorm2d) > 0  # teacher for data-free KD
    assert kinds(get_network("VGG11BN", 3, 10, 32), nn.BatchNorm2d) == 8
    # 8x8 inputs: pooling stops at 1x1 instead of failing
    assert get_network("ConvNetD5", 1, 10, 8).feat_shape == (128, 1, 1)


def test_gradient_reaches_input():
    net = get_network("ConvNet", 1, 10, 8)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown network"):
        get_network("ConvNetX9", 3, 10, 32)
    with pytest.raises(ValueError, match="unknown network"):
        get_network("ViT", 3, 10, 32)
    with pytest.raises(ValueError, match="norm must be"):
        get_network("ConvNet", 3, 10, 32, norm="weird")
    with pytest.raises(ValueError, match="act must be"):
        get_network("ConvNet", 3, 10, 32, act="swishy")
    with pytest.raises(ValueError, match="im_size"):
        get_network("ConvNet", 3, 10, (0, 32))
    with pytest.raises(ValueError, match="depth"):
        ConvNet(3, 10, (32, 32), depth=0)


def test_default_model_kwargs_digits_convnet_keeps_a_2x2_map():
    from pydistill.models import default_model_kwargs

    kw = default_model_kwargs("ConvNet", "digits")
    assert kw == {"width": 32, "depth": 2}
    net = get_network("ConvNet", 1, 10, (8, 8), **kw)
    assert net.feat_shape == (32, 2, 2)
    assert net.embed(torch.randn(3, 1, 8, 8)).shape == (3, 128)
    # everything else keeps the literature's defaults
    assert default_model_kwargs("ConvNet", "mnist") == {}
    assert default_model_kwargs("MLP", "digits") == {}
    kw["width"] = 7  # a copy: the table is not mutated
    assert default_model_kwargs("ConvNet", "digits")["width"] == 32
