"""Command line: ``pydistill distill|evaluate|baseline|...`` (also ``python -m pydistill``).

Global options (before or after the command): ``--deterministic`` (bit-reproducible CPU runs, see
:func:`pydistill.utils.enable_determinism`). Under ``torchrun --nproc_per_node N -m pydistill ...`` the commands
``distill``, ``evaluate``, ``baseline`` and ``experts`` split their work over the processes (see
:mod:`pydistill.distributed`); rank 0 prints and writes the files.

Modules may contribute subcommands with ``register_cli(subparsers)``: they add a parser and call
``parser.set_defaults(func=fn)``, where ``fn(args)`` runs the command and returns an exit code (or None).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import types
import typing
from typing import Any

__all__ = ["main", "build_parser", "parse_overrides", "make_config", "EXTENSION_MODULES", "QUICK_EVAL_EPOCHS",
           "DISTRIBUTED_COMMANDS"]

EXTENSION_MODULES = ("pydistill.methods.mtt", "pydistill.methods.ssdkd", "pydistill.diffusion.train")
# Default evaluation epochs for small datasets (a CPU run finishes in minutes); others use the published 1000/300.
QUICK_EVAL_EPOCHS = {"digits": 300}
# Commands that split their work across torchrun processes; the others refuse to run with WORLD_SIZE > 1.
DISTRIBUTED_COMMANDS = ("distill", "evaluate", "baseline", "experts")
_NONE = ("none", "null")
_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("0", "false", "no", "off", "n", "f")


# ------------------------------------------------------------------------------------------------------------
# --set key=value parsing
# ------------------------------------------------------------------------------------------------------------
def _convert(text: str, tp, key: str):
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
            f = float(text)  # accept 1e3
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
    """``["lr_img=0.1", "init=noise"]`` -> ``{"lr_img": 0.1, "init": "noise"}``, typed from ``config_cls``'s fields."""
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
            raise ValueError(f"--set {key}: {config_cls.__module__}.{config_cls.__qualname__} has no field {key!r}; "
                             f"fields: {', '.join(names)}")
        out[key] = _convert(text.strip(), hints.get(key, Any), key)
    return out


def _iterations_field(cls, config_cls) -> str | None:
    names = {f.name for f in dataclasses.fields(config_cls)}
    for cand in (getattr(cls, "iterations_field", None), "iterations", "rounds"):
        if cand and cand in names:
            return cand
    return None


def make_config(method_cls, dataset_name: str, ipc: int, *, iterations: int | None = None,
                overrides: dict | None = None, extra: dict | None = None):
    """The method's default Config for (dataset, ipc) with ``iterations``, ``extra`` and ``overrides`` applied."""
    from pydistill.methods.base import default_config

    config_cls = getattr(method_cls, "Config", None)
    cfg = default_config(config_cls, dataset_name, ipc)
    changes = {}
    if iterations is not None:
        if iterations < 0:
            raise ValueError(f"--iterations must be >= 0, got {iterations}")
        field = _iterations_field(method_cls, config_cls)
        if field is None:
            raise ValueError(f"--iterations: {config_cls.__qualname__} of method {method_cls.name!r} has no "
                             "iteration-count field; use --set")
        changes[field] = iterations
    names = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
    for key, val in (extra or {}).items():
        if val is None:
            continue
        if key not in names:
            raise ValueError(f"--{key} does not apply to method {method_cls.name!r} (its Config has no {key!r} field)")
        changes[key] = val
    changes.update(overrides or {})
    return dataclasses.replace(cfg, **changes) if changes else cfg


# ------------------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------------------
def _eval_kwargs(args, dataset_name: str) -> dict:
    epochs = args.eval_epochs if args.eval_epochs is not None else QUICK_EVAL_EPOCHS.get(dataset_name)
    models = tuple(m.strip() for m in args.eval_models.split(",") if m.strip())
    if not models:
        raise ValueError("--eval-models must name at least one network, e.g. ConvNet,MLP")
    return {"models": models, "num_eval": args.num_eval, "epochs": epochs, "dsa": False if args.no_eval_dsa else None,
            "seed": args.seed, "protocol": args.protocol}


def _cmd_distill(args) -> int:
    from pydistill.data import load_dataset
    from pydistill.methods import get_method
    from pydistill.runner import run_distillation
    from pydistill.utils import resolve_device

    device = resolve_device(args.device)
    cls = get_method(args.method)
    overrides = parse_overrides(getattr(cls, "Config", None), args.set)
    extra = {"buffers": args.buffers, "teacher": args.teacher, "model": args.model}
    zca = args.zca
    if zca is None:  # a method whose Config has a zca field (MTT's official table) decides; else off
        import warnings

        from pydistill.methods.base import default_config

        with warnings.catch_warnings():  # make_config below warns once
            warnings.simplefilter("ignore")
            zca = bool(overrides.get("zca", getattr(default_config(cls.Config, args.dataset, args.ipc), "zca", False)))
    dataset = load_dataset(args.dataset, args.data_root, zca=zca, device=device)
    cfg = make_config(cls, dataset.name, args.ipc, iterations=args.iterations, overrides=overrides, extra=extra)
    method = cls(dataset, args.ipc, config=cfg, device=device, seed=args.seed)
    metrics = run_distillation(method, args.out, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                               eval_kwargs=_eval_kwargs(args, dataset.name), progress=not args.no_progress,
                               final_eval=not args.no_eval)
    _print_accuracies(metrics["accuracies"])
    from pydistill.distributed import is_main

    if is_main():
            print(f"wrote {args.out}/synthetic.safetensors, grid.png, curves.png, metrics.json "
              f"({metrics['wall_time_s']:.1f} s distillation, {metrics['eval_time_s']:.1f} s evaluation)")
    return 0


def _print_accuracies(acc: dict) -> None:
    from pydistill.distributed import is_main

    if not is_main():
        return
    for model, r in acc.items():
        print(f"{model}: test accuracy {100 * r['mean']:.2f} +- {100 * r['std']:.2f} % over {len(r['accs'])} models")


def _cmd_evaluate(args) -> int:
    from pydistill.data import load_dataset
    from pydistill.evaluate import evaluate
    from pydistill.synthetic import SyntheticSet
    from pydistill.utils import atomic_write_text, resolve_device

    device = resolve_device(args.device)
    syn = SyntheticSet.load(args.synthetic, device=device)
    name = args.dataset or syn.meta.get("dataset")
    if not name:
        raise ValueError(f"{args.synthetic} does not record its dataset; pass --dataset")
    zca = args.zca if args.zca is not None else bool(syn.meta.get("zca", False))
    dataset = load_dataset(name, args.data_root, zca=zca, device=device)
    res = evaluate(syn, dataset, device=device, progress=not args.no_progress, resume_dir=_resume_dir(args),
                   **_eval_kwargs(args, dataset.name))
    _print_accuracies(res)
    from pydistill.distributed import is_main

    if args.out and is_main():
        atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    return 0


def _cmd_baseline(args) -> int:
    from pydistill.data import load_dataset
    from pydistill.evaluate import evaluate_baseline
    from pydistill.utils import atomic_write_text, resolve_device

    device = resolve_device(args.device)
    dataset = load_dataset(args.dataset, args.data_root, zca=args.zca, device=device)
    res = evaluate_baseline(dataset, args.kind, args.ipc if args.kind == "random" else None, device=device,
                            progress=not args.no_progress, resume_dir=_resume_dir(args),
                            compared_with=args.compared_with,
                            **_eval_kwargs(args, dataset.name))
    _print_accuracies(res)
    from pydistill.distributed import is_main

    if args.out and is_main():
        atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    return 0


def _resume_dir(args):
    """Where finished evaluation networks are recorded: --resume-dir, else OUT.progress when --out is given."""
    if getattr(args, "resume_dir", None):
        return args.resume_dir
    return f"{args.out}.progress" if getattr(args, "out", None) else None


def _add_resume(p):
    p.add_argument("--resume-dir", default=None,
                   help="record each finished network here; a rerun skips them (default: OUT.progress with --out)")


def _add_common(p, *, dataset_required=False):
    p.add_argument("--dataset", default=None if not dataset_required else "digits",
                   help="digits (default for distill), mnist, fashionmnist, svhn, cifar10, cifar100, imagefolder:PATH")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $PYDISTILL_DATA or ../shared/datasets)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-models", default="ConvNet", help="comma-separated networks to evaluate with")
    p.add_argument("--num-eval", type=int, default=5, help="networks trained per model (mean +- std)")
    p.add_argument("--eval-epochs", type=int, default=None,
                   help="training epochs per evaluation network (default: 300 for digits, else 1000 with DSA)")
    p.add_argument("--no-eval-dsa", action="store_true", help="evaluate without DSA augmentation")
    p.add_argument("--protocol", choices=("paper", "uniform"), default="paper",
                   help="paper: each method's published evaluation (DC: DC augmentation; DSA/DM/MTT: DSA); "
                        "uniform: DSA + 1000 epochs for every set")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser, and ``{module: reason}`` for extension modules that could not be imported."""
    from pydistill.methods import METHODS

    parser = argparse.ArgumentParser(prog="pydistill", description="Dataset distillation on fused kernels.")
    parser.add_argument("--deterministic", dest="deterministic_global", action="store_true", help=_DET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("distill", help="distill a dataset with a method (resumes from OUT/checkpoint.pt)")
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--ipc", type=int, default=10, help="images per class")
    p.add_argument("--out", required=True, help="run folder (checkpoint, synthetic set, figures, metrics)")
    p.add_argument("--iterations", type=int, default=None, help="outer iterations (default: the method's)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N iterations (default: at the end)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None,
                   help="ZCA-whiten the dataset (default: the method's official setting, MTT's table; else off)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the method's Config (repeatable)")
    p.add_argument("--buffers", default=None, help="mtt: expert trajectories (from `pydistill experts`)")
    p.add_argument("--teacher", default=None, help="ssdkd: teacher checkpoint (from `pydistill teacher`)")
    p.add_argument("--model", default=None, help="mgd3: diffusion model (from `pydistill train-diffusion`)")
    _add_common(p, dataset_required=True)
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("evaluate", help="evaluate a synthetic set (train fresh networks on it, test on real data)")
    p.add_argument("--synthetic", required=True, help="synthetic.safetensors file")
    p.add_argument("--out", default=None, help="write the accuracies to this JSON file")
    p.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None,
                   help="ZCA-whiten the dataset (default: as recorded in the file)")
    _add_resume(p)
    _add_common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("baseline", help="accuracy of a random real subset (--ipc) or of the full training set")
    p.add_argument("--kind", choices=("random", "full"), default="random")
    p.add_argument("--compared-with", default=None, choices=("dc", "dsa", "dm", "mtt"),
                   help="--protocol paper: evaluate as this method's paper does (default: DSA/DM/MTT's protocol)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--out", default=None, help="write the accuracies to this JSON file")
    p.add_argument("--zca", action="store_true")
    _add_resume(p)
    _add_common(p, dataset_required=True)
    p.set_defaults(func=_cmd_baseline)

    skipped = {}
    for mod in EXTENSION_MODULES:
        try:
            module = importlib.import_module(mod)
        except ImportError as exc:  # a module not written / optional dependency missing: no subcommand
            skipped[mod] = str(exc)
            continue
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(sub)
    for name, sp in sub.choices.items():  # every command takes --deterministic
        if not any("--deterministic" in a.option_strings for a in sp._actions):
            sp.add_argument("--deterministic", action="store_true", help=_DET_HELP)
    return parser, skipped


_DET_HELP = ("bit-reproducible run: deterministic algorithms, one CPU thread (PYDISTILL_NUM_THREADS to change), "
             "cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG; some GPU kernels stay nondeterministic (see README)")


def _setup_run(args) -> bool:
    """Determinism, global seeds and torch.distributed for a command; True when it started the process group."""
    from pydistill import distributed as pdist
    from pydistill.utils import enable_determinism, seed_everything

    if getattr(args, "deterministic", False) or getattr(args, "deterministic_global", False):
        text = os.environ.get("PYDISTILL_NUM_THREADS", "1")
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"PYDISTILL_NUM_THREADS must be a positive integer, got {text!r}") from None
        enable_determinism(threads)
    started = False
    if pdist.env_world_size() > 1:
        if args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(f"{args.command!r} does not split its work across processes; run it without torchrun "
                             f"(WORLD_SIZE={pdist.env_world_size()}). Multi-process commands: "
                             f"{', '.join(DISTRIBUTED_COMMANDS)}")
        device = getattr(args, "device", "auto")
        started = not pdist.is_initialized()
        pdist.init(device=device)
        if pdist.is_initialized():
            import torch

            if str(device) in ("auto", "cuda") and torch.cuda.is_available():
                args.device = f"cuda:{pdist.get_local_rank()}"
            if not pdist.is_main() and hasattr(args, "no_progress"):
                args.no_progress = True
    if isinstance(getattr(args, "seed", None), int):
        seed_everything(args.seed)
    return started


def main(argv: list[str] | None = None) -> int:
    parser, skipped = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        if skipped:
            print("\nunavailable subcommand modules: " + "; ".join(f"{m} ({r})" for m, r in skipped.items()),
                  file=sys.stderr)
        return 2
    started = False
    try:
        started = _setup_run(args)
        rc = args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        if os.environ.get("PYDISTILL_DEBUG") == "1":
            raise
        print(f"pydistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if started:
            from pydistill import distributed as pdist

            pdist.destroy()
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
