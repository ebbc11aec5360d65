"""SSD-KD vs the Fast-DFKD-style baseline vs KD on random real images (accuracy, samples, wall time).

    python benchmarks/ssdkd_results.py                      # digits on the CPU (a few minutes)
    python benchmarks/ssdkd_results.py --dataset mnist --rounds 300 --device cuda
    OMP_NUM_THREADS=1 python benchmarks/ssdkd_results.py --seeds 2 --jobs 2 --long-multipliers 2,4,8

Steps: train (or reuse) a teacher; run SSD-KD (phi + prioritized replay), the baseline (``use_phi=False,
use_priority=False``: uniform replay, phi = 1) and the ablations for the same rounds and seeds; train the same
student architecture with the same KD loss / optimizer / number of steps on ``n`` random real training images
for ``n`` = the buffer size and ``n`` = the number of synthesized images (capped at the training-set size).

``--long-multipliers M1,M2,...`` also runs the ``--long-variants`` (default SSD-KD and the baseline) at ``M x``
the synthesized images and reports the sample efficiency. ``--scale rounds`` (default): ``M x rounds`` rounds, so
the student steps grow with the images too (the student's cosine learning rate spans each whole run);
``--scale batch``: ``M x synthesis_batch`` images per round at the same rounds and student steps, so that only
the number of synthesized images differs between budgets. Reported: for each target accuracy (``--long-targets`` plus,
automatically, SSD-KD's mean final accuracy at ``1 x rounds``) the synthesized images each variant needs, read
two ways, and the ratio baseline / SSD-KD (the paper claims 2-10x):

* *earliest*: per seed, the fewest synthesized images after which any run of that variant (any budget),
  evaluated every ``--eval-every`` rounds, reached the target;
* *budget*: the smallest budget whose final accuracy (mean over seeds) reaches the target, log-interpolated
  between neighbouring budgets.

Writes ``benchmarks/results/ssdkd-<dataset>-<device>-<date>[-<tag>].{md,json,png}`` (the PNG: student test
accuracy vs synthesized images, log-x, when matplotlib is installed and there are curves).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pydistill.config_overrides import make_config, parse_overrides  # noqa: E402
from pydistill.data import load_dataset  # noqa: E402
from pydistill.evaluate import test_accuracy  # noqa: E402
from pydistill.methods.ssdkd import SSDKD, Config, train_teacher  # noqa: E402
from pydistill.methods.ssdkd.losses import kd_loss  # noqa: E402
from pydistill.methods.ssdkd.teacher import _im_size, augment, default_augment_args  # noqa: E402
from pydistill.models import seeded_network  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")

PRESETS = {
    # dataset: teacher arch, teacher kwargs, teacher epochs, teacher lr, teacher batch
    "digits": ("ConvNetBN", {"width": 64}, 30, 0.05, 64),
    "mnist": ("ConvNetBN", {"width": 64}, 3, 0.05, 128),
    "cifar10": ("ResNet34", {}, 200, 0.1, 128),
}

# key: (table label, Config overrides)
VARIANTS = {
    "ssdkd": ("SSD-KD (phi + priority replay)", {}),
    "baseline": ("baseline (use_phi=False, use_priority=False)", dict(use_phi=False, use_priority=False)),
    "phi_only": ("phi only (use_priority=False)", dict(use_priority=False)),
    "priority_only": ("priority only (use_phi=False)", dict(use_phi=False)),
    "beta0_mean": (
        "SSD-KD, our earlier replay weights (beta 0, weight_norm=mean)",
        dict(beta=0.0, beta_final=0.0, weight_norm="mean"),
    ),
}


def kd_on_real(ds, cfg: Config, n_real: int, steps: int, seed: int, device) -> tuple[float, float]:
    """Student trained with SSD-KD's student loop (uniform draws, the same augmentation with the teacher on the
    augmented batch, KD at cfg.temperature, SGD with the per-round cosine lr, same batch size and step count) on
    ``n_real`` random real training images. Returns (accuracy, seconds)."""
    from pydistill.methods.ssdkd import load_teacher

    t0 = time.perf_counter()
    teacher, _ = load_teacher(cfg.teacher, device)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(ds.x_train.shape[0], generator=g)[:n_real].to(device)
    x = ds.x_train[idx]
    aug = default_augment_args(ds)
    student = seeded_network(
        cfg.student, ds.channel, ds.num_classes, _im_size(ds), seed + 1, device=device, **dict(cfg.student_kwargs)
    )
    opt = torch.optim.SGD(student.parameters(), lr=cfg.lr_student, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    student.train()
    n_rounds = max(1, steps // cfg.kd_steps)
    for s in range(steps):
        j = min(s // cfg.kd_steps, n_rounds - 1)
        for grp in opt.param_groups:
            grp["lr"] = cfg.lr_student_min + 0.5 * (cfg.lr_student - cfg.lr_student_min) * (
                1 + math.cos(math.pi * j / n_rounds)
            )
        b = torch.randint(0, n_real, (cfg.batch_size,), generator=g).to(device)
        xb = augment(x[b], g, **aug) if cfg.augment else x[b]
        with torch.no_grad():
            tb = teacher(xb)
        loss = kd_loss(student(xb), tb, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return test_accuracy(student, ds), time.perf_counter() - t0


def run_variant(ds, cfg: Config, seed: int, device) -> dict:
    """One SSD-KD run. ``curve``: ``[(synthesized images, student test accuracy)]`` every ``cfg.eval_every``
    rounds and at the end; ``wall_s`` / ``cpu_s``: seconds of the rounds (process CPU time for ``cpu_s``)."""
    m = SSDKD(ds, 1, config=cfg, device=device, seed=seed)
    curve = []
    t0, c0 = time.perf_counter(), time.process_time()
    for it in range(cfg.rounds):
        log = m.step(it)
        if "student_acc" in log:
            curve.append((log["synthesized"], log["student_acc"]))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = m.student_accuracy()
    if not curve or curve[-1][0] != m.synthesized:
        curve.append((m.synthesized, acc))
    return dict(
        accuracy=acc,
        synthesized=m.synthesized,
        student_steps=m.student_steps,
        wall_s=wall,
        cpu_s=cpu,
        curve=curve,
        teacher_accuracy=m.teacher_accuracy(),
    )


def _variant_job(job) -> dict:
    """Process-pool entry: ``(dataset name, device, cfg, seed)`` -> :func:`run_variant` result (1 thread)."""
    name, device, cfg, seed = job
    torch.set_num_threads(1)
    dev = torch.device(device)
    return run_variant(load_dataset(name, device=dev), cfg, seed, dev)


def samples_to_reach(curve, target):
    """Synthesized images at the first point of ``curve`` (``[(images, accuracy)]``) with accuracy >= target,
    or None."""
    for n, acc in curve:
        if acc >= target:
            return n
    return None


def earliest_to_reach(runs, target):
    """Fewest images at which any of ``runs`` (one seed's runs of one variant, any budgets) reached ``target``;
    None if none did."""
    hits = [n for r in runs if (n := samples_to_reach(r["curve"], target)) is not None]
    return min(hits) if hits else None


def budget_to_reach(budgets, accs, target):
    """Images needed to reach ``target`` from final accuracies ``accs`` (mean over seeds) of runs with
    ``budgets`` synthesized images (ascending). Returns ``(images, kind)``: kind ``"="`` (log-interpolated
    between the last budget below and the first at or above the target), ``"<="`` (the smallest budget already
    reaches it) or ``">"`` (no budget does; images = the largest budget)."""
    for i, (n, a) in enumerate(zip(budgets, accs)):
        if a >= target:
            if i == 0:
                return float(n), "<="
            n0, a0 = budgets[i - 1], accs[i - 1]
            frac = (target - a0) / (a - a0)
            return math.exp(math.log(n0) + frac * (math.log(n) - math.log(n0))), "="
    return float(budgets[-1]), ">"


def ratio_of(base, ours):
    """Ratio ``base / ours`` of two ``(images, kind)`` estimates as ``(value, kind)``; kind says whether it is
    exact ``"="``, a lower bound ``">="``/``">"``, an upper bound ``"<="``/``"<"`` or unknown ``"?"``."""
    (b, kb), (o, ko) = base, ours
    if kb == ">" and ko == ">":
        return None, "?"
    if kb == "<=" and ko == "<=":
        return None, "?"
    table = {
        ("=", "="): "=",
        ("=", "<="): ">=",
        ("=", ">"): "<",
        (">", "="): ">",
        (">", "<="): ">",
        ("<=", "="): "<=",
        ("<=", ">"): "<",
    }
    return b / o, table[(kb, ko)]


def _fmt_est(est):
    n, kind = est
    return {"=": "", "<=": "<= ", ">": "> "}[kind] + f"{n:,.0f}"


def _fmt_ratio(r):
    v, kind = r
    if v is None:
        return "n/a"
    return ("" if kind == "=" else kind + " ") + f"{v:.2f}x"


def _parse_list(text, kind, name, *, lo=None, hi=None):
    vals = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        try:
            v = kind(tok)
        except ValueError:
            raise SystemExit(f"--{name}: expected comma-separated {kind.__name__} values, got {tok!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise SystemExit(f"--{name}: values must be in [{lo}, {hi}], got {v}")
        vals.append(v)
    return vals


def _cache_key(dataset, cfg: Config, seed: int, teacher_digest: str) -> str:
    d = dataclasses.asdict(cfg)
    d["teacher"] = teacher_digest
    blob = json.dumps(dict(dataset=dataset, seed=seed, config=d), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _run_all(jobs, args, ds, dev, teacher_digest):
    """Run ``jobs`` (list of ``(key, cfg, seed)``), longest first, ``args.jobs`` at a time; with ``--cache``
    reuse / store each run's result under ``args.work``. Returns ``{key: result}``."""
    out, todo = {}, []
    cache_dir = os.path.join(args.work, "runs")
    for key, cfg, seed in jobs:
        path = os.path.join(cache_dir, _cache_key(args.dataset, cfg, seed, teacher_digest) + ".json")
        if args.cache and os.path.exists(path):
            with open(path) as f:
                out[key] = json.load(f)
            print(f"[cache] {key}: {out[key]['accuracy']:.4f}", flush=True)
        else:
            todo.append((key, cfg, seed, path))
    todo.sort(key=lambda j: -j[1].rounds)

    def done(key, path, res):
        out[key] = res
        if args.cache:
            os.makedirs(cache_dir, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(res, f)
            os.replace(path + ".tmp", path)
        print(
            f"[run] {key}: acc {res['accuracy']:.4f}, {res['synthesized']} images, cpu {res['cpu_s']:.0f}s, "
            f"wall {res['wall_s']:.0f}s",
            flush=True,
        )

    if args.jobs > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs) as pool:
            futs = {
                pool.submit(_variant_job, (args.dataset, args.device, cfg, seed)): (key, path)
                for key, cfg, seed, path in todo
            }
            for fut in as_completed(futs):
                done(*futs[fut], fut.result())
    else:
        for key, cfg, seed, path in todo:
            done(key, path, run_variant(ds, cfg, seed, dev))
    return out


def _plot(path, long_res, variants, mults, seeds_by_mult, ref_acc, title) -> str | None:
    """Two panels, log-x: final accuracy vs budget (mean line, min-max band, seed dots) and every run's
    evaluation curve. Returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no plot", flush=True)
        return None
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for ci, key in enumerate(variants):
        c = colors[ci % len(colors)]
        label = VARIANTS[key][0]
        xs, mean, lo, hi = [], [], [], []
        for m in mults:
            runs = [long_res[(key, m, s)] for s in seeds_by_mult[m]]
            accs = [r["accuracy"] for r in runs]
            xs.append(runs[0]["synthesized"])
            mean.append(statistics.mean(accs))
            lo.append(min(accs))
            hi.append(max(accs))
            ax1.scatter([xs[-1]] * len(accs), accs, color=c, s=12, alpha=0.6)
            for si, r in enumerate(runs):
                n, a = zip(*r["curve"])
                ax2.plot(
                    n,
                    a,
                    color=c,
                    lw=0.8,
                    alpha=0.35 + 0.65 * (mults.index(m) + 1) / len(mults),
                    ls=["-", "--", ":", "-."][si % 4],
                    label=f"{label}" if (m == mults[-1] and si == 0) else None,
                )
        ax1.plot(xs, mean, "-o", color=c, label=label)
        ax1.fill_between(xs, lo, hi, color=c, alpha=0.15)
    for ax in (ax1, ax2):
        ax.axhline(ref_acc, color="gray", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("synthesized images")
        ax.set_ylabel("student test accuracy")
        ax.grid(alpha=0.3, which="both")
    budgets = [long_res[(variants[0], m, seeds_by_mult[m][0])]["synthesized"] for m in mults]
    ax1.set_xticks(budgets)
    ax1.set_xticklabels([f"{b:,}" for b in budgets])
    ax1.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax1.set_xlim(budgets[0] / 1.3, budgets[-1] * 1.3)
    ax1.set_title("final accuracy per budget (mean, min-max band, seeds)", fontsize=9)
    ax2.set_title("evaluation curves of every run (later = darker; line style = seed)", fontsize=9)
    ax2.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_ylim(bottom=0)
    ax1.legend(fontsize=8, loc="lower right")
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle(title + f"; dashed: SSD-KD final accuracy at {budgets[0]:,} images ({ref_acc:.4f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated variants of the main table (of {', '.join(VARIANTS)})",
    )
    ap.add_argument(
        "--targets",
        default="0.5,0.6,0.7",
        help="comma-separated test accuracies (fractions) for the images-to-accuracy columns",
    )
    ap.add_argument(
        "--long-multipliers",
        default="",
        help="comma-separated ints > 1: also run --long-variants for that many times the rounds",
    )
    ap.add_argument("--long-variants", default="ssdkd,baseline", help="variants run at the longer budgets")
    ap.add_argument(
        "--scale",
        default="rounds",
        choices=("rounds", "batch"),
        help="larger budgets by more rounds (more student steps too) or by a larger synthesis batch "
        "(same rounds and student steps)",
    )
    ap.add_argument("--long-seeds", type=int, default=None, help="seeds of the longer runs (default --seeds)")
    ap.add_argument(
        "--long-targets",
        default="0.7,0.75,0.8",
        help="target accuracies of the sample-efficiency table (SSD-KD's 1x accuracy is added)",
    )
    ap.add_argument(
        "--cache",
        action="store_true",
        help="reuse / store each run's result in --work/runs (keyed by dataset, config, seed and "
        "teacher file, not by code version)",
    )
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument("--skip-real", action="store_true", help="leave out the KD-on-random-real-images rows")
    ap.add_argument("--teacher-arch", default=None, help="teacher architecture (default: the dataset's preset)")
    ap.add_argument("--teacher-kwargs", default=None, help="teacher get_network keywords as JSON")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="teacher training epochs")
    args = ap.parse_args(argv)

    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.eval_every < 0:
        ap.error(f"--eval-every must be >= 0, got {args.eval_every}")
    variants = [v for v in args.variants.split(",") if v]
    long_variants = [v for v in args.long_variants.split(",") if v]
    for name, vs in (("variants", variants), ("long-variants", long_variants)):
        bad = [v for v in vs if v not in VARIANTS]
        if bad or not vs:
            ap.error(f"--{name}: expected a non-empty comma-separated subset of {', '.join(VARIANTS)}, got {bad}")
    targets = _parse_list(args.targets, float, "targets", lo=0.0, hi=1.0)
    long_targets = _parse_list(args.long_targets, float, "long-targets", lo=0.0, hi=1.0)
    mults = sorted(set(_parse_list(args.long_multipliers, int, "long-multipliers", lo=2)))
    long_seeds = args.long_seeds if args.long_seeds is not None else args.seeds
    if mults:
        if long_seeds < 1:
            ap.error(f"--long-seeds must be >= 1, got {long_seeds}")
        if "ssdkd" not in variants or "ssdkd" not in long_variants:
            ap.error(
                "--long-multipliers needs 'ssdkd' in --variants and --long-variants (its 1x accuracy is the "
                "reference target)"
            )
        variants += [v for v in long_variants if v not in variants]
    if args.tag and not all(ch.isalnum() or ch in "-_." for ch in args.tag):
        ap.error(f"--tag must be letters, digits, '-', '_' or '.', got {args.tag!r}")
    try:  # before the teacher trains: a bad --set fails in a second, not after the teacher's epochs
        base_cfg = make_config(
            SSDKD, args.dataset, 1, iterations=args.rounds, overrides=parse_overrides(Config, args.set)
        )
    except ValueError as e:
        ap.error(str(e))

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    dev = torch.device(args.device)
    ds = load_dataset(args.dataset, device=dev)

    arch, kw, epochs, lr, bs = PRESETS[args.dataset]
    arch = args.teacher_arch or arch
    kw = json.loads(args.teacher_kwargs) if args.teacher_kwargs is not None else kw
    epochs = args.teacher_epochs or epochs
    os.makedirs(args.work, exist_ok=True)
    tpath = os.path.join(args.work, f"teacher-{args.dataset}-{arch}.pt")
    t0 = time.perf_counter()
    tmeta = train_teacher(ds, tpath, model=arch, model_kwargs=kw, epochs=epochs, lr=lr, batch_size=bs, verbose=False)
    teacher_s = time.perf_counter() - t0
    with open(tpath, "rb") as f:
        teacher_digest = hashlib.sha256(f.read()).hexdigest()

    base_cfg = dataclasses.replace(base_cfg, teacher=tpath, eval_every=args.eval_every)
    if mults and not base_cfg.eval_every:
        ap.error("--long-multipliers needs --eval-every > 0 (the curves give the images-to-accuracy figures)")

    cfgs = {v: dataclasses.replace(base_cfg, **VARIANTS[v][1]) for v in variants}
    seeds = list(range(args.seeds))
    lseeds = list(range(long_seeds))
    jobs = [((v, 1, s), cfgs[v], s) for v in variants for s in seeds]

    def scaled(cfg, m):
        if args.scale == "batch":
            return dataclasses.replace(cfg, synthesis_batch=m * base_cfg.synthesis_batch)
        return dataclasses.replace(cfg, rounds=m * base_cfg.rounds, warmup=m * base_cfg.warmup)

    jobs += [((v, m, s), scaled(cfgs[v], m), s) for v in long_variants for m in mults for s in lseeds]
    res = _run_all(jobs, args, ds, dev, teacher_digest)

    rows, curves = [], {}
    synthesized = None
    for v in variants:
        name = VARIANTS[v][0]
        runs = [res[(v, 1, s)] for s in seeds]
        synthesized = runs[0]["synthesized"]
        accs = [r["accuracy"] for r in runs]
        rows.append(
            dict(
                variant=name,
                key=v,
                acc_mean=statistics.mean(accs),
                acc_std=statistics.pstdev(accs),
                accs=accs,
                synthesized=synthesized,
                student_steps=runs[0]["student_steps"],
                wall_s=statistics.mean(r["wall_s"] for r in runs),
                cpu_s=statistics.mean(r["cpu_s"] for r in runs),
            )
        )
        curves[name] = [r["curve"] for r in runs]
        print(
            f"{name}: acc {rows[-1]['acc_mean']:.4f} +- {rows[-1]['acc_std']:.4f} "
            f"({synthesized} synthesized, {rows[-1]['wall_s']:.1f}s)",
            flush=True,
        )

    steps = (base_cfg.rounds - base_cfg.warmup) * base_cfg.kd_steps
    buf = base_cfg.buffer_size or math.ceil(base_cfg.buffer_fraction * ds.x_train.shape[0])
    real_rows = (
        ()
        if args.skip_real
        else (
            ("KD on random real images, n = buffer size", buf),
            ("KD on random real images, n = synthesized count", min(synthesized, ds.x_train.shape[0])),
        )
    )
    for label, n in real_rows:
        kres = [kd_on_real(ds, base_cfg, n, steps, s, dev) for s in seeds]
        accs = [r[0] for r in kres]
        rows.append(
            dict(
                variant=f"{label} ({n})",
                acc_mean=statistics.mean(accs),
                acc_std=statistics.pstdev(accs),
                accs=accs,
                synthesized=0,
                real_images=n,
                student_steps=steps,
                wall_s=statistics.mean(r[1] for r in kres),
            )
        )
        print(f"{rows[-1]['variant']}: acc {rows[-1]['acc_mean']:.4f}", flush=True)

    teacher_acc = tmeta["test_accuracy"]
    ref_acc = next((r["acc_mean"] for r in rows if r.get("key") == "ssdkd"), None)
    if ref_acc is not None:
        targets = sorted(set(targets) | {ref_acc})
        long_targets = sorted(set(long_targets) | {ref_acc})
    for r in rows:
        if r["variant"] in curves:
            for tgt in targets:
                r[f"samples_to_{tgt}"] = [samples_to_reach(c, tgt) for c in curves[r["variant"]]]

    # ---- longer budgets: sample efficiency
    long = None
    if mults:
        all_mults = [1] + mults
        seeds_by_mult = {1: seeds, **{m: lseeds for m in mults}}
        long = dict(
            multipliers=all_mults,
            scale=args.scale,
            seeds=lseeds,
            targets=long_targets,
            reference_accuracy=ref_acc,
            variants={},
        )
        for v in long_variants:
            budgets, finals = [], []
            for m in all_mults:
                runs = [res[(v, m, s)] for s in seeds_by_mult[m]]
                budgets.append(runs[0]["synthesized"])
                finals.append(
                    dict(
                        mult=m,
                        synthesized=runs[0]["synthesized"],
                        rounds=base_cfg.rounds * (m if args.scale == "rounds" else 1),
                        student_steps=runs[0]["student_steps"],
                        accs=[r["accuracy"] for r in runs],
                        acc_mean=statistics.mean(r["accuracy"] for r in runs),
                        acc_std=statistics.pstdev(r["accuracy"] for r in runs),
                        cpu_s=statistics.mean(r["cpu_s"] for r in runs),
                        wall_s=statistics.mean(r["wall_s"] for r in runs),
                    )
                )
            reach = {}
            for tgt in long_targets:
                per_seed = [
                    earliest_to_reach([res[(v, m, s)] for m in all_mults if s in seeds_by_mult[m]], tgt)
                    for s in sorted(set(seeds) | set(lseeds))
                ]
                if all(x is not None for x in per_seed):
                    earliest = (statistics.mean(per_seed), "=")
                else:  # a seed that never reached it needs more than the largest budget
                    earliest = (statistics.mean(x if x is not None else budgets[-1] for x in per_seed), ">")
                reach[str(tgt)] = dict(
                    earliest_per_seed=per_seed,
                    earliest=earliest,
                    budget=budget_to_reach(budgets, [f["acc_mean"] for f in finals], tgt),
                )
            long["variants"][v] = dict(
                label=VARIANTS[v][0],
                budgets=budgets,
                finals=finals,
                reach=reach,
                curves={str(m): [res[(v, m, s)]["curve"] for s in seeds_by_mult[m]] for m in all_mults},
            )
        if "baseline" in long["variants"]:
            long["ratios_baseline_over_ssdkd"] = {
                str(t): {
                    how: ratio_of(
                        long["variants"]["baseline"]["reach"][str(t)][how],
                        long["variants"]["ssdkd"]["reach"][str(t)][how],
                    )
                    for how in ("earliest", "budget")
                }
                for t in long_targets
            }

    env = dict(
        date=datetime.date.today().isoformat(),
        torch=torch.__version__,
        python=platform.python_version(),
        device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(),
        threads=torch.get_num_threads(),
    )
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(
        RESULTS, f"ssdkd-{args.dataset}-{dev.type}-{env['date']}" + (f"-{args.tag}" if args.tag else "")
    )
    png = None
    if ref_acc is not None and args.eval_every:
        pv = long_variants if mults else variants
        png = _plot(
            stem + ".png",
            res,
            pv,
            [1] + mults,
            {1: seeds, **{m: lseeds for m in mults}},
            ref_acc,
            f"SSD-KD variants on {args.dataset}",
        )
    record = dict(
        environment=env,
        dataset=args.dataset,
        teacher=dict(model=arch, kwargs=kw, epochs=epochs, test_accuracy=teacher_acc, train_s=teacher_s),
        config=dataclasses.asdict(base_cfg),
        seeds=seeds,
        rows=rows,
        curves=curves,
        long=long,
        argv=sys.argv[1:] if argv is None else list(argv),
    )
    with open(stem + ".json", "w") as f:
        json.dump(record, f, indent=1, default=str)
    lines = [
        f"# SSD-KD on {args.dataset} ({env['device']}, {env['date']})",
        "",
        "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()),
        "",
        f"Teacher: {arch} {kw}, {epochs} epochs, test accuracy {teacher_acc:.4f}. "
        f"Student: {base_cfg.student}. Rounds {base_cfg.rounds} x (g_steps {base_cfg.g_steps}, "
        f"kd_steps {base_cfg.kd_steps}), warm-up {base_cfg.warmup} rounds, synthesis batch {base_cfg.synthesis_batch}, "
        f"buffer {buf}, "
        f"seeds {seeds}. Accuracy on the test set ({ds.x_test.shape[0]} images).",
        "",
        "| variant | student acc (mean +- std) | synthesized images | student steps | wall s / run | "
        + " | ".join(f"images to {t:.2%}".replace(".00%", "%") for t in targets)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(targets),
    ]
    fmt = lambda v: "-" if v is None else ("/".join("never" if x is None else str(x) for x in v))  # noqa: E731
    for r in rows:
        reach = [r.get(f"samples_to_{t}") for t in targets]
        lines.append(
            f"| {r['variant']} | {r['acc_mean']:.4f} +- {r['acc_std']:.4f} | {r['synthesized']} | "
            f"{r['student_steps']} | {r['wall_s']:.1f} | " + " | ".join(fmt(x) for x in reach) + " |"
        )
    lines += [
        "",
        "Images-to-accuracy columns: synthesized images when the student (evaluated every "
        f"{args.eval_every} rounds) first reaches that accuracy, one value per seed"
        + (f"; {ref_acc:.2%} is SSD-KD's mean final accuracy." if ref_acc is not None else "."),
    ]
    if args.jobs > 1:
        lines += [
            "",
            f"SSD-KD rows ran {args.jobs} at a time (1 thread each): their wall times are not comparable "
            "with the KD-on-real rows.",
        ]
    if long is not None:
        lv = long["variants"]
        b0 = lv[long_variants[0]]["budgets"]
        what = "the rounds" if args.scale == "rounds" else "the synthesis batch, equal student steps"
        how_scaled = (
            "rounds, synthesized images and student steps all scale with the multiplier, and the "
            "student's cosine learning rate spans the whole run."
            if args.scale == "rounds"
            else f"the synthesis batch ({base_cfg.synthesis_batch} x the multiplier) and so the synthesized "
            f"images scale with the multiplier; rounds ({base_cfg.rounds}), generator steps and student "
            f"steps ({(base_cfg.rounds - base_cfg.warmup) * base_cfg.kd_steps}) stay the same."
        )
        lines += [
            "",
            f"## Larger budgets: sample efficiency ({', '.join(f'{m}x' for m in long['multipliers'])} "
            f"{what}, seeds {lseeds} beyond 1x)",
            "",
            "Final student test accuracy per budget (mean +- std; per seed). Each budget is its own run: " + how_scaled,
            "",
            "| variant | " + " | ".join(f"{n:,} images ({m}x)" for n, m in zip(b0, long["multipliers"])) + " |",
            "|---|" + "---|" * len(b0),
        ]
        for v in long_variants:
            cells = [
                f"{f['acc_mean']:.4f} +- {f['acc_std']:.4f} ({'/'.join(f'{a:.3f}' for a in f['accs'])})"
                for f in lv[v]["finals"]
            ]
            lines.append(f"| {lv[v]['label']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "CPU seconds per run (1 thread): "
            + "; ".join(f"{v}: " + ", ".join(f"{f['cpu_s']:.0f}" for f in lv[v]["finals"]) for v in long_variants)
            + ".",
            "",
        ]
        tcols = [f"{t:.2%}".replace(".00%", "%") + (" (SSD-KD 1x)" if t == ref_acc else "") for t in long_targets]
        lines += [
            "Synthesized images needed to reach each target. *earliest*: per seed, the first evaluation (every "
            f"{args.eval_every} rounds) of any run of that variant at or above the target (mean of seeds; "
            "`never` = not within the largest budget); *budget*: the smallest budget whose mean final "
            "accuracy reaches it, log-interpolated between budgets.",
            "",
            "| variant | measure | " + " | ".join(tcols) + " |",
            "|---|---|" + "---|" * len(tcols),
        ]
        for v in long_variants:
            rc = lv[v]["reach"]
            lines.append(
                f"| {lv[v]['label']} | earliest (per seed) | "
                + " | ".join(
                    f"{_fmt_est(rc[str(t)]['earliest'])} ({fmt(rc[str(t)]['earliest_per_seed'])})" for t in long_targets
                )
                + " |"
            )
            lines.append(
                f"| {lv[v]['label']} | budget | "
                + " | ".join(_fmt_est(rc[str(t)]["budget"]) for t in long_targets)
                + " |"
            )
        if "ratios_baseline_over_ssdkd" in long:
            rt = long["ratios_baseline_over_ssdkd"]
            lines += [
                "",
                "| sample-efficiency ratio (baseline images / SSD-KD images) | " + " | ".join(tcols) + " |",
                "|---|" + "---|" * len(tcols),
            ]
            for how in ("earliest", "budget"):
                lines.append(f"| {how} | " + " | ".join(_fmt_ratio(rt[str(t)][how]) for t in long_targets) + " |")
    if png:
        lines += ["", f"Plot: `{os.path.basename(png)}` (student test accuracy vs synthesized images, log-x)."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return stem + ".md"


if __name__ == "__main__":
    main()
