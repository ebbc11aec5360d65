"""Test accuracy of DD, DC, DSA, DM and MTT at IPC 1 and 10 against a random real subset and the published
numbers; every method runs through ``pydistill.runner.run_distillation`` (resumable: rerunning continues).

    python benchmarks/accuracy.py --dataset digits --device cpu            # minutes on a CPU
    python benchmarks/accuracy.py --dataset mnist --device cuda --set dc.iterations=1000

Writes ``benchmarks/results/accuracy-<dataset>-<device>-<date>.{md,json}`` and keeps each run's outputs
(synthetic set, grid, curves, metrics, MTT experts) under ``--work`` (default: a temporary folder).
Evaluation: every set under each of ``--protocols`` (``pydistill.evaluate`` protocol "paper": the method's own,
"uniform": DSA for every set), ``--num-eval`` fresh networks of the distillation architecture, ``--eval-epochs``
epochs (default: 300 on digits, else the protocol's 1000 with augmentation / 300 without); DD sets use their
learned schedule (``pydistill.methods.dd.evaluate_dd``). The statistic is the official one: ``--experiments``
distillations per cell (default 5, seeds SEED..SEED+E-1; MTT: each run's best evaluated set with
``--mtt-eval-every``) x ``--num-eval`` networks (default 20), all accuracies pooled
(``pydistill.experiments.pool_experiments``); pass fewer for a CPU budget. Accuracies are in percent.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")

# Published ConvNet accuracies (IPC -> %), from the papers (see REFERENCE.md); None where not published.
PUBLISHED = {
    "mnist": {
        "random": {1: 64.9, 10: 95.1},
        "dc": {1: 91.7, 10: 97.4},
        "dsa": {1: 88.7, 10: 97.8},
        "dd": {1: 93.8},
        "dm": {},
        "mtt": {},
    },
    "cifar10": {
        "random": {1: 14.4, 10: 26.0},
        "dc": {1: 28.3, 10: 44.9},
        "dsa": {1: 28.8, 10: 52.1},
        "dm": {1: 26.0, 10: 48.9},
        "mtt": {1: 46.3, 10: 65.3},
        "dd": {},
    },
}
METHODS = ("dd", "dc", "dsa", "dm", "mtt")


def _parse_sets(items):
    """--set method.key=value -> {method: {key: value}} (values parsed as JSON when possible)."""
    out = {}
    for item in items:
        key, _, val = item.partition("=")
        method, _, field = key.partition(".")
        if not field or not _:
            raise ValueError(f"--set expects method.key=value, got {item!r}")
        try:
            val = json.loads(val)
        except json.JSONDecodeError:
            pass
        out.setdefault(method, {})[field] = val
    return out


def _config(name, dataset, ipc, overrides, buffers):
    from pydistill.methods import get_method

    cls = get_method(name)
    cfg = cls.Config.for_dataset(dataset.name, ipc)
    changes = dict(overrides.get(name, {}))
    if name == "mtt":
        changes.setdefault("buffers", buffers)
    return cls, dataclasses.replace(cfg, **changes)


def _eval_model(cfg, name, buffers):
    """(model name, model kwargs) that the distilled set is evaluated with: the distillation architecture."""
    if name == "mtt":
        from pydistill.methods.mtt import ExpertBuffer

        buf = ExpertBuffer(buffers)
        return cfg.model or buf.model, cfg.model_kwargs if cfg.model_kwargs is not None else buf.model_kwargs
    return cfg.model, dict(cfg.model_kwargs)


# The published runs' budgets (REFERENCE.md / official scripts): distillation iterations, evaluation networks.
PUBLISHED_BUDGET = {
    "dc": "1000 its; 5 exp x 20 nets, 300 ep (MNIST 1000, DC aug)",
    "dsa": "1000 its; 5 exp x 20 nets, 1000 ep DSA",
    "dm": "20000 its; 5 exp x 20 nets, 1000 ep DSA",
    "mtt": "5000 its, 100 experts x 50 ep; best of evals every 100 its, 5 nets, 1000 ep DSA",
    "dd": "400 epochs of real data; learned schedule",
    "random": "5 exp x 20 nets, the compared method's protocol",
}


def _run_extra(method, metrics):
    return {
        "iterations": method.num_iterations,
        "distill_s_per_iter": metrics["wall_time_s"] / max(1, method.num_iterations),
        "final_loss": metrics["final_scalars"].get("loss"),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ipc", default="1,10")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--experiments",
        type=int,
        default=5,
        help="independent distillations per cell (seeds SEED..SEED+E-1), their networks pooled: the official "
        "statistic is 5 experiments x 20 networks (DC/DSA/DM main.py); the random subset gets E x N draws",
    )
    p.add_argument("--num-eval", type=int, default=20, help="evaluation networks per experiment (official 20)")
    p.add_argument("--eval-epochs", type=int, default=None)
    p.add_argument("--experts", type=int, default=5, help="MTT: number of expert trajectories")
    p.add_argument("--expert-epochs", type=int, default=15, help="MTT: epochs per expert")
    p.add_argument(
        "--expert-lr",
        type=float,
        default=None,
        help="MTT: expert SGD lr (default 0.05 on digits, where 0.01 barely trains; else 0.01)",
    )
    p.add_argument("--expert-batch", type=int, default=None, help="MTT: expert batch (default 64 on digits, else 256)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override a method's Config field, e.g. dc.iterations=50 (repeatable)",
    )
    p.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "pydistill-accuracy-runs"),
        help="where each run keeps its outputs (outside the repository by default)",
    )
    p.add_argument(
        "--model-kwargs",
        default=None,
        metavar="JSON",
        help="ConvNet keyword arguments for every method, the experts and the random baseline, e.g. "
        "'{\"width\": 32}' for a CPU budget on MNIST (default: models.default_model_kwargs)",
    )
    p.add_argument(
        "--skip-random",
        action="store_true",
        help="no random-subset rows (when another run of the same table already has them)",
    )
    p.add_argument("--tag", default="", help="suffix of the results file name (e.g. ipc10 for a split run)")
    p.add_argument(
        "--protocols",
        default="paper,uniform",
        help="evaluation protocols of pydistill.evaluate, each set is evaluated under each (comma list)",
    )
    p.add_argument(
        "--mtt-eval-every",
        type=int,
        default=0,
        help="MTT: evaluate every N iterations and report the best set (its paper's statistic; 0: final)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    args = p.parse_args(argv)
    if args.experiments < 1 or args.num_eval < 1:
        p.error(f"--experiments and --num-eval must be >= 1, got {args.experiments} and {args.num_eval}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from pydistill.data import load_dataset
    from pydistill.evaluate import evaluate, evaluate_baseline, resolve_protocol
    from pydistill.experiments import experiment_seed, pool_experiments
    from pydistill.methods.dd import TRAIN_SCHEDULE, evaluate_dd, evaluate_dd_random
    from pydistill.runner import run_distillation

    overrides = _parse_sets(args.set)
    net_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
    if net_kwargs is not None:
        for name in ("dc", "dsa", "dm", "mtt"):
            overrides.setdefault(name, {}).setdefault("model_kwargs", net_kwargs)
    ipcs = [int(v) for v in args.ipc.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ds = load_dataset(args.dataset, args.data_root, device=args.device)
    eval_epochs = args.eval_epochs or (300 if ds.name == "digits" else None)
    work = os.path.join(args.work, f"{ds.name}-{args.device}")
    buffers = os.path.join(work, "experts")
    rows = []

    protocols = [v.strip() for v in args.protocols.split(",") if v.strip()]

    def write(rows, partial=False):
        date = datetime.date.today().isoformat()
        stem = os.path.join(RESULTS, f"accuracy-{ds.name}-{args.device}-{date}" + (f"-{args.tag}" if args.tag else ""))
        os.makedirs(RESULTS, exist_ok=True)
        env = {
            "date": date,
            "torch": torch.__version__,
            "device": args.device,
            "dataset": ds.name,
            "experiments": args.experiments,
            "num_eval": args.num_eval,
            "eval_epochs": eval_epochs,
            "seed": args.seed,
            "mtt_experts": args.experts if "mtt" in methods else None,
            "model_kwargs": net_kwargs,
            "overrides": overrides,
            "protocols": protocols,
            "mtt_eval_every": args.mtt_eval_every,
        }
        with open(stem + ".json", "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)
        lines = [
            f"# Accuracy on {ds.name} ({args.device}, {date})",
            "",
            "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()),
            "",
            "| method | IPC | protocol | eval (aug, epochs) | eval model | test acc % (mean +- std) | published % "
            "| iterations | s/iter | published budget |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            pub = "-" if r["published"] is None else f"{r['published']:.1f}"
            its = r.get("iterations", "-")
            spi = f"{r['distill_s_per_iter']:.3f}" if r.get("distill_s_per_iter") is not None else "-"
            aug = r.get("strategy") or r.get("augmentation") or "-"
            ev = f"{aug}, {r['epochs']}" if r.get("epochs") else aug
            exps = r.get("experiments") or 1
            nets = f"{exps} exp x {r['num_eval'] // exps} nets" if exps > 1 else f"{r['num_eval']} nets"
            lines.append(
                f"| {r['method']} | {r['ipc']} | {r.get('protocol')} | {ev} | {r['model']} | "
                f"{r['acc_mean']:.2f} +- {r['acc_std']:.2f} ({nets}) | {pub} | {its} | {spi} | "
                f"{r.get('published_budget') or '-'} |"
            )
        lines += [
            "",
            "random (vs dc / vs dsa): a random real subset (a new draw per network) trained under the paper "
            "protocol of DC, resp. of DSA/DM/MTT; under uniform, DSA for every set. "
            "dd-random: DD's own baseline, random real images trained with DD's schedule (same network, "
            "initialisation and number of steps; best constant lr of a grid, picked on the test set).",
        ]
        if ds.name not in PUBLISHED:
            lines += [
                "",
                f"No published numbers exist for {ds.name}; for scale, MNIST (ConvNet): random 64.9/95.1, "
                "DC 91.7/97.4, DSA 88.7/97.8 at IPC 1/10; DD fixed init 93.8 (10 images).",
            ]
        if partial:
            lines += ["", "(partial: the run is still going or was stopped; rerun the same command to continue)"]
        with open(stem + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        return stem, lines

    def record(method, ipc, res, seconds, extra=None):
        ((model, r),) = res.items() if len(res) == 1 else [next(iter(res.items()))]
        key = method.split(" ")[0].replace("dd-random", "dd")
        row = {
            "method": method,
            "ipc": ipc,
            "model": model,
            "acc_mean": 100 * r["mean"],
            "acc_std": 100 * r["std"],
            "num_eval": len(r["accs"]),
            "experiments": r.get("experiments", 1),
            "statistic": r.get("statistic"),
            "published": PUBLISHED.get(ds.name, {}).get(method.split(" ")[0], {}).get(ipc),
            "seconds": seconds,
            "protocol": r.get("protocol"),
            "augmentation": r.get("augmentation"),
            "strategy": r.get("strategy"),
            "epochs": r.get("epochs"),
            "published_budget": PUBLISHED_BUDGET.get(key),
            **(extra or {}),
        }
        rows.append(row)
        write(rows, partial=True)  # a killed run keeps the rows it finished (reruns resume the distillations)
        print(
            f"{method:7s} ipc {ipc:3d} [{row['protocol']}]: {row['acc_mean']:.2f} +- {row['acc_std']:.2f}  "
            f"({seconds:.0f}s)",
            flush=True,
        )

    if "mtt" in methods:
        from pydistill.methods.mtt import train_experts

        t0 = time.time()
        mcfg = _config("mtt", ds, ipcs[0], overrides, buffers)[1]
        small = ds.name == "digits"
        train_experts(
            ds,
            buffers,
            num_experts=args.experts,
            epochs=args.expert_epochs,
            lr=args.expert_lr or (0.05 if small else 0.01),
            batch_size=args.expert_batch or (64 if small else 256),
            dsa=mcfg.dsa,
            model=mcfg.model or "ConvNet",
            model_kwargs=mcfg.model_kwargs,
            device=args.device,
            seed=args.seed,
        )
        print(f"experts ready in {buffers} ({time.time() - t0:.0f}s)", flush=True)

    for ipc in ipcs:
        # random real subset, evaluated with the same protocol (ConvNet, as DC/DSA/DM/MTT)
        if not args.skip_random:  # under "paper": once per compared protocol (DC's, and DSA/DM/MTT's)
            seen = {}  # the same training spec under two protocols (DSA's "paper" and "uniform") is run once
            for protocol in protocols:
                for compared in ("dc", "dsa") if protocol == "paper" else (None,):
                    t0 = time.time()
                    label = "random" + (f" (vs {compared})" if compared else "")
                    spec = resolve_protocol(protocol, compared, ds.name, "ConvNet", epochs=eval_epochs)
                    key = json.dumps({k: v for k, v in spec.items() if k != "protocol"}, sort_keys=True)
                    if key in seen:
                        res = {m: {**r, "protocol": protocol} for m, r in seen[key].items()}
                        record(label, ipc, res, 0.0)
                        continue
                    res = seen[key] = evaluate_baseline(
                        ds,
                        "random",
                        ipc,
                        models=("ConvNet",),
                        num_eval=args.num_eval * args.experiments,  # a new draw per network
                        epochs=eval_epochs,
                        device=args.device,
                        seed=args.seed,
                        progress=False,
                        model_kwargs=net_kwargs,
                        protocol=protocol,
                        compared_with=compared,
                    )
                    record(label, ipc, res, time.time() - t0)
        for name in methods:
            cls, cfg = _config(name, ds, ipc, overrides, buffers)
            model, kw = _eval_model(cfg, name, buffers)
            every = args.mtt_eval_every if name == "mtt" else 0
            pooled_rows: dict[str, list] = {}  # row label -> one {model: result} per experiment
            extras: dict[str, dict] = {}
            t_distill = 0.0
            for e in range(args.experiments):  # the official statistic: experiments x networks, pooled
                seed = experiment_seed(args.seed, e)
                method = cls(ds, ipc, config=cfg, device=args.device, seed=seed)
                t0 = time.time()
                out = os.path.join(work, f"{name}-ipc{ipc}" + (f"-exp{e}" if e else ""))
                metrics = run_distillation(
                    method,
                    out,
                    checkpoint_every=max(1, method.num_iterations // 4),
                    eval_every=every or None,
                    progress=False,
                    final_eval=bool(every),
                    eval_kwargs={
                        "num_eval": args.num_eval,
                        "epochs": eval_epochs,
                        "models": (model,),
                        "model_kwargs": kw,
                        "seed": seed,
                    },
                )
                t_distill += time.time() - t0
                extra = _run_extra(method, metrics)
                syn = method.synthetic_set()
                if syn.meta.get("train_schedule") == TRAIN_SCHEDULE:
                    # DD's images only work with its learned schedule: its baseline is random real images trained
                    # with the same schedule (same network, init and number of steps, best constant lr)
                    base = evaluate_dd_random(syn, ds, num_models=args.num_eval, device=args.device, seed=seed)
                    pooled_rows.setdefault("dd-random", []).append(base)
                    extras.setdefault("dd-random", {}).setdefault("baseline_lr", []).append(
                        next(iter(base.values()))["lr"]
                    )
                    res = evaluate_dd(syn, ds, num_models=args.num_eval, device=args.device, seed=seed)
                    res = {m: {**r, "protocol": "dd schedule", "augmentation": "none"} for m, r in res.items()}
                    pooled_rows.setdefault(name, []).append(res)
                    extras[name] = extra
                    continue
                best = metrics.get("best_eval") if every else None
                if best is not None and best["iteration"] < method.num_iterations:  # MTT: the best evaluated set
                    from pydistill.synthetic import SyntheticSet

                    syn = SyntheticSet.load(os.path.join(out, "synthetic_best.safetensors"), device=args.device)
                for protocol in protocols:
                    res = evaluate(
                        syn,
                        ds,
                        models=(model,),
                        model_kwargs=kw,
                        num_eval=args.num_eval,
                        epochs=eval_epochs,
                        device=args.device,
                        seed=seed,
                        progress=False,
                        protocol=protocol,
                    )
                    pooled_rows.setdefault(f"{name}|{protocol}", []).append(res)
                    label = f"{name}|{protocol}"
                    bests = extras.get(label, {}).get("best_iteration", [])
                    extras[label] = {**extra, **({"best_iteration": bests + [best["iteration"]]} if best else {})}
            for label, per_exp in pooled_rows.items():
                row_name = label.split("|")[0]
                statistic = "best" if every and row_name == name else "final"  # MTT: each run's best evaluated set
                pooled = pool_experiments(per_exp, statistic=statistic)
                record(row_name, ipc, pooled, t_distill / args.experiments, extras.get(label))

    stem, lines = write(rows)
    print("\n".join(lines))
    print("recorded", stem + ".md")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
