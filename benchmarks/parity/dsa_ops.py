"""Parity of pydistill's ``diff_augment`` with the official ``DiffAugment`` (siamese mode "S", one group per
call), group by group: the official seeds are translated into pydistill parameters (``dsa_params``) and the
augmented images and their gradients (for a fixed random upstream gradient) are compared, with the official
scale/rotate as run today (``align_corners=False``) and as under the papers' PyTorch (``True``).

    python benchmarks/parity/dsa_ops.py --official /path/to/DatasetCondensation [--dataset mnist --seeds 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import git_commit, import_official, official_path, write_result  # noqa: E402
from dsa_params import compare_groups, compare_mode_all  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help="checkout of VICO-UoE/DatasetCondensation (or $PYDISTILL_OFFICIAL_DC)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--batch", type=int, default=10)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from pydistill.data import load_dataset

    path = official_path("dc", a.official)
    utils, _ = import_official(path, "utils", "networks")
    ds = load_dataset(a.dataset)
    x = ds.x_train[: a.batch].clone()
    strategy = "color_crop_cutout_flip_scale_rotate"
    rows = compare_groups(utils, x, range(100, 100 + a.seeds), strategy)
    by_group = {}
    for r in rows:
        g = by_group.setdefault(r["group"], {"n": 0, **{k: 0.0 for k in r if k.startswith(("err", "grad"))}})
        g["n"] += 1
        for k in g:
            if k != "n":
                g[k] = max(g[k], r[k])
    md = (
        "| group | draws | max err, official align_corners=True | grad | official as run today (False) | grad |\n"
        "|---|---|---|---|---|---|\n"
    )
    for name, g in sorted(by_group.items()):
        md += (
            f"| {name} | {g['n']} | {g['err_vs_official_align_true']:.1e} | "
            f"{g['grad_err_vs_official_align_true']:.1e} | {g['err_vs_official_align_false']:.1e} | "
            f"{g['grad_err_vs_official_align_false']:.1e} |\n"
        )
    md += (
        '\nMode "all" (pydistill, one fused resampling) vs official mode "M" (separate passes), same draws, '
        "official at align_corners=True; mean over seeds:\n\n| strategy | max abs | mean abs | pixels > 1e-3 |\n"
        "|---|---|---|---|\n"
    )
    mode_all = {}
    for st in ("color_crop_cutout_flip_scale", "color_crop_cutout_flip_rotate", "scale_rotate", strategy):
        r = compare_mode_all(utils, x, range(100, 100 + a.seeds), st)
        mode_all[st] = {
            "max": max(v["max"] for v in r),
            "mean": sum(v["mean"] for v in r) / len(r),
            "frac_gt_1e-3": sum(v["frac_gt_1e-3"] for v in r) / len(r),
        }
        m = mode_all[st]
        md += f"| {st} | {m['max']:.2e} | {m['mean']:.2e} | {100 * m['frac_gt_1e-3']:.1f}% |\n"
    print(md)
    write_result(
        f"dsa-ops-{a.dataset}",
        {
            "rows": rows,
            "by_group": by_group,
            "mode_all": mode_all,
            "dataset": a.dataset,
            "batch": a.batch,
            "strategy": strategy,
            "official_commit": git_commit(path),
            "command": "python benchmarks/parity/dsa_ops.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        f"{a.dataset}, {a.batch} images, fp32, siamese draws of seeds 100..{99 + a.seeds}.\n\n" + md,
    )


if __name__ == "__main__":
    main()
