"""Command line: ``pydistill distill|evaluate|baseline|...`` (also ``python -m pydistill``).

Global options (before or after the command): ``--deterministic`` (bit-reproducible CPU runs, see
:func:`pydistill.utils.enable_determinism`). Under ``torchrun --nproc_per_node N -m pydistill ...`` the commands
``distill``, ``evaluate``, ``baseline`` and ``experts`` split their work over the processes (see
:mod:`pydistill.distributed`); rank 0 prints and writes the files.

Exit codes: 0 success, 2 a clear one-line error (bad input, locked or unwritable ``--out``, diverged run), 130 /
143 stopped by SIGINT / SIGTERM (the line printed says what was kept and how to resume). ``--set`` and the
dedicated flags follow one precedence rule (:mod:`pydistill.config_overrides`).

Modules may contribute subcommands with ``register_cli(subparsers)``: they add a parser and call
``parser.set_defaults(func=fn)``, where ``fn(args)`` runs the command and returns an exit code (or None).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from pydistill.config_overrides import FIELD_FLAGS, make_config, parse_overrides

__all__ = [
    "main",
    "build_parser",
    "parse_overrides",
    "make_config",
    "EXTENSION_MODULES",
    "QUICK_EVAL_EPOCHS",
    "DISTRIBUTED_COMMANDS",
    "LOCKED_OUTPUTS",
    "check_ipc",
]

EXTENSION_MODULES = (
    "pydistill.methods.mtt",
    "pydistill.methods.ssdkd",
    "pydistill.diffusion.train",
    "pydistill.export",
)
# Default evaluation epochs for small datasets (a CPU run finishes in minutes); others use the published 1000/300.
QUICK_EVAL_EPOCHS = {"digits": 300}
# Commands that split their work across torchrun processes; the others refuse to run with WORLD_SIZE > 1.
DISTRIBUTED_COMMANDS = ("distill", "evaluate", "baseline", "experts")
# Extension commands whose --out (a folder or a file) is checked writable and locked (RunLock) before any work.
# `distill` locks in pydistill.runner; `evaluate`/`baseline --out` (one JSON written at the end) are checked only.
LOCKED_OUTPUTS = {"experts": "dir", "train-diffusion": "dir", "teacher": "file"}


# ------------------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------------------
def _check_eval_args(args) -> None:
    """Evaluation flags that cannot be right, rejected before any work."""
    if args.eval_epochs is not None and args.eval_epochs < 1:
        raise ValueError(f"--eval-epochs must be >= 1, got {args.eval_epochs}")
    if args.num_eval < 1:
        raise ValueError(f"--num-eval (num_eval, networks per model) must be >= 1, got {args.num_eval}")


def _eval_kwargs(args, dataset_name: str) -> dict:
    _check_eval_args(args)
    epochs = args.eval_epochs if args.eval_epochs is not None else QUICK_EVAL_EPOCHS.get(dataset_name)
    models = tuple(m.strip() for m in args.eval_models.split(",") if m.strip())
    if not models:
        raise ValueError("--eval-models must name at least one network, e.g. ConvNet,MLP")
    return {
        "models": models,
        "num_eval": args.num_eval,
        "epochs": epochs,
        "dsa": False if args.no_eval_dsa else None,
        "seed": args.seed,
        "protocol": args.protocol,
    }


def check_ipc(dataset, ipc: int, allow_repeat: bool = False) -> None:
    """Refuse ``ipc`` above the smallest class of ``dataset``'s training split (its real images would repeat,
    and a huge ``ipc`` would look like a hang), naming the class sizes; with ``allow_repeat`` warn instead."""
    import torch

    if ipc < 1:
        raise ValueError(f"--ipc must be >= 1, got {ipc}")
    counts = torch.bincount(dataset.y_train.cpu(), minlength=dataset.num_classes).tolist()
    small = {c: n for c, n in enumerate(counts) if n < ipc}
    if not small:
        return
    sizes = ", ".join(f"class {c}: {n}" for c, n in list(small.items())[:10]) + (" ..." if len(small) > 10 else "")
    text = (
        f"--ipc {ipc} is above the size of {len(small)} class(es) of {dataset.name!r} ({sizes}; smallest {min(counts)})"
    )
    if not allow_repeat:
        raise ValueError(
            f"{text}: their real images would repeat. Use --ipc <= {min(counts)}, or --allow-repeat "
            "to accept repeated images"
        )
    print(
        f"pydistill: warning: {text}; their real images are reused (repeated in a real-image initialisation, "
        "all of them taken by `random`) as --allow-repeat asks",
        file=sys.stderr,
    )


def _cmd_distill(args) -> int:
    from pydistill.config_overrides import check_network
    from pydistill.data import load_dataset
    from pydistill.methods import get_method
    from pydistill.runner import run_distillation
    from pydistill.utils import ensure_writable_dir, resolve_device

    _check_eval_args(args)
    ensure_writable_dir(args.out, "--out")
    device = resolve_device(args.device)
    cls = get_method(args.method)
    overrides = parse_overrides(getattr(cls, "Config", None), args.set)
    extra = {name: getattr(args, name) for name in FIELD_FLAGS}
    zca = args.zca
    if zca is None:  # a method whose Config has a zca field (MTT's official table) decides; else off
        import warnings

        from pydistill.methods.base import default_config

        with warnings.catch_warnings():  # make_config below warns once
            warnings.simplefilter("ignore")
            zca = bool(overrides.get("zca", getattr(default_config(cls.Config, args.dataset, args.ipc), "zca", False)))
    dataset = load_dataset(args.dataset, args.data_root, zca=zca, device=device, download=args.download)
    cfg = make_config(cls, dataset.name, args.ipc, iterations=args.iterations, overrides=overrides, extra=extra)
    # a method drawing no real images (class attribute uses_real_images = False, or init="noise") cannot repeat any
    if getattr(cls, "uses_real_images", True) and getattr(cfg, "init", "real") != "noise":
        check_ipc(dataset, args.ipc, args.allow_repeat)
    check_network(cfg, dataset)

    def make_method(seed):
        try:
            return cls(dataset, args.ipc, config=cfg, device=device, seed=seed)
        except (TypeError, RuntimeError) as exc:  # a value the Config accepted but the method cannot use
            raise ValueError(
                f"method {args.method!r} cannot start with this configuration ({exc}); check the --set values"
            ) from exc

    from pydistill.distributed import is_main
    from pydistill.loggers import make_logger

    if args.experiments < 1:
        raise ValueError(f"--experiments must be >= 1, got {args.experiments}")
    if args.experiments > 1:
        return _distill_experiments(args, make_method, dataset)
    method = make_method(args.seed)
    logger = make_logger(args.logger, args.out) if is_main() else None
    metrics = run_distillation(
        method,
        args.out,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        eval_kwargs=_eval_kwargs(args, dataset.name),
        progress=not args.no_progress,
        final_eval=not args.no_eval,
        logger=logger,
    )
    _print_accuracies(metrics["accuracies"])
    if is_main():
        print(
            f"wrote {args.out}/synthetic.safetensors, grid.png, curves.png, metrics.json "
            f"({metrics['wall_time_s']:.1f} s distillation, {metrics['eval_time_s']:.1f} s evaluation)"
        )
    return 0


def experiment_statistic(choice: str, method: str, eval_every: int | None) -> str:
    """--statistic: "auto" is MTT's best evaluated set when it evaluates periodically, else the final set."""
    if choice != "auto":
        return choice
    return "best" if method == "mtt" and eval_every else "final"


def _distill_experiments(args, make_method, dataset) -> int:
    """distill --experiments E: E runs (seeds seed..seed+E-1) in OUT/exp-k, accuracies pooled (official stat)."""
    from pydistill.experiments import run_experiments

    if args.no_eval:
        raise ValueError("--experiments pools the final evaluations; it cannot be combined with --no-eval")
    if args.logger != "none":
        raise ValueError("--logger writes one run's scalars; use it without --experiments (or per experiment)")
    statistic = experiment_statistic(args.statistic, args.method, args.eval_every)
    if statistic == "best" and not args.eval_every:
        raise ValueError("--statistic best picks each run's best periodic evaluation: it needs --eval-every N")
    result = run_experiments(
        make_method,
        args.out,
        experiments=args.experiments,
        seed=args.seed,
        statistic=statistic,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        eval_kwargs=_eval_kwargs(args, dataset.name),
        progress=not args.no_progress,
    )
    _print_accuracies(result["accuracies"])
    print(
        f"wrote {args.out}/exp-0 .. exp-{args.experiments - 1} (one run each) and {args.out}/metrics.json, "
        f"experiments.png ({next(iter(result['accuracies'].values()))['statistic']})"
    )
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
    from pydistill.experiments import experiment_seed, pool_experiments
    from pydistill.synthetic import SyntheticSet
    from pydistill.utils import atomic_write_text, ensure_writable_file, resolve_device

    _check_eval_args(args)
    if args.out is not None:
        ensure_writable_file(args.out, "--out")
    device = resolve_device(args.device)
    sets = [SyntheticSet.load(path, device=device) for path in args.synthetic]
    recorded = sets[0].meta.get("dataset")
    for path, syn in zip(args.synthetic[1:], sets[1:]):  # several sets: experiments of one setting
        for key in ("dataset", "zca"):
            if syn.meta.get(key) != sets[0].meta.get(key):
                raise ValueError(
                    f"--synthetic: {path} records {key}={syn.meta.get(key)!r}, {args.synthetic[0]} "
                    f"{sets[0].meta.get(key)!r}; the sets of one pooled evaluation must share them"
                )
    name = args.dataset or recorded
    if not name:
        raise ValueError(f"{args.synthetic[0]} does not record its dataset; pass --dataset")
    zca = args.zca if args.zca is not None else bool(sets[0].meta.get("zca", False))
    dataset = load_dataset(name, args.data_root, zca=zca, device=device, download=args.download)
    if recorded and dataset.name != recorded and not args.force:
        raise ValueError(
            f"--dataset {args.dataset!r} ({dataset.name}) differs from the dataset {recorded!r} recorded "
            f"in {args.synthetic[0]}; pass --force to evaluate on it anyway"
        )
    kwargs = _eval_kwargs(args, dataset.name)
    per_set = []
    for k, syn in enumerate(sets):  # set k: evaluation seed SEED + k, as experiment k of `distill --experiments`
        per_set.append(
            evaluate(
                syn,
                dataset,
                device=device,
                progress=not args.no_progress,
                resume_dir=_resume_dir(args),
                **{**kwargs, "seed": experiment_seed(kwargs["seed"], k)},
            )
        )
    res = per_set[0] if len(sets) == 1 else pool_experiments(per_set)
    _print_accuracies(res)
    from pydistill.distributed import is_main

    if args.out and is_main():
        atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    return 0


def _cmd_baseline(args) -> int:
    from pydistill.data import load_dataset
    from pydistill.evaluate import evaluate_baseline
    from pydistill.utils import atomic_write_text, ensure_writable_file, resolve_device

    _check_eval_args(args)
    if args.out is not None:
        ensure_writable_file(args.out, "--out")
    device = resolve_device(args.device)
    dataset = load_dataset(args.dataset, args.data_root, zca=args.zca, device=device, download=args.download)
    if args.kind == "random":
        check_ipc(dataset, args.ipc)
    res = evaluate_baseline(
        dataset,
        args.kind,
        args.ipc if args.kind == "random" else None,
        device=device,
        progress=not args.no_progress,
        resume_dir=_resume_dir(args),
        compared_with=args.compared_with,
        **_eval_kwargs(args, dataset.name),
    )
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
    p.add_argument(
        "--resume-dir",
        default=None,
        help="record each finished network here; a rerun skips them (default: OUT.progress with --out)",
    )


def _add_common(p, *, dataset_required=False):
    p.add_argument(
        "--dataset",
        default=None if not dataset_required else "digits",
        help="digits (default for distill), mnist, fashionmnist, svhn, cifar10, cifar100, imagefolder:PATH",
    )
    p.add_argument(
        "--data-root", default=None, help="dataset folder (default: $PYDISTILL_DATA, else ~/.cache/pydistill/datasets)"
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download MNIST/FashionMNIST/CIFAR/SVHN into the data folder (needs a network)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-models", default="ConvNet", help="comma-separated networks to evaluate with")
    p.add_argument("--num-eval", type=int, default=5, help="networks trained per model (mean +- std)")
    p.add_argument(
        "--eval-epochs",
        type=int,
        default=None,
        help="training epochs per evaluation network (default: 300 for digits, else 1000 with DSA)",
    )
    p.add_argument("--no-eval-dsa", action="store_true", help="evaluate without DSA augmentation")
    p.add_argument(
        "--protocol",
        choices=("paper", "uniform"),
        default="paper",
        help="paper: each method's published evaluation (DC: DC augmentation; DSA/DM/MTT: DSA); "
        "uniform: DSA + 1000 epochs for every set",
    )
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
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="outer iterations (default: the method's); alias of --set iterations=N (rounds for ssdkd)",
    )
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N iterations (default: at the end)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument(
        "--experiments",
        type=int,
        default=1,
        help="independent distillations (seeds SEED..SEED+E-1, folders OUT/exp-k) whose networks' accuracies "
        "are pooled (the official statistic: 5 experiments x --num-eval 20 networks for DC/DSA/DM)",
    )
    p.add_argument(
        "--statistic",
        choices=("auto", "final", "best"),
        default="auto",
        help="with --experiments: each run's final set, or its best evaluated one (MTT's; needs --eval-every); "
        "auto: best for mtt with --eval-every, else final",
    )
    p.add_argument(
        "--zca",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ZCA-whiten the dataset (default: the method's official setting, MTT's table; else off)",
    )
    p.add_argument(
        "--logger",
        choices=("none", "tensorboard"),
        default="none",
        help="tensorboard: write the training scalars and evaluation accuracy to OUT/tensorboard",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the method's Config (repeatable); a field also given by a dedicated "
        "flag (--iterations, --buffers, ...) must get the same value, else it is an error",
    )
    for name, text in FIELD_FLAGS.items():  # aliases of --set FIELD=VALUE
        p.add_argument(f"--{name}", default=None, help=text)
    p.add_argument(
        "--allow-repeat",
        action="store_true",
        help="accept --ipc above a class's size (its real images repeat); refused otherwise",
    )
    _add_common(p, dataset_required=True)
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("evaluate", help="evaluate a synthetic set (train fresh networks on it, test on real data)")
    p.add_argument(
        "--synthetic",
        required=True,
        nargs="+",
        help="synthetic.safetensors file; several: sets of independent experiments, their networks pooled "
        "(mean +- std over sets x --num-eval networks, the official statistic)",
    )
    p.add_argument("--out", default=None, help="write the accuracies to this JSON file")
    p.add_argument(
        "--zca",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ZCA-whiten the dataset (default: as recorded in the file)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="evaluate on --dataset even when it differs from the dataset recorded in the file",
    )
    _add_resume(p)
    _add_common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("baseline", help="accuracy of a random real subset (--ipc) or of the full training set")
    p.add_argument("--kind", choices=("random", "full"), default="random")
    p.add_argument(
        "--compared-with",
        default=None,
        choices=("dc", "dsa", "dm", "mtt"),
        help="--protocol paper: evaluate as this method's paper does (default: DSA/DM/MTT's protocol)",
    )
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
    for sp in sub.choices.values():  # every command takes --deterministic
        if not any("--deterministic" in a.option_strings for a in sp._actions):
            sp.add_argument("--deterministic", action="store_true", help=_DET_HELP)
    return parser, skipped


_DET_HELP = (
    "bit-reproducible run: deterministic algorithms, one CPU thread (PYDISTILL_NUM_THREADS to change), "
    "cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG; some GPU kernels stay nondeterministic (see README)"
)


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
            raise ValueError(
                f"{args.command!r} does not split its work across processes; run it without torchrun "
                f"(WORLD_SIZE={pdist.env_world_size()}). Multi-process commands: "
                f"{', '.join(DISTRIBUTED_COMMANDS)}"
            )
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


_RESUME_HINT = (
    "what was finished is kept (checkpoints and per-network/per-expert records are written atomically); "
    "rerun the same command to resume"
)


def _output_lock(args):
    """For the commands of LOCKED_OUTPUTS: check ``--out`` writable, then hold its RunLock (rank 0 only)."""
    import contextlib

    from pydistill import distributed as pdist
    from pydistill.utils import RunLock, ensure_writable_dir, ensure_writable_file

    kind = LOCKED_OUTPUTS.get(args.command)
    if kind is None or not hasattr(args, "out") or not pdist.is_main():
        return contextlib.nullcontext()
    if kind == "dir":
        ensure_writable_dir(args.out, "--out")
    else:
        ensure_writable_file(args.out, "--out")
    return RunLock(args.out, is_dir=kind == "dir", command=f"pydistill {args.command}")


def main(argv: list[str] | None = None) -> int:
    parser, skipped = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        if skipped:
            print(
                "\nunavailable subcommand modules: " + "; ".join(f"{m} ({r})" for m, r in skipped.items()),
                file=sys.stderr,
            )
        return 2
    from pydistill.utils import StopSignal, stop_signals_raise

    started = False
    try:
        with stop_signals_raise():  # SIGTERM like SIGINT; loops with checkpoints defer both (utils.deferred_stop)
            started = _setup_run(args)
            with _output_lock(args):
                rc = args.func(args)
    except StopSignal as exc:
        print(
            f"pydistill {args.command}: {exc.message}" + ("" if "resume" in exc.message else f"; {_RESUME_HINT}"),
            file=sys.stderr,
        )
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pydistill {args.command}: interrupted (SIGINT); {_RESUME_HINT}", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as exc:
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
