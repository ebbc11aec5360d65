"""Shared benchmark harness: timing, peak memory, the results table and its record.

Every bench_<op>.py exposes ``run(device: str, quick: bool) -> list[dict]``; each row holds
``op, case, impl, ms, peak_mb`` and optionally ``gbps`` / ``floor_ms`` (memory-bandwidth floor) and
``calls`` (throughput rows). ``run_all.py`` prints the table, computes speedups against the row with
impl == "baseline" of the same (op, case), and writes ``results/<date>-<device>[-tag].{json,md}`` with
device, versions, thread count and date.

Three timings (milliseconds per call):
  ``time_fn``        per call: median of single calls, each synchronised (latency of one call);
  ``time_fn(setup=)``  the same, each call on fresh inputs made by ``setup()`` outside the timed region
                     (e.g. new storage: a cold cache of device address tables);
  ``time_calls``     throughput: ``calls`` back-to-back calls and ONE sync, total / calls (median of a few
                     repeats). On a GPU host-bound code shows here: the host may run ahead of the device.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, device: str, *, warmup: int = 3, iters: int = 20, min_time_s: float = 0.2, setup=None) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, perf_counter on the CPU).

    With ``setup``, every call is ``fn(*setup())`` and ``setup()`` (plus a sync) runs before the timed region.
    """
    call = (lambda: fn(*setup())) if setup is not None else fn
    for _ in range(warmup):
        call()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < iters or (time.perf_counter() - start_all < min_time_s and len(times) < 10 * iters):
        args = ()
        if setup is not None:
            args = setup()
            sync(device)
        if str(device).startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(*args)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t0) * 1e3)
        del args
    return statistics.median(times)


def time_calls(fn, device: str, *, calls: int = 100, repeats: int = 3, warmup: int = 3) -> float:
    """Throughput in milliseconds per call: ``calls`` back-to-back ``fn()`` with one sync at the end (wall
    clock from a synchronised start), median over ``repeats``. Steady state: caches stay warm across calls."""
    if calls < 1 or repeats < 1:
        raise ValueError(f"calls and repeats must be >= 1, got calls={calls}, repeats={repeats}")
    for _ in range(warmup):
        fn()
    per_call = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        per_call.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(per_call)


def peak_memory_mb(fn, device: str) -> float | None:
    """Peak extra device memory (MiB) allocated while running ``fn()`` once; None on the CPU."""
    if not str(device).startswith("cuda"):
        return None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(
    op: str, case: str, impl: str, fn, device: str, *, bytes_moved: int | None = None, calls: int | None = None, **kw
) -> dict:
    """Time and memory of one implementation; ``bytes_moved`` gives GB/s and the bandwidth floor.

    ``calls``: throughput row (``time_calls``, the row records ``calls``); otherwise per call (``time_fn``;
    ``setup=`` makes fresh inputs per call). Other keywords go to the timer.
    """
    if calls is not None:
        kw = {k: v for k, v in kw.items() if k in ("repeats", "warmup")}
        ms = time_calls(fn, device, calls=calls, **kw)
    else:
        ms = time_fn(fn, device, **kw)
    setup = kw.get("setup")
    once = (lambda: fn(*setup())) if setup is not None else fn
    row = {"op": op, "case": case, "impl": impl, "ms": ms, "peak_mb": peak_memory_mb(once, device)}
    if calls is not None:
        row["calls"] = calls
    if bytes_moved is not None:
        row["gbps"] = bytes_moved / (ms * 1e-3) / 1e9
        bw = peak_bandwidth_gbps(device)
        if bw:
            row["floor_ms"] = bytes_moved / (bw * 1e9) * 1e3
    return row


def peak_bandwidth_gbps(device: str) -> float | None:
    """Nominal DRAM bandwidth for known GPUs (GB/s), None otherwise."""
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    table = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}
    for key, bw in table.items():
        if key in name:
            return bw
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    for mod in ("triton", "kornia", "torchrl"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional comparison libraries
            pass
    if str(device).startswith("cuda"):
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def try_row(op: str, case: str, impl: str, fn, device: str, **kw) -> dict | None:
    """Like ``measure`` but returns a row with ``error`` set when ``fn`` raises (e.g. OOM)."""
    try:
        return measure(op, case, impl, fn, device, **kw)
    except Exception as exc:  # noqa: BLE001 - a benchmark row records the failure
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        return {"op": op, "case": case, "impl": impl, "ms": None, "peak_mb": None, "error": type(exc).__name__}


def add_speedups(rows: list[dict]) -> list[dict]:
    base = {(r["op"], r["case"]): r["ms"] for r in rows if r["impl"] == "baseline" and r.get("ms")}
    for r in rows:
        b = base.get((r["op"], r["case"]))
        r["speedup"] = (b / r["ms"]) if (b and r.get("ms")) else None
    return rows


def format_table(rows: list[dict]) -> str:
    head = "| op | case | impl | ms | speedup vs baseline | peak MiB | GB/s | floor ms |"
    lines = [head, "|" + "---|" * 8]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        ms = fmt(r.get("ms"), ".4g") if not r.get("error") else r["error"]
        lines.append(
            f"| {r['op']} | {r['case']} | {r['impl']} | {ms} | {fmt(r.get('speedup'), '.2f')} | "
            f"{fmt(r.get('peak_mb'), '.1f')} | {fmt(r.get('gbps'), '.1f')} | {fmt(r.get('floor_ms'), '.4g')} |"
        )
    return "\n".join(lines)


def record(rows: list[dict], device: str, tag: str = "", note: str = "") -> str:
    """Write rows with the environment (and a free-text ``note``) to benchmarks/results/; returns the .md path."""
    os.makedirs(RESULTS, exist_ok=True)
    env = environment(device)
    if note:
        env["note"] = note
    slug = env["device"].replace(" ", "_").replace("/", "_")
    stem = os.path.join(RESULTS, f"{env['date']}-{slug}{('-' + tag) if tag else ''}")
    with open(stem + ".json", "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(f"# Benchmarks {tag}\n\n")
        f.write("Environment: " + ", ".join(f"{k}={v}" for k, v in env.items() if k != "note") + "\n\n")
        if note:
            f.write(note.strip() + "\n\n")
        f.write(format_table(rows) + "\n")
    return stem + ".md"


def main_one(run, description: str | None = None) -> None:
    """Command line of one bench_<op>.py: ``--device``, ``--quick``, ``--threads``; prints the table (records
    nothing)."""
    import argparse

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    set_threads(args.threads)
    print(format_table(add_speedups(run(args.device, args.quick))))


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` (intra-op CPU threads) unless None; threads must be >= 1."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    torch.set_num_threads(threads)
