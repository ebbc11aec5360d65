"""From command-line text to a method's ``Config``: typed ``--set key=value`` overrides and the dedicated flags.

Precedence rule (one rule for every field): a field is set by at most one source. The dedicated flags
(``--iterations`` and the field aliases of :data:`FIELD_FLAGS`, e.g. ``--buffers``) are shorthands for
``--set FIELD=VALUE``; giving both for the same field with different values is an error naming both, giving
the same value twice is accepted, and a field given by neither keeps the method's default for the
(dataset, ipc) (``Config.for_dataset``). Repeating ``--set`` for one key with different values is an error too.

Every resulting value is checked generically before any work: floats must be finite, integers >= 0
(no Config field of the shipped methods has a meaningful negative value), and a method's own ``__post_init__``
/ constructor checks run after that.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

__all__ = ["parse_overrides", "make_config", "iterations_field", "FIELD_FLAGS", "check_values", "check_network"]

_NONE = ("none", "null")
_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("0", "false", "no", "off", "n", "f")

# Dedicated ``distill`` flags that are aliases of ``--set FIELD=...``: flag name (without --) -> help. The flag
# applies to any method whose Config has that field (today: mtt ``buffers``, ssdkd ``teacher``, mgd3 ``model``;
# ``model`` is also the network of dc/dsa/dm/mtt).
FIELD_FLAGS = {
    "buffers": "mtt: expert trajectories folder (from `pydistill experts`); alias of --set buffers=...",
    "teacher": "ssdkd: teacher checkpoint (from `pydistill teacher`); alias of --set teacher=...",
    "model": "the Config's `model` field (mgd3: diffusion model folder from `pydistill train-diffusion`; "
    "dc/dsa/dm/mtt: network name); alias of --set model=...",
}


def _convert(text: str, tp, key: str):
    """``text`` parsed as the annotation ``tp`` of field ``key``: bool/int/float/str, unions with None
    ("none"/"null"), list/tuple (JSON or comma-separated), dict (JSON object), Any (JSON, else the text).
    Raises ValueError naming ``--set key``."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if type(None) in members and text.lower() in _NONE:
            return None
        errors = []
        for m in (m for m in members if m is not type(None)):
            try:
                return _convert(text, m, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"--set {key}={text!r}: not a valid {tp} ({'; '.join(errors)})")
    if tp is type(None):
        if text.lower() in _NONE:
            return None
        raise ValueError(f"--set {key}={text!r}: expected none")
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"--set {key}={text!r}: expected a boolean (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)  # accept 1e3
            except ValueError:
                raise ValueError(f"--set {key}={text!r}: expected an integer") from None
            if f.is_integer():
                return int(f)
            raise ValueError(f"--set {key}={text!r}: expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--set {key}={text!r}: expected a number") from None
    if tp is str:
        return text
    container = origin or tp
    if container in (list, tuple, dict):
        try:
            val = json.loads(text)
        except json.JSONDecodeError:
            if container is dict:
                raise ValueError(f"--set {key}={text!r}: expected a JSON object, e.g. '{{\"width\": 64}}'") from None
            args = typing.get_args(tp)
            elem = args[0] if args and args[0] is not Ellipsis else Any
            val = [_convert(v.strip(), elem, key) for v in text.split(",") if v.strip()]
        if container is dict and not isinstance(val, dict):
            raise ValueError(f"--set {key}={text!r}: expected a JSON object")
        return tuple(val) if container is tuple else val
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(config_cls, items: list[str]) -> dict:
    """``["lr_img=0.1", "init=noise"]`` -> ``{"lr_img": 0.1, "init": "noise"}``, typed from ``config_cls``'s fields.

    Keys may use ``-`` for ``_``. An unknown key, a malformed item or one key given twice with different
    values raises ValueError naming it."""
    if not items:
        return {}
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        raise ValueError("--set needs a method with a dataclass Config")
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in names:
            raise ValueError(
                f"--set {key}: {config_cls.__module__}.{config_cls.__qualname__} has no field {key!r}; "
                f"fields: {', '.join(names)}"
            )
        val = _convert(text.strip(), hints.get(key, Any), key)
        if key in out and out[key] != val:
            raise ValueError(f"--set {key} is given twice with different values ({out[key]!r} and {val!r})")
        out[key] = val
    return out


def iterations_field(method_cls, config_cls) -> str | None:
    """The Config field ``--iterations`` sets: ``method_cls.iterations_field``, else ``iterations``, else
    ``rounds`` (SSD-KD); None when the Config has none of them."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    for cand in (getattr(method_cls, "iterations_field", None), "iterations", "rounds"):
        if cand and cand in names:
            return cand
    return None


def check_values(cfg, fields: typing.Iterable[str] | None = None) -> None:
    """Reject values that cannot be right, before any work: a non-finite float (inf, nan) or a negative int
    in the dataclass ``cfg`` (every field, or only ``fields``). Raises ValueError naming the field."""
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return
    names = [f.name for f in dataclasses.fields(cfg)] if fields is None else list(fields)
    for name in names:
        _check_value(name, getattr(cfg, name))


def _check_value(name: str, v) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{name}={v!r} is not finite; give a finite number")
    if isinstance(v, int) and not isinstance(v, bool) and v < 0:
        raise ValueError(f"{name}={v!r} is negative; it must be >= 0")


def make_config(
    method_cls,
    dataset_name: str,
    ipc: int,
    *,
    iterations: int | None = None,
    overrides: dict | None = None,
    extra: dict | None = None,
):
    """The method's default Config for (dataset, ipc) with ``iterations``, ``extra`` and ``overrides`` applied.

    ``iterations``: the ``--iterations`` flag (sets :func:`iterations_field`). ``extra``: ``{field: value}``
    from the :data:`FIELD_FLAGS` aliases (None: not given). ``overrides``: from :func:`parse_overrides`.
    A field set by two sources with different values raises ValueError (see the module docstring); every
    value is then checked by :func:`check_values`."""
    from pydistill.methods.base import default_config

    config_cls = getattr(method_cls, "Config", None)
    cfg = default_config(config_cls, dataset_name, ipc)
    overrides = dict(overrides or {})
    flags = {}  # field -> (flag text, value)
    if iterations is not None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"--iterations must be an int >= 0, got {iterations!r}")
        field = iterations_field(method_cls, config_cls) if dataclasses.is_dataclass(config_cls) else None
        if field is None:
            raise ValueError(
                f"--iterations: method {method_cls.name!r} has no iteration-count field in its Config; use --set"
            )
        flags[field] = ("--iterations", iterations)
    names = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
    for key, val in (extra or {}).items():
        if val is None:
            continue
        if key not in names:
            raise ValueError(f"--{key} does not apply to method {method_cls.name!r} (its Config has no {key!r} field)")
        flags[key] = (f"--{key}", val)
    changes = {}
    for field, (flag, val) in flags.items():
        if field in overrides and overrides[field] != val:
            raise ValueError(
                f"{flag} {val} and --set {field}={overrides[field]!r} both set {field!r} to different "
                "values; give only one"
            )
        changes[field] = val
    changes.update(overrides)
    for name, v in changes.items():  # before the Config's own checks, which may not name the field
        _check_value(name, v)
    cfg = dataclasses.replace(cfg, **changes) if changes else cfg
    check_values(cfg)
    return cfg


def check_network(cfg, dataset) -> None:
    """When ``cfg`` names a network of :data:`pydistill.models.NETWORKS` in ``model`` with a ``model_kwargs``
    dict, build it once for ``dataset`` so that bad kwargs (``{"width": "abc"}``) fail now, naming the field,
    instead of deep inside the first iteration."""
    from pydistill.models import NETWORKS, get_network

    model, kwargs = getattr(cfg, "model", None), getattr(cfg, "model_kwargs", None)
    if not isinstance(model, str) or model not in NETWORKS or not kwargs:
        return
    if not isinstance(kwargs, dict):
        raise ValueError(f"model_kwargs must be a JSON object, got {kwargs!r}")
    try:
        get_network(model, dataset.channel, dataset.num_classes, dataset.im_size, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"model_kwargs={json.dumps(kwargs)}: cannot build network {model!r} with them ({exc})"
        ) from None
