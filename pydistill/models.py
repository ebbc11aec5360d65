"""Networks used to distill and to evaluate: the DC ConvNet family, MLP, LeNet, AlexNet, VGG11, ResNets.

Every network maps images [N, C, H, W] to logits [N, num_classes] and has ``.embed(x)`` (the features that
enter the last linear layer, [N, F]) and ``.classifier`` (that last ``nn.Linear``). Your own networks:
:func:`register_network` (or a factory passed as ``Config.model``); ``timm:<name>`` builds a timm model.
Architectures follow the DC/DSA/DM code base; for tiny inputs (e.g. 8x8 digits) pooling stages that would shrink
a feature map below 1x1 are skipped instead of failing.
"""

from __future__ import annotations

import os
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "get_network",
    "register_network",
    "unregister_network",
    "available_networks",
    "network_name",
    "embed_features",
    "default_model_kwargs",
    "NETWORKS",
    "ConvNet",
    "MLP",
    "LeNet",
    "AlexNet",
    "VGG",
    "ResNet",
    "num_parameters",
]

NETWORKS = (
    "ConvNet",
    "ConvNetD1",
    "ConvNetD2",
    "ConvNetD3",
    "ConvNetD4",
    "ConvNetD5",
    "ConvNetW32",
    "ConvNetW64",
    "ConvNetW128",
    "ConvNetW256",
    "ConvNetBN",
    "ConvNetNoNorm",
    "ConvNetLN",
    "ConvNetGN",
    "ConvNetMP",
    "MLP",
    "LeNet",
    "AlexNet",
    "AlexCifarNet",
    "VGG11",
    "VGG11BN",
    "ResNet18",
    "ResNet18BN",
    "ResNet34",
    "ResNet34BN",
)
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTS = ("relu", "sigmoid", "leakyrelu", "gelu")
POOLS = ("avgpool", "maxpool", "none")


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _norm(kind: str, c: int, hw: tuple[int, int]) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(c, c, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(c)
    if kind == "layernorm":
        return nn.LayerNorm([c, hw[0], hw[1]], elementwise_affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4 if c % 4 == 0 else 1, c, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def _act(kind: str) -> nn.Module:
    table = {
        "relu": lambda: nn.ReLU(inplace=True),
        "sigmoid": nn.Sigmoid,
        "leakyrelu": lambda: nn.LeakyReLU(0.01),
        "gelu": nn.GELU,
    }
    if kind not in table:
        raise ValueError(f"act must be one of {ACTS}, got {kind!r}")
    return table[kind]()


class _Net(nn.Module):
    """Base: ``forward(x) = classifier(embed(x))``."""

    classifier: nn.Linear

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ConvNet(_Net):
    """DC ConvNet: ``depth`` x [conv3x3(width, bias), norm, act, pool 2x2], flatten, Linear.

    28x28 inputs get padding 3 on the first conv (so they run at 32x32, as in the original).
    """

    def __init__(
        self, channel, num_classes, im_size, *, width=128, depth=3, norm="instancenorm", act="relu", pool="avgpool"
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        h, w = im_size
        layers: list[nn.Module] = []
        c_in = channel
        for d in range(depth):
            pad = 3 if (d == 0 and (h, w) == (28, 28)) else 1
            layers.append(nn.Conv2d(c_in, width, 3, padding=pad))
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers += [_norm(norm, width, (h, w)), _act(act)]
            if pool != "none" and h >= 2 and w >= 2:
                layers.append(nn.AvgPool2d(2, 2) if pool == "avgpool" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            c_in = width
        self.features = nn.Sequential(*layers)
        self.feat_shape = (width, h, w)
        self.classifier = nn.Linear(width * h * w, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)


class MLP(_Net):
    """Flatten, Linear(128), ReLU, Linear(128), ReLU, Linear(num_classes) (DC's MLP)."""

    def __init__(self, channel, num_classes, im_size, *, width=128, act="relu"):
        super().__init__()
        d = channel * im_size[0] * im_size[1]
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(d, width), _act(act), nn.Linear(width, width), _act(act))
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x):
        return self.features(x)


class LeNet(_Net):
    """LeNet-5: conv5(6), ReLU, maxpool, conv5(16), ReLU, maxpool, 120, 84, classes (paddings adapt to size)."""

    def __init__(self, channel, num_classes, im_size, *, act="relu"):
        super().__init__()
        h, w = im_size
        p1 = 2 if min(h, w) < 32 else 0
        h, w = h + 2 * p1 - 4, w + 2 * p1 - 4
        layers = [nn.Conv2d(channel, 6, 5, padding=p1), _act(act)]
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2, 2))
            h, w = h // 2, w // 2
        p2 = 0 if min(h, w) >= 6 else 2
        h, w = h + 2 * p2 - 4, w + 2 * p2 - 4
        layers += [nn.Conv2d(6, 16, 5, padding=p2), _act(act)]
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2, 2))
            h, w = h // 2, w // 2
        if min(h, w) < 1:
            raise ValueError(f"im_size {im_size} is too small for LeNet")
        self.features = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(16 * h * w, 120), _act(act), nn.Linear(120, 84), _act(act)
        )
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x):
        return self.features(x)


class AlexNet(_Net):
    """DC's AlexNet variant: 5 convs (128, 192, 256, 192, 192), 3 max pools, Linear."""

    def __init__(self, channel, num_classes, im_size, *, act="relu"):
        super().__init__()
        h, w = im_size
        p1 = 4 if channel == 1 and (h, w) == (28, 28) else 2
        h, w = h + 2 * p1 - 4, w + 2 * p1 - 4
        spec = [
            (channel, 128, 5, p1, True),
            (128, 192, 5, 2, True),
            (192, 256, 3, 1, False),
            (256, 192, 3, 1, False),
            (192, 192, 3, 1, True),
        ]
        layers: list[nn.Module] = []
        for i, (ci, co, k, p, pool) in enumerate(spec):
            layers += [nn.Conv2d(ci, co, k, padding=p), _act(act)]
            if i > 0:
                h, w = h + 2 * p - k + 1, w + 2 * p - k + 1
            if pool and min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(192 * h * w, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)


class VGG(_Net):
    """VGG11 (DC style: GroupNorm 'instancenorm' or BatchNorm), flatten, Linear."""

    CFG = {"VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]}

    def __init__(self, channel, num_classes, im_size, *, cfg="VGG11", norm="instancenorm", act="relu"):
        super().__init__()
        h, w = im_size
        layers: list[nn.Module] = []
        c_in = channel
        first = True
        for v in self.CFG[cfg]:
            if v == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
                continue
            pad = 3 if first and channel == 1 and (h, w) == (28, 28) else 1
            first = False
            layers.append(nn.Conv2d(c_in, v, 3, padding=pad))
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers += [_norm(norm, v, (h, w)), _act(act)]
            c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in * h * w, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)


class _BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, norm, hw):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, c_out, hw)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, c_out, hw)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out, hw))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(_Net):
    """CIFAR-style ResNet (3x3 stem, no stem pooling), blocks [2,2,2,2] (18) or [3,4,6,3] (34), global avg pool."""

    def __init__(self, channel, num_classes, im_size, *, blocks=(2, 2, 2, 2), norm="instancenorm"):
        super().__init__()
        if norm == "layernorm":
            raise ValueError(
                "norm='layernorm' is not supported for ResNets; use instancenorm, batchnorm, groupnorm or none"
            )
        h, w = im_size
        self.conv1 = nn.Conv2d(channel, 64, 3, 1, 1, bias=False)
        self.bn1 = _norm(norm, 64, (h, w))
        stages = []
        c_in = 64
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
            layer = []
            for j in range(n):
                layer.append(_BasicBlock(c_in, c, stride if j == 0 else 1, norm, (h, w)))
                c_in = c
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(512, num_classes)

    def embed(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


# Per-dataset ConvNet size where the literature's width-128 depth-3 net does not fit the images. On 8x8 digits a
# depth-3 ConvNet normalizes each channel over a 2x2 map and pools it to 1x1 (32 features): a random real subset at
# IPC 10 scores 86.5 +- 3.7% with it vs 95.3 +- 0.9% with depth 2 (6 nets, 300 epochs; depth 1: 92.3 +- 0.8).
_DATASET_CONVNET = {"digits": {"width": 32, "depth": 2}}


def default_model_kwargs(model: str, dataset_name: str) -> dict:
    """Keyword arguments of :func:`get_network` for ``model`` on ``dataset_name`` when none are given: the plain
    ``"ConvNet"`` on scikit-learn ``digits`` (8x8) is width 32, depth 2; everything else uses the defaults ({})."""
    base = str(dataset_name).lower().split(":")[0]
    if model == "ConvNet" and base in _DATASET_CONVNET:
        return dict(_DATASET_CONVNET[base])
    return {}


# ----------------------------------------------------------------------------------------------------------------
# Your own networks: a registry of factories, timm models, the embedding hook
# ----------------------------------------------------------------------------------------------------------------
NetworkFactory = Callable[..., nn.Module]  # factory(channel, num_classes, im_size, **kwargs) -> nn.Module
_REGISTRY: dict[str, NetworkFactory] = {}
TIMM_PREFIX = "timm:"


def _is_builtin(name: str) -> bool:
    return name in NETWORKS or name.startswith("ConvNet")


def register_network(name: str, factory: NetworkFactory | None = None, *, overwrite: bool = False):
    """Make ``name`` build ``factory(channel, num_classes, im_size, **kwargs)`` (an ``nn.Module`` mapping images
    [N, C, H, W] to logits [N, num_classes]) everywhere a built-in name works: ``Config.model``,
    ``--eval-models``, :func:`get_network`. Returns the factory, so it also works as a decorator
    (``@register_network("MyNet")``). DM needs an embedding: give the module ``embed(x) -> [N, F]``, else it uses
    the input of its last ``nn.Linear`` (see :func:`embed_features`). ``overwrite=True`` replaces a registered name;
    built-in names and ``timm:*`` cannot be shadowed."""
    if not isinstance(name, str) or not name.strip() or "," in name:
        raise ValueError(f"name must be a non-empty string without commas, got {name!r}")
    if _is_builtin(name) or name.startswith(TIMM_PREFIX):
        raise ValueError(f"name {name!r} is a built-in network name (or the timm: prefix); choose another name")
    if factory is None:
        return lambda f: register_network(name, f, overwrite=overwrite)
    if not callable(factory):
        raise TypeError(
            f"factory must be callable as factory(channel, num_classes, im_size, **kwargs), "
            f"got {type(factory).__name__}"
        )
    if name in _REGISTRY and _REGISTRY[name] is not factory and not overwrite:
        raise ValueError(
            f"network {name!r} is already registered (by {network_name(_REGISTRY[name])}); "
            "pass overwrite=True to replace it"
        )
    _REGISTRY[name] = factory
    return factory


def unregister_network(name: str) -> None:
    """Forget a name added by :func:`register_network` (KeyError when it was not registered)."""
    if name not in _REGISTRY:
        raise KeyError(f"network {name!r} is not registered; registered: {sorted(_REGISTRY)}")
    del _REGISTRY[name]


def available_networks() -> tuple[str, ...]:
    """The built-in names, then the registered ones (``timm:<name>`` works too when timm is installed)."""
    _import_plugins()
    return NETWORKS + tuple(sorted(_REGISTRY))


def network_name(model) -> str:
    """A printable, stable name for ``model`` (a name, or a factory: its registered name, else module.qualname)."""
    if isinstance(model, str):
        return model
    for name, f in _REGISTRY.items():
        if f is model:
            return name
    return f"{getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', type(model).__name__)}"


_PLUGINS_IMPORTED: set[str] = set()


def _import_plugins() -> None:
    """Import the modules named in ``$PYDISTILL_PLUGINS`` (comma-separated) once each, so that the networks they
    register are known to command-line runs
    (``PYDISTILL_PLUGINS=mypkg.nets pydistill evaluate --eval-models MyNet``)."""
    import importlib

    for mod in (m.strip() for m in os.environ.get("PYDISTILL_PLUGINS", "").split(",")):
        if mod and mod not in _PLUGINS_IMPORTED:
            _PLUGINS_IMPORTED.add(mod)
            try:
                importlib.import_module(mod)
            except ImportError as exc:
                raise ImportError(f"PYDISTILL_PLUGINS names {mod!r}, which cannot be imported: {exc}") from exc


def _timm_network(name: str, channel: int, num_classes: int, im_size, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=..., in_chans=channel, **kwargs)``; models with a
    fixed input size (ViTs) need ``img_size`` in kwargs. Never downloads weights."""
    try:
        import timm
    except ImportError:
        raise ImportError(
            f"network {TIMM_PREFIX}{name} needs timm: pip install 'pydistill[timm]' (or pip install timm)"
        ) from None
    if kwargs.pop("pretrained", False):
        raise ValueError("timm networks are built with pretrained=False (evaluation trains them from scratch)")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channel, **kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ValueError(f"network {TIMM_PREFIX}{name}: {exc}") from None


def embed_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features [N, F] that enter ``net``'s classifier, for methods that match embeddings (DM).

    Hook, in order: ``net.embed(x)`` (every built-in network; give your own network one); a timm model's
    ``forward_head(forward_features(x), pre_logits=True)``; else the input of the last ``nn.Linear`` (in module
    registration order) during ``net(x)``, flattened. TypeError when none applies."""
    fn = getattr(net, "embed", None)
    if callable(fn):
        return fn(x)
    if callable(getattr(net, "forward_features", None)) and callable(getattr(net, "forward_head", None)):
        return net.forward_head(net.forward_features(x), pre_logits=True).flatten(1)
    last = None
    for m in net.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise TypeError(
            f"{type(net).__name__} has no embed(x) method and no nn.Linear layer, so its embedding "
            "(the features before the classifier) is unknown; add a method embed(x) -> [N, F] to it"
        )
    captured = []
    handle = last.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        net(x)
    finally:
        handle.remove()
    if not captured:
        raise TypeError(
            f"{type(net).__name__}'s last nn.Linear was not called in forward; add a method "
            "embed(x) -> [N, F] giving the features before its classifier"
        )
    return captured[-1].flatten(1)


def get_network(name: str | NetworkFactory, channel: int, num_classes: int, im_size, **kwargs) -> nn.Module:
    """Build a network: a built-in name (``NETWORKS``: keywords width, depth, norm, act, pool), a name given to
    :func:`register_network`, ``"timm:<model>"`` (timm installed), or a factory callable itself; ``kwargs`` go to
    the factory. im_size: (H, W) or an int. Parameters use the network's default initialization."""
    if isinstance(im_size, int):
        im_size = (im_size, im_size)
    im_size = tuple(int(v) for v in im_size)
    if len(im_size) != 2 or min(im_size) < 1:
        raise ValueError(f"im_size must be (H, W) with positive sizes, got {im_size}")
    if int(channel) < 1:
        raise ValueError(f"channel must be >= 1, got {channel}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if isinstance(name, str) and _is_builtin(name):
        return _builtin_network(name, int(channel), int(num_classes), im_size, **kwargs)
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        net = _timm_network(name[len(TIMM_PREFIX) :], int(channel), int(num_classes), im_size, **kwargs)
    elif isinstance(name, str):
        if name not in _REGISTRY:
            _import_plugins()
        if name not in _REGISTRY:
            raise ValueError(
                f"unknown network {name!r}; choose from {available_networks()}, a timm:<name> network, "
                "or register yours with pydistill.models.register_network"
            )
        net = _REGISTRY[name](int(channel), int(num_classes), im_size, **kwargs)
    elif callable(name):
        net = name(int(channel), int(num_classes), im_size, **kwargs)
    else:
        raise TypeError(
            f"model must be a network name or a factory(channel, num_classes, im_size, **kwargs), "
            f"got {type(name).__name__}"
        )
    if not isinstance(net, nn.Module):
        raise TypeError(f"network factory {network_name(name)} returned {type(net).__name__}, expected an nn.Module")
    return net


def _builtin_network(
    name: str,
    channel: int,
    num_classes: int,
    im_size,
    *,
    width: int = 128,
    depth: int = 3,
    norm: str | None = None,
    act: str = "relu",
    pool: str = "avgpool",
) -> nn.Module:
    """A built-in network by name (see ``NETWORKS``); parameters use PyTorch's default initialization.

    ``norm=None`` means the name's default: instancenorm (ConvNet, VGG11, ResNet18), batchnorm for
    ResNet34 and every ``*BN`` name; a name's suffix (D3, W64, BN, NoNorm, ...) overrides the keyword.
    channel, num_classes, im_size: validated by :func:`get_network`.
    """
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} or None, got {norm!r}")
    args = (int(channel), int(num_classes), im_size)
    if name.startswith("ConvNet"):
        suffix = name[len("ConvNet") :]
        kw = dict(width=width, depth=depth, norm=norm or "instancenorm", act=act, pool=pool)
        if m := re.fullmatch(r"D(\d+)", suffix):
            kw["depth"] = int(m.group(1))
        elif m := re.fullmatch(r"W(\d+)", suffix):
            kw["width"] = int(m.group(1))
        elif suffix in ("BN", "NoNorm", "LN", "GN", "IN"):
            kw["norm"] = {
                "BN": "batchnorm",
                "NoNorm": "none",
                "LN": "layernorm",
                "GN": "groupnorm",
                "IN": "instancenorm",
            }[suffix]
        elif suffix in ("MP", "AP", "NP"):
            kw["pool"] = {"MP": "maxpool", "AP": "avgpool", "NP": "none"}[suffix]
        elif suffix:
            raise ValueError(f"unknown network {name!r}; choose from {NETWORKS}")
        return ConvNet(*args, **kw)
    if name == "MLP":
        return MLP(*args, width=width, act=act)
    if name == "LeNet":
        return LeNet(*args, act=act)
    if name == "AlexNet":
        return AlexNet(*args, act=act)
    if name == "AlexCifarNet":
        return AlexCifarNet(*args, act=act)
    if name in ("VGG11", "VGG11BN"):
        return VGG(*args, cfg="VGG11", norm="batchnorm" if name.endswith("BN") else (norm or "instancenorm"), act=act)
    if name in ("ResNet18", "ResNet18BN", "ResNet34", "ResNet34BN"):
        blocks = (2, 2, 2, 2) if name.startswith("ResNet18") else (3, 4, 6, 3)
        default = "batchnorm" if (name.endswith("BN") or name == "ResNet34") else "instancenorm"
        nrm = "batchnorm" if name.endswith("BN") else (norm or default)
        return ResNet(*args, blocks=blocks, norm=nrm)
    raise ValueError(f"unknown network {name!r}; choose from {NETWORKS}")


class AlexCifarNet(_Net):
    """DD's CIFAR network (SsnL/dataset-distillation networks/networks.py): 2 x [Conv5x5 64, ReLU, MaxPool 3/2,
    LRN(4)] (pool and LRN swapped in the second block, as there), then Linear 384, 192 and the classifier;
    ``embed`` is the 192-d output before the classifier."""

    def __init__(self, channel, num_classes, im_size, *, act="relu"):
        super().__init__()
        h, w = im_size
        for _ in range(2):  # MaxPool2d(3, stride 2, padding 1)
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        lrn = dict(size=4, alpha=0.001 / 9.0, beta=0.75, k=1.0)
        self.features = nn.Sequential(
            nn.Conv2d(channel, 64, 5, padding=2),
            _act(act),
            nn.MaxPool2d(3, 2, 1),
            nn.LocalResponseNorm(**lrn),
            nn.Conv2d(64, 64, 5, padding=2),
            _act(act),
            nn.LocalResponseNorm(**lrn),
            nn.MaxPool2d(3, 2, 1),
        )
        self.fc = nn.Sequential(nn.Linear(64 * h * w, 384), _act(act), nn.Linear(384, 192), _act(act))
        self.classifier = nn.Linear(192, num_classes)

    def embed(self, x):
        return self.fc(self.features(x).flatten(1))


def seeded_network(
    name: str, channel: int, num_classes: int, im_size, seed: int, *, device="cpu", **kwargs
) -> nn.Module:
    """``get_network(name, channel, num_classes, im_size, **kwargs)`` with its initialisation drawn from the CPU
    generator seeded with ``seed`` (same seed -> same weights on every device), moved to ``device``. The global
    RNG is left untouched."""
    if isinstance(im_size, int):
        im_size = (im_size, im_size)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        net = get_network(name, channel, num_classes, im_size, **kwargs)
    return net.to(device)


__all__ += ["seeded_network", "AlexCifarNet"]
