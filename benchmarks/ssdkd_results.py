"""SSD-KD vs the Fast-DFKD-style baseline vs KD on random real images (accuracy, samples, wall time).

    python benchmarks/ssdkd_results.py                      # digits on the CPU (a few minutes)
    python benchmarks/ssdkd_results.py --dataset mnist --rounds 300 --device cuda

Steps: train (or reuse) a teacher; run SSD-KD (phi + prioritized replay) and the baseline (``use_phi=False,
use_priority=False``: uniform replay, phi = 1) for the same rounds and seeds; train the same student
architecture with the same KD loss / optimizer / number of steps on ``n`` random real training images for
``n`` = the buffer size and ``n`` = the number of synthesized images (capped at the training-set size).
Writes ``benchmarks/results/ssdkd-<dataset>-<device>-<date>.{md,json}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pydistill.data import load_dataset  # noqa: E402
from pydistill.evaluate import test_accuracy  # noqa: E402
from pydistill.kd import kd_loss  # noqa: E402
from pydistill.methods.ssdkd import SSDKD, Config, _build_network, train_teacher  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

PRESETS = {
    # dataset: teacher arch, teacher kwargs, teacher epochs, teacher lr, teacher batch
    "digits": ("ConvNetBN", {"width": 64}, 30, 0.05, 64),
    "mnist": ("ConvNetBN", {"width": 64}, 3, 0.05, 128),
    "cifar10": ("ResNet34", {}, 200, 0.1, 128),
}


def kd_on_real(ds, cfg: Config, n_real: int, steps: int, seed: int, device) -> tuple[float, float]:
    """Student trained with the SSD-KD student loop (KD at cfg.temperature, SGD + cosine, same batch size and
    step count) on ``n_real`` random real training images labelled by the teacher. Returns (accuracy, seconds)."""
    from pydistill.methods.ssdkd import load_teacher

    t0 = time.perf_counter()
    teacher, _ = load_teacher(cfg.teacher, device)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(ds.x_train.shape[0], generator=g)[:n_real].to(device)
    x = ds.x_train[idx]
    with torch.no_grad():
        t_logits = teacher(x)
    student = _build_network(cfg.student, ds, seed + 1, **dict(cfg.student_kwargs)).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=cfg.lr_student, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    student.train()
    for s in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = 0.5 * cfg.lr_student * (1 + math.cos(math.pi * s / steps))
        b = torch.randint(0, n_real, (cfg.batch_size,), generator=g).to(device)
        loss = kd_loss(student(x[b]), t_logits[b], cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return test_accuracy(student, ds), time.perf_counter() - t0


def run_variant(ds, cfg: Config, seed: int, device) -> dict:
    m = SSDKD(ds, 1, config=cfg, device=device, seed=seed)
    curve = []
    t0 = time.perf_counter()
    for it in range(cfg.rounds):
        log = m.step(it)
        if "student_acc" in log:
            curve.append((log["synthesized"], log["student_acc"]))
    wall = time.perf_counter() - t0
    acc = m.student_accuracy()
    if not curve or curve[-1][0] != m.synthesized:
        curve.append((m.synthesized, acc))
    return dict(accuracy=acc, synthesized=m.synthesized, student_steps=m.student_steps, wall_s=wall, curve=curve,
                teacher_accuracy=m.teacher_accuracy())


def _variant_job(job) -> dict:
    """Process-pool entry: ``(dataset name, device, cfg, seed)`` -> :func:`run_variant` result (1 thread)."""
    name, device, cfg, seed = job
    torch.set_num_threads(1)
    dev = torch.device(device)
    return run_variant(load_dataset(name, device=dev), cfg, seed, dev)


def samples_to_reach(curve, target):
    for n, acc in curve:
        if acc >= target:
            return n
    return None


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="digits", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=None, help="override Config.rounds")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "pydistill_ssdkd_bench"))
    ap.add_argument("--set", action="append", default=[], help="Config override key=value (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="SSD-KD runs in parallel processes (CPU; 1 thread each)")
    ap.add_argument("--targets", default="0.5,0.6,0.7",
                    help="comma-separated test accuracies (fractions) for the images-to-accuracy columns")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    dev = torch.device(args.device)
    ds = load_dataset(args.dataset, device=dev)

    arch, kw, epochs, lr, bs = PRESETS[args.dataset]
    os.makedirs(args.work, exist_ok=True)
    tpath = os.path.join(args.work, f"teacher-{args.dataset}-{arch}.pt")
    t0 = time.perf_counter()
    tmeta = train_teacher(ds, tpath, model=arch, model_kwargs=kw, epochs=epochs, lr=lr, batch_size=bs, verbose=False)
    teacher_s = time.perf_counter() - t0

    base_cfg = Config.for_dataset(args.dataset)
    base_cfg.teacher = tpath
    base_cfg.eval_every = args.eval_every
    if args.rounds:
        base_cfg.rounds = args.rounds
    for item in args.set:
        k, v = item.split("=", 1)
        cur = getattr(base_cfg, k)
        setattr(base_cfg, k, type(cur)(v) if not isinstance(cur, bool) else v.lower() in ("1", "true", "yes"))

    variants = {
        "SSD-KD (phi + priority replay)": dataclasses.replace(base_cfg),
        "baseline (use_phi=False, use_priority=False)": dataclasses.replace(base_cfg, use_phi=False,
                                                                            use_priority=False),
        "phi only (use_priority=False)": dataclasses.replace(base_cfg, use_priority=False),
        "priority only (use_phi=False)": dataclasses.replace(base_cfg, use_phi=False),
        "SSD-KD, importance weights beta 0.4 -> 1, weight_norm=mean": dataclasses.replace(
            base_cfg, beta=0.4, beta_final=1.0, weight_norm="mean"),
        "SSD-KD, previous defaults (beta 0.4 -> 1, weight_norm=buffer)": dataclasses.replace(
            base_cfg, beta=0.4, beta_final=1.0, weight_norm="buffer"),
    }
    rows, curves = [], {}
    seeds = list(range(args.seeds))
    synthesized = None
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        jobs = [(args.dataset, args.device, cfg, s) for cfg in variants.values() for s in seeds]
        with ProcessPoolExecutor(args.jobs) as pool:
            flat = list(pool.map(_variant_job, jobs))
        results = {name: flat[i * len(seeds):(i + 1) * len(seeds)] for i, name in enumerate(variants)}
    else:
        results = {name: [run_variant(ds, cfg, s, dev) for s in seeds] for name, cfg in variants.items()}
    for name, cfg in variants.items():
        runs = results[name]
        synthesized = runs[0]["synthesized"]
        accs = [r["accuracy"] for r in runs]
        rows.append(dict(variant=name, acc_mean=statistics.mean(accs), acc_std=statistics.pstdev(accs), accs=accs,
                         synthesized=synthesized, student_steps=runs[0]["student_steps"],
                         wall_s=statistics.mean(r["wall_s"] for r in runs)))
        curves[name] = [r["curve"] for r in runs]
        print(f"{name}: acc {rows[-1]['acc_mean']:.4f} +- {rows[-1]['acc_std']:.4f} "
              f"({synthesized} synthesized, {rows[-1]['wall_s']:.1f}s)", flush=True)

    steps = base_cfg.rounds * base_cfg.kd_steps
    buf = base_cfg.buffer_size or math.ceil(base_cfg.buffer_fraction * ds.x_train.shape[0])
    for label, n in (("KD on random real images, n = buffer size", buf),
                     ("KD on random real images, n = synthesized count", min(synthesized, ds.x_train.shape[0]))):
        res = [kd_on_real(ds, base_cfg, n, steps, s, dev) for s in seeds]
        accs = [r[0] for r in res]
        rows.append(dict(variant=f"{label} ({n})", acc_mean=statistics.mean(accs), acc_std=statistics.pstdev(accs),
                         accs=accs, synthesized=0, real_images=n, student_steps=steps,
                         wall_s=statistics.mean(r[1] for r in res)))
        print(f"{rows[-1]['variant']}: acc {rows[-1]['acc_mean']:.4f}", flush=True)

    teacher_acc = tmeta["test_accuracy"]
    targets = [float(t) for t in args.targets.split(",")]
    for r in rows:
        if r["variant"] in curves:
            for tgt in targets:
                per_seed = [samples_to_reach(c, tgt) for c in curves[r["variant"]]]
                r[f"samples_to_{tgt}"] = per_seed

    env = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, python=platform.python_version(),
               device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(), threads=torch.get_num_threads())
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, f"ssdkd-{args.dataset}-{dev.type}-{env['date']}")
    record = dict(environment=env, dataset=args.dataset, teacher=dict(model=arch, kwargs=kw, epochs=epochs,
                  test_accuracy=teacher_acc, train_s=teacher_s), config=dataclasses.asdict(base_cfg), seeds=seeds,
                  rows=rows, curves=curves)
    with open(stem + ".json", "w") as f:
        json.dump(record, f, indent=1, default=str)
    lines = [f"# SSD-KD on {args.dataset} ({env['device']}, {env['date']})", "",
             "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), "",
             f"Teacher: {arch} {kw}, {epochs} epochs, test accuracy {teacher_acc:.4f}. "
             f"Student: {base_cfg.student}. Rounds {base_cfg.rounds} x (g_steps {base_cfg.g_steps}, "
             f"kd_steps {base_cfg.kd_steps}), synthesis batch {base_cfg.synthesis_batch}, buffer {buf}, "
             f"seeds {seeds}. Accuracy on the test set ({ds.x_test.shape[0]} images).", "",
             "| variant | student acc (mean +- std) | synthesized images | student steps | wall s / run | "
             + " | ".join(f"images to {t:.0%}" for t in targets) + " |",
             "|---|---|---|---|---|" + "---|" * len(targets)]
    for r in rows:
        reach = [r.get(f"samples_to_{t}") for t in targets]
        fmt = lambda v: "-" if v is None else ("/".join("never" if x is None else str(x) for x in v))  # noqa: E731
        lines.append(f"| {r['variant']} | {r['acc_mean']:.4f} +- {r['acc_std']:.4f} | {r['synthesized']} | "
                     f"{r['student_steps']} | {r['wall_s']:.1f} | " + " | ".join(fmt(x) for x in reach) + " |")
    lines += ["", "Images-to-accuracy columns: synthesized images when the student (evaluated every "
              f"{args.eval_every} rounds) first reaches that accuracy, one value per seed."]
    if args.jobs > 1:
        lines += ["", f"SSD-KD rows ran {args.jobs} at a time (1 thread each): their wall times are not comparable "
                  "with the KD-on-real rows."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return stem + ".md"


if __name__ == "__main__":
    main()
