"""SumTree benchmark: batched update of K random leaves and sampling K leaves, trees of 2**10 .. 2**22 leaves.

Rows per case: ``baseline`` (a numpy sum + min tree as in research PER code: a Python loop per updated
element and per sampled draw), ``reference`` (pydistill's PyTorch reference: full rebuild per update),
``cpp`` / ``cuda`` (pydistill kernels; ``validate=False``) and ``... validated`` (default ``validate=True``:
one host sync), and ``torchrl`` (TorchRL's C++ SumSegmentTreeFp64 + MinSegmentTreeFp64, CPU only) when
torchrl imports. The baseline (and torchrl) always run on the CPU; on a GPU run its speedups
compare a CPU research loop with the device kernels, as a user switching would see it.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common.py

from common import try_row  # noqa: E402

from pydistill.ops.sum_tree import SumTree  # noqa: E402

OP = "sum_tree"


class NumpySumTree:
    """Straightforward research-code sum tree (1-based heap, float64), with a min tree."""

    def __init__(self, capacity: int):
        self.p = 1 << (capacity - 1).bit_length()
        self.sum = np.zeros(2 * self.p)
        self.min = np.full(2 * self.p, np.inf)

    def fill(self, priorities: np.ndarray) -> None:  # setup only (not timed)
        self.sum[self.p : self.p + len(priorities)] = priorities
        self.min[self.p : self.p + len(priorities)] = priorities
        h = self.p // 2
        while h >= 1:
            self.sum[h : 2 * h] = self.sum[2 * h : 4 * h : 2] + self.sum[2 * h + 1 : 4 * h : 2]
            self.min[h : 2 * h] = np.minimum(self.min[2 * h : 4 * h : 2], self.min[2 * h + 1 : 4 * h : 2])
            h //= 2

    def update(self, indices, priorities) -> None:
        for i, pr in zip(indices, priorities):
            v = int(i) + self.p
            self.sum[v] = pr
            self.min[v] = pr
            v //= 2
            while v >= 1:
                self.sum[v] = self.sum[2 * v] + self.sum[2 * v + 1]
                self.min[v] = min(self.min[2 * v], self.min[2 * v + 1])
                v //= 2

    def sample(self, n: int, rng: np.random.Generator):
        total = self.sum[1]
        seg = total / n
        idx = np.empty(n, dtype=np.int64)
        prob = np.empty(n)
        for j in range(n):
            x = rng.uniform(seg * j, seg * (j + 1))
            v = 1
            while v < self.p:
                left = self.sum[2 * v]
                if x < left or self.sum[2 * v + 1] <= 0:
                    v = 2 * v
                else:
                    x -= left
                    v = 2 * v + 1
            idx[j] = v - self.p
            prob[j] = self.sum[v] / total
        return idx, prob


def _torchrl_trees():
    try:
        from torchrl._torchrl import MinSegmentTreeFp64, SumSegmentTreeFp64
    except Exception:  # noqa: BLE001 - any import failure means: no torchrl rows
        return None
    return SumSegmentTreeFp64, MinSegmentTreeFp64


def run(device: str, quick: bool) -> list[dict]:
    dev = torch.device(device)
    exps = [10, 16] if quick else [10, 14, 18, 22]
    ks = [256, 4096]
    compiled = "cuda" if dev.type == "cuda" else "cpp"
    trl = _torchrl_trees()
    rows: list[dict] = []
    rng = np.random.default_rng(0)
    for e in exps:
        cap = 2**e
        init = rng.random(cap) + 0.01
        base = NumpySumTree(cap)
        base.fill(init)
        trees = {}
        for impl in ("reference", compiled):
            t = SumTree(cap, device=dev, backend=impl)
            t.update(torch.arange(cap), torch.from_numpy(init), validate=False)
            trees[impl] = t
        if trl is not None:
            trl_sum, trl_min = trl[0](cap), trl[1](cap)
            all_idx = torch.arange(cap)
            trl_sum[all_idx] = torch.from_numpy(init)
            trl_min[all_idx] = torch.from_numpy(init)
        for k in ks:
            idx_np = rng.integers(0, cap, size=k)
            pri_np = rng.random(k) + 0.01
            idx_cpu, pri_cpu = torch.from_numpy(idx_np), torch.from_numpy(pri_np)
            idx_d, pri_d = idx_cpu.to(dev), pri_cpu.to(dev)
            case = f"update N=2^{e} K={k}"
            rows.append(try_row(OP, case, "baseline", lambda: base.update(idx_np, pri_np), "cpu"))
            for impl, t in trees.items():
                rows.append(try_row(OP, case, impl, lambda t=t: t.update(idx_d, pri_d, validate=False), device))
            t = trees[compiled]
            rows.append(try_row(OP, case, f"{compiled} validated", lambda: t.update(idx_d, pri_d), device))
            if trl is not None:

                def trl_update():
                    trl_sum[idx_cpu] = pri_cpu
                    trl_min[idx_cpu] = pri_cpu

                rows.append(try_row(OP, case, "torchrl", trl_update, "cpu"))

            case = f"sample N=2^{e} n={k}"
            srng = np.random.default_rng(1)
            rows.append(try_row(OP, case, "baseline", lambda: base.sample(k, srng), "cpu"))
            gen = torch.Generator(device=dev).manual_seed(0)
            for impl, t in trees.items():
                rows.append(try_row(OP, case, impl, lambda t=t: t.sample(k, gen, validate=False), device))
            t = trees[compiled]
            rows.append(try_row(OP, case, f"{compiled} validated", lambda: t.sample(k, gen), device))
            if trl is not None:
                cgen = torch.Generator().manual_seed(0)

                def trl_sample():
                    total = trl_sum.query(0, cap)
                    u = torch.rand(k, dtype=torch.float64, generator=cgen) * total
                    i = trl_sum.scan_lower_bound(u)
                    return i, trl_sum[i] / total

                rows.append(try_row(OP, case, "torchrl", trl_sample, "cpu"))
    for r in rows:
        if r is not None and r.get("impl") == "torchrl" and dev.type == "cuda":
            r["impl"] += " (cpu)"
    return [r for r in rows if r is not None]


if __name__ == "__main__":
    from common import main_one

    main_one(run, __doc__)
