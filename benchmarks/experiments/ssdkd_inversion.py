"""What SSD-KD's inversion gives the teacher, round by round: losses, teacher confidence, buffer class histogram.

    OMP_NUM_THREADS=1 python benchmarks/experiments/ssdkd_inversion.py --dataset cifar10 \\
        --teacher runs/ssdkd-cifar/teacher-cifar10-ConvNetBN.pt --rounds 12 --set g_steps=10 --set lr_g=0.002

Runs ``--rounds`` rounds of :class:`pydistill.methods.ssdkd.SSDKD` (any ``--set`` Config override; the teacher file
from ``ssdkd_results.py`` or ``pydistill teacher``) and prints one line per round: BN-statistics, task and
adversarial losses, KD loss, the teacher's mean max-probability over the buffer, the buffer's per-class counts of
teacher-predicted classes, and the student's test accuracy every ``--eval-every`` rounds. A generator that
collapses onto a few classes shows as a histogram concentrated on them and a task loss that stays high.
Writes nothing unless ``--out`` (a JSON file of the per-round records) is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pydistill.config_overrides import make_config, parse_overrides  # noqa: E402
from pydistill.data import load_dataset  # noqa: E402
from pydistill.methods.ssdkd import SSDKD, Config  # noqa: E402
from pydistill.methods.ssdkd.losses import class_counts  # noqa: E402


def inspect_rounds(method: SSDKD, rounds: int) -> list[dict]:
    """Run ``rounds`` rounds of ``method``; one record per round (the step's logs plus the buffer statistics)."""
    k = int(method.dataset.num_classes)
    records = []
    for it in range(rounds):
        t0 = time.perf_counter()
        log = method.step(it)
        n = method.buffer.size
        probs = torch.softmax(method.buffer.logits[:n].float(), dim=1)
        rec = {key: float(v) for key, v in log.items() if isinstance(v, (int, float))}
        rec.update(
            round=it,
            teacher_pmax=float(probs.max(1).values.mean()),
            buffer_class_counts=class_counts(method.buffer.labels[:n], k).long().tolist(),
            seconds=time.perf_counter() - t0,
        )
        records.append(rec)
        acc = f" student {rec['student_acc']:.4f}" if "student_acc" in rec else ""
        print(
            f"round {it:3d}: bn {rec['loss_bn']:.3f} ce {rec['loss_ce']:.3f} adv {rec['loss_adv']:.3f} "
            f"kd {rec['loss_kd']:.3f} teacher p_max {rec['teacher_pmax']:.3f} classes "
            f"{rec['buffer_class_counts']}{acc} ({rec['seconds']:.1f}s)",
            flush=True,
        )
    return records


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--teacher", required=True, help="teacher file (ssdkd_results.py / pydistill teacher)")
    ap.add_argument("--rounds", type=int, default=12, help="rounds to run (the Config's rounds stays its own)")
    ap.add_argument("--eval-every", type=int, default=4, help="student test accuracy every N rounds (0: never)")
    ap.add_argument("--set", action="append", default=[], help="Config override key=value (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="JSON file for the per-round records")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    if not os.path.isfile(args.teacher):
        ap.error(f"--teacher {args.teacher!r} is not a file")
    try:
        cfg = make_config(SSDKD, args.dataset, 1, overrides=parse_overrides(Config, args.set))
    except ValueError as e:
        ap.error(str(e))
    cfg = dataclasses.replace(cfg, teacher=args.teacher, eval_every=args.eval_every)
    if args.rounds > cfg.rounds:
        ap.error(f"--rounds {args.rounds} exceeds the Config's rounds ({cfg.rounds}); raise it with --set rounds=N")
    dev = torch.device(args.device)
    ds = load_dataset(args.dataset, device=dev)
    records = inspect_rounds(SSDKD(ds, 1, config=cfg, device=dev, seed=args.seed), args.rounds)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(argv=sys.argv[1:] if argv is None else list(argv), records=records), f, indent=1)
        os.replace(tmp, args.out)
    return records


if __name__ == "__main__":
    main()
