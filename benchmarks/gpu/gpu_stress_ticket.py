"""GPU stress test of the last-program ticket pattern (match_loss / trajectory_loss Triton forwards).

Run on the GPU box from the repo root:  python benchmarks/gpu/gpu_stress_ticket.py
                                        (ITERS=2000 by default; gpu_session.sh runs it)
CPU smoke test (tiny):                  TRITON_INTERPRET=1 SMALL=1 ITERS=6 python benchmarks/gpu/gpu_stress_ticket.py
Checks, for many back-to-back calls with no sync in between, on several streams, with > cache-size distinct
shape sets (so entries are evicted and rebuilt): every loss/stats equals a float64 reference, repeated calls
on the same inputs are bitwise equal (determinism), and every cached ticket counter is 0 afterwards.
"""

import os
import random

import torch

from pydistill.kernels import match_loss as km
from pydistill.kernels import trajectory_loss as kt

SMALL = os.environ.get("SMALL") == "1"
ITERS = int(os.environ.get("ITERS", "2000"))
DEV = "cuda" if torch.cuda.is_available() and not SMALL else "cpu"
random.seed(0)
torch.manual_seed(0)


def shapes():
    out = []
    for _ in range(random.randint(1, 3 if SMALL else 6)):
        r = random.random()
        if SMALL:
            out.append(
                random.choice([(random.randint(1, 9),), (random.randint(1, 5), random.randint(1, 70)), (3, 2, 3, 3)])
            )
        elif r < 0.2:
            out.append((random.randint(1, 5000),))
        elif r < 0.45:  # many 1-chunk rows: tens of thousands of tiny programs all racing for tickets
            out.append((random.randint(1000, 200000), random.randint(1, 16)))
        elif r < 0.8:  # rows of several chunks
            out.append((random.randint(1, 256), random.randint(1, 40000)))
        else:
            out.append((random.randint(1, 128), random.randint(1, 128), 3, 3))
    return out


def ref_match(a, b, metric):
    a = [x.double() for x in a]
    b = [x.double() for x in b]
    if metric == "mse":
        return sum(((x - y) ** 2).sum() for x, y in zip(a, b))
    if metric == "cos":
        x, y = torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in b])
        return 1 - (x * y).sum() / (x.norm() * y.norm() + 1e-6)
    tot = torch.zeros((), dtype=torch.float64, device=a[0].device)
    for x, y in zip(a, b):
        if x.dim() >= 2:
            x2, y2 = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
            tot = tot + (1 - (x2 * y2).sum(1) / (x2.norm(dim=1) * y2.norm(dim=1) + 1e-6)).sum()
    return tot


n_pools = 6 if SMALL else 40  # > km._CACHE_SIZE (32) and kt._TABLE_CACHE_SIZE (16): eviction + rebuild
pools = []
for _ in range(n_pools):
    sh = shapes()
    a = [torch.randn(s, device=DEV) for s in sh]
    b = [x + 0.3 * torch.randn_like(x) for x in a]
    st = [torch.randn(s, device=DEV) for s in sh]
    ta = [torch.randn(s, device=DEV) for s in sh]
    tt = [torch.randn(s, device=DEV) for s in sh]
    refs = {m: ref_match(a, b, m) for m in ("ours", "mse", "cos")}
    sd, td, ad = [x.double() for x in st], [x.double() for x in tt], [x.double() for x in ta]
    refs["traj"] = sum(((x - y) ** 2).sum() for x, y in zip(sd, td)) / sum(((x - y) ** 2).sum() for x, y in zip(ad, td))
    pools.append((a, b, st, ta, tt, refs))

streams = [None] + ([torch.cuda.Stream() for _ in range(3)] if DEV == "cuda" else [])
if DEV == "cuda":
    for s in streams[1:]:
        s.wait_stream(torch.cuda.current_stream())
    noise = torch.randn(4096, 4096, device=DEV)
results = []
for _it in range(ITERS):
    p = random.randrange(n_pools)
    what = random.choice(["ours", "mse", "cos", "traj"])
    s = random.choice(streams)
    ctx = torch.cuda.stream(s) if s is not None else torch.autograd.graph.saved_tensors_hooks(lambda x: x, lambda x: x)
    with ctx:
        if DEV == "cuda" and random.random() < 0.05:
            noise @ noise  # perturb scheduling / SM occupancy
        a, b, st, ta, tt, _ = pools[p]
        out = kt.trajectory_loss_fwd(st, ta, tt)[0] if what == "traj" else km.match_loss_fwd(a, b, what)[0]
    results.append((p, what, out))
if DEV == "cuda":
    torch.cuda.synchronize()

bad = 0
first = {}
for p, what, out in results:
    ref = pools[p][5][what]
    if not torch.allclose(out.double(), ref, rtol=1e-4, atol=1e-5):
        bad += 1
        print("MISMATCH", p, what, out.item(), ref.item())
    key = (p, what)
    if key in first and not torch.equal(first[key], out):
        bad += 1
        print("NONDETERMINISTIC", p, what, first[key].item(), out.item())
    first.setdefault(key, out)
for k, v in km._CACHE.items():
    if not k[3] and int(v[1][0]) != 0:  # forward entries: (table, counter view, W, kmax, part, R)
        bad += 1
        print("match_loss counter left at", int(v[1][0]))
for v in kt._TABLE_CACHE.values():
    if len(v) == 5 and int(v[4][0]) != 0:  # forward entries: (table, n_chunks, aligned, partial, counter)
        bad += 1
        print("trajectory counter left at", int(v[4][0]))
print(f"{len(results)} calls on {DEV}, {len(streams)} stream(s), {n_pools} shape sets: {bad} failures")
raise SystemExit(1 if bad else 0)
