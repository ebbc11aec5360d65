"""Run a distillation method end to end: iterations, logging, atomic checkpoints, exact resume, outputs.

Outputs in ``out_dir``: ``checkpoint.pt`` (rewritten every ``checkpoint_every`` iterations),
``synthetic.safetensors``, ``grid.png`` (one row per class), ``curves.png``, ``metrics.json``.

Reliability: the folder is checked writable and locked (:class:`pydistill.utils.RunLock`) before any work;
SIGINT/SIGTERM finish the current iteration, checkpoint and raise :class:`pydistill.utils.StopSignal`; a
non-finite loss or state stops the run with :class:`DivergedError` before anything non-finite is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch

from pydistill import distributed as pdist
from pydistill.utils import (
    CorruptCheckpointError,
    RunLock,
    atomic_write_text,
    deferred_stop,
    ensure_writable_dir,
    get_rng_state,
    load_checked,
    nonfinite_names,
    peak_memory_mb,
    raise_if_stop_requested,
    save_checked,
    set_rng_state,
    stop_requested,
    to_jsonable,
)

__all__ = ["run_distillation", "CHECKPOINT", "run_signature", "DivergedError"]


class DivergedError(ValueError):
    """The run produced a non-finite loss, image or learning rate; the last finite checkpoint is kept."""


def _flatten(obj, prefix: str = "", out: dict | None = None) -> dict:
    """``{dotted path: leaf}`` of a nested state (dicts, lists, tuples)."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}{i}.", out)
    else:
        out[prefix[:-1]] = obj
    return out


def _divergence_hint(method) -> str:
    cfg = method.config_dict() if hasattr(method, "config_dict") else {}
    lrs = {
        k: v
        for k, v in cfg.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and (k.startswith("lr") or "_lr" in k or k.endswith("lr"))
    }
    text = ", ".join(f"{k}={v:g}" for k, v in lrs.items())
    return f"a learning rate too high for this setting ({text})" if text else "a learning rate too high"


CHECKPOINT = "checkpoint.pt"
_FORMAT = "pydistill-checkpoint-v2"  # v2: written by utils.save_checked (with a SHA-256 of its contents)


def run_signature(method) -> dict:
    """What must match for a checkpoint to be resumed: method, dataset, ipc, seed, config."""
    ds = method.dataset
    return to_jsonable(
        {
            "method": getattr(method, "name", type(method).__name__),
            "class": f"{type(method).__module__}.{type(method).__qualname__}",
            "dataset": ds.name,
            "zca": ds.zca is not None,
            "num_train": int(ds.x_train.shape[0]),
            "ipc": int(method.ipc),
            "seed": int(getattr(method, "seed", 0)),
            "config": method.config_dict() if hasattr(method, "config_dict") else repr(getattr(method, "config", None)),
        }
    )


def _diff(a, b, prefix=""):
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
    elif a != b:
        out.append(f"{prefix[:-1] or 'value'}: checkpoint {a!r} vs now {b!r}")
    return out


def _extends(method, ckpt: dict, sig: dict, n_iter: int) -> bool:
    """True when the checkpoint is this run with fewer ``config.iterations`` (at most ``n_iter`` done) and the
    method's iterations do not depend on the total (``method.extendable``, e.g. DC/DSA/DM/MTT/DD): a finished
    or interrupted run then continues to the new total instead of starting over."""
    if not getattr(method, "extendable", False) or int(ckpt.get("iteration", n_iter + 1)) > n_iter:
        return False
    old = dict(ckpt["signature"])
    new = dict(sig)
    if not (isinstance(old.get("config"), dict) and isinstance(new.get("config"), dict)):
        return False
    old["config"] = {k: v for k, v in old["config"].items() if k != "iterations"}
    new["config"] = {k: v for k, v in new["config"].items() if k != "iterations"}
    return old == new


def _as_synthetic(method, result):
    from pydistill.synthetic import SyntheticSet

    if isinstance(result, SyntheticSet):
        return result
    if isinstance(result, (tuple, list)) and len(result) in (2, 3):
        return SyntheticSet(result[0].detach(), result[1].detach(), result[2] if len(result) == 3 else None, {})
    raise TypeError(
        f"{type(method).__name__}.synthetic_set() must return a SyntheticSet (or images, labels), got "
        f"{type(result).__name__}"
    )


def _fmt(scalars: dict) -> dict:
    return {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in scalars.items()}


def run_distillation(
    method,
    out_dir: str | os.PathLike,
    *,
    checkpoint_every: int = 50,
    eval_every: int | None = None,
    eval_kwargs: dict | None = None,
    progress: bool = True,
    final_eval: bool = True,
    logger=None,
) -> dict:
    """Run ``method`` for ``method.num_iterations`` iterations, resuming from ``out_dir/checkpoint.pt``.

    checkpoint_every: iterations between checkpoints (the last iteration is always checkpointed).
    eval_every: evaluate the current set every this many iterations (None/0: only at the end).
    eval_kwargs: keyword arguments of :func:`pydistill.evaluate.evaluate` (models, num_eval, epochs, dsa, ...).
    A checkpoint whose method/dataset/ipc/seed/config differ raises ValueError (except a larger
    ``config.iterations`` for a method with ``extendable = True``: the run continues to the new total); a
    truncated or corrupt one raises ``pydistill.utils.CorruptCheckpointError`` (never loaded). Returns the metrics dict.
    logger: an object with ``log(entry)`` and ``close()`` receiving each new log entry (see :mod:`pydistill.loggers`).

    Under ``torch.distributed`` (see :mod:`pydistill.distributed`) every rank calls this: the method shards its
    work, rank 0's state is broadcast at the start, and only rank 0 writes files.
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if eval_every is not None and (isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0):
        raise ValueError(f"eval_every must be None or an int >= 0, got {eval_every!r}")
    if pdist.is_initialized() and not getattr(method, "supports_distributed", False):
        raise ValueError(
            f"method {getattr(method, 'name', type(method).__name__)!r} does not split its work across "
            f"processes (world size {pdist.get_world_size()}); run it in one process (without torchrun)"
        )
    eval_kwargs = dict(eval_kwargs or {})
    out = ensure_writable_dir(out_dir, "out_dir") if pdist.is_main() else Path(out_dir)
    lock = RunLock(out, command="run_distillation") if pdist.is_main() else None
    if lock is not None:
        lock.acquire()  # a second run on this folder refuses, naming this process
    try:
        return _run_locked(
            method,
            out,
            checkpoint_every=checkpoint_every,
            eval_every=eval_every,
            eval_kwargs=eval_kwargs,
            progress=progress,
            final_eval=final_eval,
            logger=logger,
        )
    finally:
        if lock is not None:
            lock.release()


def _run_locked(method, out: Path, *, checkpoint_every, eval_every, eval_kwargs, progress, final_eval, logger) -> dict:
    from pydistill.evaluate import evaluate
    from pydistill.plotting import save_curves, save_grid

    ckpt_path = out / CHECKPOINT
    sig = run_signature(method)
    n_iter = int(method.num_iterations)
    device = torch.device(getattr(method, "device", "cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    start, log, elapsed = 0, [], 0.0
    resumed_from = None
    if ckpt_path.exists():
        try:
            ckpt = load_checked(ckpt_path, map_location="cpu")  # our own file: SHA-256 verified before unpickling
        except CorruptCheckpointError:
            raise
        except Exception as exc:
            raise RuntimeError(f"cannot read checkpoint {ckpt_path} ({exc}); delete it to start over") from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
            raise ValueError(f"{ckpt_path} is not a pydistill checkpoint; delete it or choose another out_dir")
        if ckpt["signature"] != sig and not _extends(method, ckpt, sig, n_iter):
            diffs = "\n  ".join(_diff(ckpt["signature"], sig))
            raise ValueError(
                f"{ckpt_path} belongs to a different run; mismatches:\n  {diffs}\n"
                "Use another out_dir, or delete the checkpoint to start over."
            )
        method.load_state_dict(ckpt["method"])
        set_rng_state(ckpt["rng"])
        start, log, elapsed = int(ckpt["iteration"]), list(ckpt["log"]), float(ckpt["wall_time_s"])
        resumed_from = start
    if pdist.is_initialized():  # every rank starts from rank 0's state (same seeds give the same, this enforces it)
        state = pdist.broadcast_object(method.state_dict() if pdist.is_main() else None)
        if not pdist.is_main():
            method.load_state_dict(state)

    saved = {"iteration": start if resumed_from is not None else None}

    def save_ckpt(iteration):
        if not pdist.is_main():
            return
        saved["iteration"] = iteration
        save_checked(
            {
                "format": _FORMAT,
                "signature": sig,
                "iteration": iteration,
                "method": method.state_dict(),
                "rng": get_rng_state(),
                "log": log,
                "wall_time_s": elapsed,
            },
            ckpt_path,
        )

    def eval_now(progress_flag):
        syn = _as_synthetic(method, method.synthetic_set())
        return evaluate(syn, method.dataset, **{"progress": progress_flag, **eval_kwargs})

    def best_so_far(entries):
        """The log entry of the best periodic evaluation so far (None before the first)."""
        evals = [e for e in entries if "eval_acc" in e]
        return max(evals, key=lambda e: e["eval_acc"]) if evals else None

    def save_best(iteration):
        if pdist.is_main():
            syn_best = _as_synthetic(method, method.synthetic_set())
            syn_best.meta = {
                **syn_best.meta,
                "method": sig["method"],
                "dataset": method.dataset.name,
                "ipc": int(method.ipc),
                "iteration": int(iteration),
                "seed": sig["seed"],
                "zca": method.dataset.zca is not None,
            }
            syn_best.save(out / "synthetic_best.safetensors")

    bar = None
    if progress and n_iter > start and pdist.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=n_iter, initial=start, desc=f"{sig['method']} {sig['dataset']} ipc={sig['ipc']}")

    def check_finite(it, scalars):
        bad = [
            f"loss/scalar {k!r}"
            for k in nonfinite_names(
                {k: (float(v) if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in scalars.items()}
            )
        ]
        bad += [f"state {p!r}" for p in nonfinite_names(_flatten(method.state_dict()))]
        if bad:
            kept = (
                f"The last finite checkpoint (iteration {saved['iteration']}) is kept in {ckpt_path}"
                if saved["iteration"] is not None
                else "No checkpoint had been written yet"
            )
            raise DivergedError(
                f"the run diverged at iteration {it}: non-finite {', '.join(bad[:4])}"
                f"{' ...' if len(bad) > 4 else ''}; likely cause: {_divergence_hint(method)}. "
                f"{kept}; no synthetic set was written"
            )

    def stop_message(iteration):
        return (
            f"stopped after iteration {iteration}/{n_iter}; checkpoint saved to {ckpt_path}. Rerun the same "
            "command to resume"
        )

    t0 = time.perf_counter()
    single = pdist.get_world_size() == 1  # (ranks would have to agree on when to stop: not deferred there)
    try:
        # SIGINT/SIGTERM: finish this iteration, checkpoint it, then StopSignal (130/143 from the CLI)
        with deferred_stop() if single else contextlib.nullcontext():
            for it in range(start, n_iter):
                scalars = method.step(it) or {}
                check_finite(it, scalars)  # before anything of this iteration is logged or saved
                entry = {"iteration": it}
                for k, v in scalars.items():
                    entry[k] = float(v) if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool) else v
                log.append(entry)
                if logger is not None:
                    logger.log(entry)
                if eval_every and (it + 1) % eval_every == 0 and it + 1 < n_iter:
                    elapsed += time.perf_counter() - t0
                    res = eval_now(False)
                    first = next(iter(res.values()))
                    if best_so_far(log) is None or first["mean"] > best_so_far(log)["eval_acc"]:
                        save_best(it + 1)  # MTT's protocol reports the best evaluated set: keep it (synthetic_best)
                    log.append(
                        {
                            "iteration": it + 1,
                            "eval_acc": first["mean"],
                            "eval_std": first["std"],
                            "eval_accs": first["accs"],  # per network: experiments pool them (experiments.py)
                            "eval_model": next(iter(res)),
                        }
                    )
                    if logger is not None:
                        logger.log(log[-1])
                    t0 = time.perf_counter()
                    if bar is not None:
                        bar.write(
                            f"iteration {it + 1}: test accuracy {100 * first['mean']:.2f} +- {100 * first['std']:.2f}"
                        )
                if bar is not None:
                    bar.set_postfix(_fmt(scalars))
                    bar.update(1)
                stopping = single and stop_requested() is not None
                if (it + 1) % checkpoint_every == 0 or it + 1 == n_iter or stopping:
                    elapsed += time.perf_counter() - t0
                    save_ckpt(it + 1)
                    t0 = time.perf_counter()
                if stopping:
                    raise_if_stop_requested(None, stop_message(it + 1))
            elapsed += time.perf_counter() - t0
    finally:
        if bar is not None:
            bar.close()
    if n_iter == 0 and not ckpt_path.exists():
        save_ckpt(0)

    # ---- outputs (rank 0 writes)
    syn = _as_synthetic(method, method.synthetic_set())
    bad = nonfinite_names({"images": syn.images, "labels": syn.labels, "lr": syn.lr})
    if bad:
        raise DivergedError(
            f"the synthetic set holds non-finite {', '.join(bad)}; likely cause: "
            f"{_divergence_hint(method)}. It was not written"
        )
    main = pdist.is_main()
    ds = method.dataset
    meta = dict(syn.meta)
    meta.setdefault("method", sig["method"])
    meta.update(
        dataset=ds.name,
        ipc=int(method.ipc),
        num_classes=int(ds.num_classes),
        iterations=n_iter,
        seed=sig["seed"],
        zca=ds.zca is not None,
        config=sig["config"],
    )
    syn.meta = meta
    if main:
        syn.save(out / "synthetic.safetensors")
        save_grid(
            out / "grid.png", ds.denormalize(syn.images.detach().float().to(ds.device)), syn.labels, ds.num_classes
        )

    accuracies, eval_time = {}, 0.0
    if final_eval and len(syn):
        t1 = time.perf_counter()
        eval_kwargs.setdefault("resume_dir", out / "eval_progress")  # a crash during the evaluation resumes too
        accuracies = eval_now(progress and main)
        eval_time = time.perf_counter() - t1
        first_model = next(iter(accuracies))
        best = best_so_far(log)
        if best is not None and accuracies[first_model]["mean"] > best["eval_acc"]:
            save_best(n_iter)
        log.append(
            {
                "iteration": n_iter,
                "eval_acc": accuracies[first_model]["mean"],
                "eval_std": accuracies[first_model]["std"],
                "eval_accs": accuracies[first_model]["accs"],
                "eval_model": first_model,
            }
        )
        if logger is not None:
            logger.log(log[-1])
    if logger is not None:
        logger.close()
    if main:
        save_curves(out / "curves.png", log, title=f"{sig['method']} on {ds.name}, ipc {method.ipc}")

    save_outputs = getattr(method, "save_outputs", None)  # method-specific artefacts (SSD-KD: student.pt)
    if main and callable(save_outputs):
        save_outputs(out)

    primary = next(iter(accuracies.values()), None)
    last_scalars = next((e for e in reversed(log) if "eval_acc" not in e), {})
    metrics = {
        "method": sig["method"],
        "dataset": ds.name,
        "ipc": int(method.ipc),
        "iterations": n_iter,
        "seed": sig["seed"],
        "device": str(device),
        "test_acc_mean": None if primary is None else primary["mean"],
        "test_acc_std": None if primary is None else primary["std"],
        "accuracies": accuracies,
        # best of the evaluations made every eval_every iterations and the final one (MTT's reported statistic);
        # its set is synthetic_best.safetensors when it is not the final one
        "best_eval": best_so_far(log),
        "eval": to_jsonable({k: v for k, v in eval_kwargs.items() if k not in ("progress", "resume_dir")}),
        "wall_time_s": elapsed,
        "eval_time_s": eval_time,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "resumed_from_iteration": resumed_from,
        "final_scalars": {k: v for k, v in last_scalars.items() if k != "iteration"},
        "num_images": len(syn),
        "learned_lr": None if syn.lr is None else to_jsonable(syn.lr),
        "config": sig["config"],
        "torch": torch.__version__,
    }
    extra = getattr(method, "extra_metrics", None)
    if callable(extra):
        metrics["extra"] = to_jsonable(extra())
    if pdist.is_initialized():
        metrics["world_size"] = pdist.get_world_size()
    if main:
        atomic_write_text(out / "metrics.json", json.dumps(to_jsonable(metrics), indent=1, sort_keys=False) + "\n")
    pdist.barrier()  # the files exist for every rank once this returns
    return metrics
