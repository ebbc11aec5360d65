"""Several experiments of one method: the official statistic of DC, DSA and DM (and MTT's over its runs).

The official scripts repeat the whole distillation ``num_exp`` times (5) and train ``num_eval`` networks (20) on
each final set; the reported figure is the mean +- std of all ``num_exp x num_eval`` accuracies pooled
(DatasetCondensation ``main.py`` / ``main_DM.py``: ``accs_all_exps[key] += accs``, then ``np.mean`` /
``np.std``). MTT reports each run's best evaluated set instead of its final one (``statistic="best"``).

Experiment ``k`` is an ordinary run in ``out/exp-k`` with seed ``seed + k`` and evaluation seed (the
evaluation networks' initialisations) ``eval seed + k``; each checkpoints and resumes on its own. The pooled
result goes to ``out/metrics.json`` and ``out/experiments.png`` (accuracies per experiment). Accuracies are
fractions in [0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pydistill.runner import run_distillation
from pydistill.utils import RunLock, atomic_write_text, ensure_writable_dir, to_jsonable

__all__ = ["STATISTICS", "experiment_accuracies", "experiment_seed", "pool_experiments", "run_experiments"]

# "final": each experiment's final set (DC/DSA/DM); "best": each experiment's best evaluated set (MTT)
STATISTICS = ("final", "best")
# the fields of an evaluation result that describe its protocol (the same for every experiment)
_SPEC_FIELDS = ("protocol", "augmentation", "strategy", "epochs", "lr_schedule", "official_statistic")


def experiment_seed(seed: int, k: int) -> int:
    """The seed of experiment ``k`` (0-based) of a series started at ``seed``: its method seed and, from the
    series' evaluation seed, its evaluation networks' seed (``distill --experiments``, ``evaluate --synthetic A B``,
    ``benchmarks/experiments/accuracy.py``)."""
    return int(seed) + int(k)


def experiment_accuracies(metrics: dict, statistic: str = "final") -> dict[str, dict]:
    """One experiment's ``{model: result}`` from its ``metrics.json`` content (``run_distillation``'s return).

    ``statistic="best"``: the networks of the best periodic evaluation (``metrics["best_eval"]``) when it beat
    the final set, for the model evaluated periodically; otherwise the final evaluation."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    final = metrics.get("accuracies") or {}
    if not final:
        raise ValueError(
            f"experiment in {metrics.get('out', 'its folder')} has no final evaluation (run without --no-eval)"
        )
    best = metrics.get("best_eval")
    if statistic == "best" and best is not None and best.get("iteration") != metrics.get("iterations"):
        if "eval_accs" not in best:
            raise ValueError("best_eval has no per-network accuracies (eval_accs); rerun its evaluation")
        model = best["eval_model"]
        return {model: {**final.get(model, {}), "accs": list(best["eval_accs"]), "iteration": best["iteration"]}}
    return final


def pool_experiments(per_experiment: list[dict[str, dict]], statistic: str = "final") -> dict[str, dict]:
    """Pool ``[{model: {"accs", ...}}, ...]`` (one dict per experiment) into ``{model: result}``.

    Each result: "mean", "std" (population std, as ``np.std`` officially) over all experiments' networks,
    "accs" (all of them, experiment by experiment), "per_experiment" ([{"mean", "std", "num_eval"}]),
    "experiments", "statistic" and the protocol fields of the first experiment."""
    if not per_experiment:
        raise ValueError("pool_experiments needs at least one experiment")
    models = list(per_experiment[0])
    for k, res in enumerate(per_experiment):
        if list(res) != models:
            raise ValueError(f"experiment {k} evaluated models {list(res)}, experiment 0 evaluated {models}")
    pooled = {}
    for model in models:
        parts = [list(res[model]["accs"]) for res in per_experiment]
        if any(not p for p in parts):
            raise ValueError(f"an experiment has no accuracies for model {model!r}")
        accs = [float(a) for p in parts for a in p]
        sizes = sorted({len(p) for p in parts})
        nets = str(sizes[0]) if len(sizes) == 1 else "/".join(map(str, sizes))
        which = "the best evaluated set of each" if statistic == "best" else "the final set of each"
        pooled[model] = {
            **{f: per_experiment[0][model][f] for f in _SPEC_FIELDS if f in per_experiment[0][model]},
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs)),
            "accs": accs,
            "per_experiment": [{"mean": float(np.mean(p)), "std": float(np.std(p)), "num_eval": len(p)} for p in parts],
            "experiments": len(parts),
            "statistic": f"mean +- std over {len(parts)} experiments x {nets} networks ({which})",
        }
    return pooled


def run_experiments(
    make_method: Callable[[int], object],
    out_dir: str | Path,
    *,
    experiments: int,
    seed: int = 0,
    statistic: str = "final",
    **run_kwargs,
) -> dict:
    """Run ``experiments`` distillations, ``make_method(experiment_seed(seed, k))`` into ``out_dir/exp-k``; pool them.

    ``run_kwargs`` go to :func:`pydistill.runner.run_distillation` (a final evaluation is required). Rerunning
    resumes every unfinished experiment; finished ones are re-read from their evaluation records. Returns the
    pooled metrics (also written atomically to ``out_dir/metrics.json``): "accuracies" ({model: pooled result},
    see :func:`pool_experiments`), "test_acc_mean", "test_acc_std", "experiments" ([{"out", "seed", ...}])."""
    if not isinstance(experiments, int) or isinstance(experiments, bool) or experiments < 1:
        raise ValueError(f"experiments must be an int >= 1, got {experiments!r}")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if run_kwargs.get("final_eval") is False:
        raise ValueError("run_experiments pools the final evaluations: final_eval must not be False")
    out = Path(out_dir)
    ensure_writable_dir(out, "out_dir")
    per_exp, runs = [], []
    with RunLock(out, command="pydistill experiments"):
        for k in range(experiments):
            method = make_method(experiment_seed(seed, k))
            kwargs = dict(run_kwargs)
            if "eval_kwargs" in kwargs:  # fresh evaluation networks per experiment too (seed + k)
                ev = dict(kwargs["eval_kwargs"] or {})
                kwargs["eval_kwargs"] = {**ev, "seed": experiment_seed(ev.get("seed", seed), k)}
            metrics = run_distillation(method, out / f"exp-{k}", **kwargs)
            res = experiment_accuracies(metrics, statistic)
            per_exp.append(res)
            first = next(iter(res.values()))
            runs.append(
                {
                    "out": f"exp-{k}",
                    "seed": experiment_seed(seed, k),
                    "mean": float(np.mean(first["accs"])),
                    "iteration": first.get("iteration", metrics["iterations"]),
                    "wall_time_s": metrics["wall_time_s"],
                    "eval_time_s": metrics["eval_time_s"],
                }
            )
        pooled = pool_experiments(per_exp, statistic)
        primary = next(iter(pooled.values()))
        result = {
            "method": metrics["method"],
            "dataset": metrics["dataset"],
            "ipc": metrics["ipc"],
            "iterations": metrics["iterations"],
            "statistic": statistic,
            "test_acc_mean": primary["mean"],
            "test_acc_std": primary["std"],
            "accuracies": pooled,
            "experiments": runs,
            "eval": metrics["eval"],
            "config": metrics["config"],
            "torch": metrics["torch"],
        }
        atomic_write_text(out / "metrics.json", json.dumps(to_jsonable(result), indent=1) + "\n")
        from pydistill.plotting import save_experiments

        model = next(iter(pooled))
        save_experiments(
            out / "experiments.png",
            [res[model]["accs"] for res in per_exp],
            title=f"{result['method']} on {result['dataset']}, ipc {result['ipc']}: {model}",
        )
    return result
