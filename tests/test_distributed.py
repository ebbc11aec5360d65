"""torch.distributed on the CPU: 2 gloo processes on 127.0.0.1 against a single-process run with the same seeds."""

import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pydistill import distributed as pdist

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================================ single process
def test_helpers_are_noops_in_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert pdist.init() is False
    assert not pdist.is_initialized() and pdist.is_main()
    assert pdist.get_rank() == 0 and pdist.get_world_size() == 1
    t = torch.arange(5.0)
    assert pdist.all_reduce_(t)[0] is t and torch.equal(t, torch.arange(5.0))
    assert pdist.broadcast_(t)[0] is t
    assert pdist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert pdist.broadcast_object(3) == 3
    pdist.barrier()
    with pdist.main_first():
        pass


def test_sharding_and_seeds():
    assert pdist.shard(list("abcde"), 0, 2) == ["a", "c", "e"]
    assert pdist.shard(list("abcde"), 1, 2) == ["b", "d"]
    assert pdist.shard_indices(5, 1, 3) == [1, 4]
    assert pdist.owner(7, 3) == 1 and pdist.owns(7, 1, 3) and not pdist.owns(7, 0, 3)
    everything = sorted(sum((pdist.shard(range(11), r, 4) for r in range(4)), []))
    assert everything == list(range(11))
    assert pdist.derive_seed(3, 1, 2) == pdist.derive_seed(3, 1, 2) != pdist.derive_seed(3, 2, 1)
    assert 0 <= pdist.derive_seed(2**70, "x") < 2**63
    g1, g2 = pdist.derived_generator("cpu", 0, 4), pdist.derived_generator("cpu", 0, 4)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: pdist.shard([1], 2, 2), "rank"),
        (lambda: pdist.shard([1], 0, 0), "world_size"),
        (lambda: pdist.shard_indices(-1, 0, 1), "n"),
        (lambda: pdist.owner(-1, 2), "i"),
        (lambda: pdist.derive_seed(1.5), "seed"),
        (lambda: pdist.derive_seed(1, 2.5), "keys"),
        (lambda: pdist.all_reduce_([torch.ones(1)], op="max"), "op"),
        (lambda: pdist.all_reduce_([1.0]), "tensors[0]"),
    ],
)
def test_helpers_reject_bad_arguments(call, needle):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "x"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK"),
    ],
)
def test_init_rejects_bad_environment(monkeypatch, env, needle):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=needle):
        pdist.init(device="cpu")


# ============================================================================================ 2 gloo processes
def _tiny_dataset():
    from pydistill.data import load_dataset

    return load_dataset("digits").subset(3, seed=0, n_test_per_class=2)


EVAL_KW = dict(models=("MLP", "ConvNet"), num_eval=3, epochs=2, progress=False, seed=4, model_kwargs={"width": 8})


def _worker(rank, port, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    result = {}
    try:
        assert pdist.init(device="cpu") is True
        assert pdist.get_rank() == rank and pdist.get_world_size() == WORLD and pdist.is_main() == (rank == 0)
        # all_reduce: sum and mean of rank-dependent tensors
        t = torch.full((3,), float(rank + 1))
        pdist.all_reduce_(t)
        result["sum"] = t.tolist()
        m = torch.full((2,), float(rank + 1))
        pdist.all_reduce_(m, op="mean")
        result["mean"] = m.tolist()
        # gradients: a missing grad counts as zeros
        p = torch.zeros(4, requires_grad=True)
        if rank == 1:
            (p * torch.arange(4.0)).sum().backward()
        pdist.all_reduce_grads_([p])
        result["grad"] = p.grad.tolist()
        # broadcast of a "synthetic set" from rank 0
        images = torch.full((2, 1, 2, 2), float(rank))
        pdist.broadcast_(images)
        result["broadcast"] = images.flatten().tolist()
        result["gather"] = pdist.all_gather_object(rank * 10)
        result["object"] = pdist.broadcast_object({"rank": rank})
        # evaluation networks split across ranks, results gathered
        from pydistill.evaluate import evaluate
        from pydistill.synthetic import SyntheticSet

        ds = _tiny_dataset()
        syn = SyntheticSet(ds.x_train[::3].clone(), ds.y_train[::3].clone(), None, {})
        result["eval"] = evaluate(syn, ds, **EVAL_KW)
        with pdist.main_first():
            if pdist.is_main():
                Path(out_dir, "made_by_main").write_text("x")
            result["saw_main_file"] = Path(out_dir, "made_by_main").exists()
        pdist.barrier()
    except Exception:  # noqa: BLE001 - report to the parent
        result["error"] = traceback.format_exc()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        pdist.destroy()


def test_two_gloo_processes(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn")
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r in res:
        assert "error" not in r, r["error"]
    for r in res:
        assert r["sum"] == [3.0, 3.0, 3.0] and r["mean"] == [1.5, 1.5]
        assert r["grad"] == [0.0, 1.0, 2.0, 3.0]
        assert r["broadcast"] == [0.0] * 8
        assert r["gather"] == [0, 10] and r["object"] == {"rank": 0}
        assert r["saw_main_file"]
    # the split evaluation equals the single-process one, network by network
    from pydistill.evaluate import evaluate
    from pydistill.synthetic import SyntheticSet

    torch.set_num_threads(1)
    ds = _tiny_dataset()
    syn = SyntheticSet(ds.x_train[::3].clone(), ds.y_train[::3].clone(), None, {})
    single = evaluate(syn, ds, **EVAL_KW)
    assert res[0]["eval"] == res[1]["eval"] == json.loads(json.dumps(single))


# ============================================================================================ torchrun CLI
def _torchrun(args, out_env=None, nproc=WORLD):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "pydistill",
        *args,
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _single(args):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pydistill", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=500
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_torchrun_refuses_single_process_method(tmp_path):
    """A method that does not shard its work stops with a clear message instead of duplicating it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "pydistill",
        "distill",
        "--method",
        "random",
        "--ipc",
        "1",
        "--dataset",
        "digits",
        "--device",
        "cpu",
        "--no-eval",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "does not split its work" in proc.stderr


# ============================================================================================ sharded methods
TINY = (
    "--dataset",
    "digits",
    "--device",
    "cpu",
    "--no-progress",
    "--no-eval",
    "--seed",
    "2",
    "--set",
    "batch_real=8",
    "--set",
    'model_kwargs={"width": 8}',
)
DSA_ARGS = (
    "distill",
    "--method",
    "dsa",
    "--ipc",
    "2",
    "--iterations",
    "2",
    "--set",
    "outer_loop=2",
    "--set",
    "inner_loop=1",
    *TINY,
)
DM_ARGS = ("distill", "--method", "dm", "--ipc", "2", "--iterations", "3", *TINY)
EXPERT_ARGS = (
    "experts",
    "--dataset",
    "digits",
    "--device",
    "cpu",
    "--num-experts",
    "3",
    "--epochs",
    "3",
    "--width",
    "8",
    "--batch-size",
    "128",
)


def _mtt_args(buffers):
    return (
        "distill",
        "--method",
        "mtt",
        "--ipc",
        "1",
        "--iterations",
        "2",
        "--buffers",
        str(buffers),
        "--set",
        "num_segments=3",
        "--set",
        "syn_steps=3",
        "--set",
        "max_start_epoch=2",
        "--set",
        "expert_epochs=1",
        "--set",
        'model_kwargs={"width": 8}',
        "--dataset",
        "digits",
        # a small image lr, so the image update (lr x gradient averaged over segments in another order)
        # shows the gradient's float-order differences at the tolerance below, not lr_img x them
        "--set",
        "lr_img=0.01",
        "--device",
        "cpu",
        "--no-progress",
        "--no-eval",
    )


def _driver(out: str) -> int:
    """Run under torchrun: several commands in one process group (saves the start-up of one launch each)."""
    from pydistill.cli import main

    torch.set_num_threads(1)
    pdist.init(device="cpu")
    out = Path(out)
    rc = main([*DM_ARGS, "--out", str(out / "dm")])
    rc |= main([*EXPERT_ARGS, "--out", str(out / "experts")])
    rc |= main([*_mtt_args(out / "experts"), "--out", str(out / "mtt")])
    pdist.destroy()
    return rc


def _methods_shard():
    from pydistill.methods import get_method

    missing = [m for m in ("dsa", "dm", "mtt") if not getattr(get_method(m), "supports_distributed", False)]
    if missing:
        pytest.skip(f"methods without distributed support yet: {missing}")


def _load(path):
    from pydistill.synthetic import SyntheticSet

    return SyntheticSet.load(path)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_torchrun_distill_dsa_equals_single_process(tmp_path, one_thread):
    """`torchrun --nproc_per_node 2 -m pydistill distill --method dsa`: classes sharded, image gradients summed;
    the synthetic set equals the one-process run bit for bit (each class's gradient comes from one rank)."""
    _methods_shard()
    from pydistill.cli import main

    _torchrun([*DSA_ARGS, "--out", str(tmp_path / "multi")])
    assert main([*DSA_ARGS, "--out", str(tmp_path / "single")]) == 0
    a, b = _load(tmp_path / "multi" / "synthetic.safetensors"), _load(tmp_path / "single" / "synthetic.safetensors")
    assert torch.equal(a.images, b.images)
    ma = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ma["world_size"] == 2 and ma["final_scalars"] == mb["final_scalars"]


def test_torchrun_dm_experts_mtt_equal_single_process(tmp_path, one_thread):
    _methods_shard()
    from pydistill.cli import main

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(k, None)
    multi = tmp_path / "multi"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(Path(__file__).resolve()),
        "--driver",
        str(multi),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    single = tmp_path / "single"
    assert main([*DM_ARGS, "--out", str(single / "dm")]) == 0
    assert main([*EXPERT_ARGS, "--out", str(single / "experts")]) == 0
    assert main([*_mtt_args(single / "experts"), "--out", str(single / "mtt")]) == 0

    # DM: classes sharded, exact
    assert torch.equal(
        _load(multi / "dm" / "synthetic.safetensors").images, _load(single / "dm" / "synthetic.safetensors").images
    )
    # experts: expert i trained on rank i % 2, each seeded from (seed, i) only
    from safetensors.torch import load_file

    files = sorted(p.name for p in (single / "experts").glob("expert_*.safetensors"))
    assert len(files) == 3 and files == sorted(p.name for p in (multi / "experts").glob("expert_*.safetensors"))
    for name in files:
        assert torch.equal(
            load_file(str(multi / "experts" / name))["trajectory"],
            load_file(str(single / "experts" / name))["trajectory"],
        )
    # MTT: segments split over ranks, gradients averaged: equal within float tolerance. The two iterations move
    # the images by up to 0.82 (mean 0.064); summing the segment gradients in another order left 7.1e-6 (1e-5 of
    # that update) on this CPU's float32 kernels, so the bound is 2e-5: a segment lost or counted twice moves
    # images by O(0.1) and still fails.
    a, b = _load(multi / "mtt" / "synthetic.safetensors"), _load(single / "mtt" / "synthetic.safetensors")
    torch.testing.assert_close(a.images, b.images, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(a.lr, b.lr, rtol=2e-5, atol=0)  # 4.1e-6 measured, same float order


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--driver":
    sys.exit(_driver(sys.argv[2]))
