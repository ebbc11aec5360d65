"""Nothing a user made is lost, nothing foreign runs (issue #16): run-folder locks with two real processes, a real
SIGINT to a running `pydistill distill` (checkpoint, one line, exit 130, bit-exact resume), planted pickle
payloads that never run, diverged runs, edited synthetic-set headers, unwritable outputs, --ipc above a class's
size and the --set / flag precedence rule."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pydistill.cli import main
from pydistill.runner import CHECKPOINT
from pydistill.synthetic import CorruptFileError, SyntheticSet
from pydistill.utils import CorruptCheckpointError, FolderLockedError, RunLock, StopSignal, load_checked, save_checked

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
DM = [
    "distill",
    "--method",
    "dm",
    "--dataset",
    "digits",
    "--ipc",
    "1",
    "--no-eval",
    "--no-progress",
    "--device",
    "cpu",
    "--seed",
    "5",
    "--set",
    "batch_real=8",
    "--set",
    'model_kwargs={"width": 8}',
]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("WORLD_SIZE", None)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended early (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def run_cli(capsys):
    def run(*argv):
        rc = main([str(a) for a in argv])
        return rc, capsys.readouterr().err

    return run


# ============================================================================== lock + SIGINT (real processes)
def test_second_run_refuses_locked_out_and_sigint_checkpoints_a_resumable_run(tmp_path, run_cli):
    """Run A (a subprocess) holds OUT; run B (this process) on OUT refuses naming A's pid; SIGINT to A finishes
    its iteration, writes a checkpoint (none was due: --checkpoint-every 100000), prints one line and exits 130;
    continuing from that checkpoint gives, bit for bit, what an uninterrupted run gives."""
    out = tmp_path / "a"
    argv = [*DM, "--iterations", "100000", "--checkpoint-every", "100000", "--out", str(out)]
    a = subprocess.Popen(
        [sys.executable, "-m", "pydistill", *argv],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(out / RunLock.LOCK_NAME, a)
        rc, err = run_cli(*argv)
        assert rc == 2, err
        assert f"in use by pid {a.pid}" in err and len(err.strip().splitlines()) == 1, err
        time.sleep(2.0)  # A iterates meanwhile (~0.1 s per iteration)
        assert a.poll() is None, "run A ended early"
        assert not (out / CHECKPOINT).exists()
        a.send_signal(signal.SIGINT)
        _, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "rerun the same command to resume" in err.lower(), err[-2000:]
    assert not (out / RunLock.LOCK_NAME).exists(), "the lock was not released"
    assert not (out / "synthetic.safetensors").exists()
    at = int(load_checked(out / CHECKPOINT)["iteration"])
    assert at >= 1, "no iteration was finished before the checkpoint"
    assert f"after iteration {at}/" in err

    # DM is extendable: the interrupted folder continues to at + 2 iterations; a fresh run goes straight there
    rc, err = run_cli(*DM, "--iterations", at + 2, "--out", out)
    assert rc == 0, err
    assert json.loads((out / "metrics.json").read_text())["resumed_from_iteration"] == at
    rc, err = run_cli(*DM, "--iterations", at + 2, "--out", tmp_path / "fresh")
    assert rc == 0, err
    got = SyntheticSet.load(out / "synthetic.safetensors").images
    ref = SyntheticSet.load(tmp_path / "fresh" / "synthetic.safetensors").images
    assert torch.equal(got, ref), "the run resumed after SIGINT differs from the uninterrupted one"


def test_lock_names_live_owner_and_stale_lock_of_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pydistill.utils import RunLock; "
            f"RunLock({str(tmp_path)!r}, command='holder').acquire(); print('locked', flush=True); "
            "time.sleep(300)",
        ],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError) as info:
            RunLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(info.value) and "holder" in str(info.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    lock_file = tmp_path / RunLock.LOCK_NAME
    assert str(holder.pid) in lock_file.read_text(), "a killed owner leaves its (stale) lock file"
    with RunLock(tmp_path):  # the dead owner's lock is taken over
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with RunLock(tmp_path):  # re-entrant within one process
            pass
        assert lock_file.exists()
    assert not lock_file.exists()


# ============================================================================== safe loading
class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant(path: Path, marker: Path, *, sealed: bool) -> None:
    import io

    from pydistill import utils

    state = {"format": "pydistill-checkpoint-v2", "evil": _Payload(marker)}
    buf = io.BytesIO()
    torch.save({**state, "sha256": utils.state_digest(state)}, buf)
    data = buf.getvalue()
    path.write_bytes(utils._seal(data) if sealed else data)  # a correct seal: integrity alone does not stop it


@pytest.mark.parametrize("sealed", [False, True])
def test_planted_pickle_payload_never_runs(tmp_path, run_cli, sealed):
    marker = tmp_path / "payload_ran"
    probe = tmp_path / "probe.pt"
    _plant(probe, marker, sealed=False)
    torch.load(probe, weights_only=False)  # positive control: a plain unpickling runs it
    assert marker.exists()
    marker.rmdir()

    out = tmp_path / "run"
    out.mkdir()
    _plant(out / CHECKPOINT, marker, sealed=sealed)
    with pytest.raises(CorruptCheckpointError, match="weights_only"):
        load_checked(out / CHECKPOINT)
    rc, err = run_cli(
        "distill",
        "--method",
        "random",
        "--ipc",
        "1",
        "--dataset",
        "digits",
        "--device",
        "cpu",
        "--no-progress",
        "--no-eval",
        "--out",
        out,
    )
    assert rc == 2 and str(out / CHECKPOINT) in err, err
    from pydistill.methods.ssdkd import load_teacher

    with pytest.raises(CorruptCheckpointError):
        load_teacher(str(out / CHECKPOINT))
    assert not marker.exists(), "code from a planted checkpoint ran"


def test_checkpoints_are_sealed_on_their_bytes(tmp_path):
    """The SHA-256 of the raw bytes is checked before torch.load sees them; a plain torch.load still reads it."""
    path = tmp_path / "c.pt"
    save_checked({"x": torch.arange(4.0), "log": [1, 2]}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(4.0))
    data = bytearray(path.read_bytes())
    data[-1] = ord("0") if data[-1] != ord("0") else ord("1")  # only the recorded digest changes
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="SHA-256 of its bytes"):
        load_checked(path)


# ============================================================================== divergence
@dataclass
class DivergingConfig:
    iterations: int = 8
    lr_img: float = 0.5


def _diverging_method(dataset, bad_at):
    from pydistill.methods.base import Method

    class Diverging(Method):
        """Its images become NaN at iteration ``bad_at``."""

        name = "diverging"
        Config = DivergingConfig

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.images = torch.zeros(self.dataset.num_classes, self.dataset.channel, *self.dataset.im_size)
            self.labels = torch.arange(self.dataset.num_classes)

        @property
        def num_iterations(self):
            return self.config.iterations

        def step(self, it):
            self.images += float("nan") if it == bad_at else 0.1
            return {"loss": float(self.images.mean())}

        def synthetic_set(self):
            return SyntheticSet(self.images.clone(), self.labels.clone(), None, {})

        def state_dict(self):
            return {**super().state_dict(), "images": self.images.clone()}

        def load_state_dict(self, sd):
            super().load_state_dict(sd)
            self.images.copy_(sd["images"])

    return Diverging(dataset, 1)


def test_diverged_run_stops_keeps_last_finite_checkpoint_and_writes_no_result(tmp_path):
    from pydistill.data import load_dataset
    from pydistill.runner import DivergedError, run_distillation

    ds = load_dataset("digits").subset(2, seed=0, n_test_per_class=2)
    with pytest.raises(DivergedError) as info:
        run_distillation(
            _diverging_method(ds, bad_at=5), tmp_path, checkpoint_every=2, progress=False, final_eval=False
        )
    msg = str(info.value)
    assert "iteration 5" in msg and "lr_img=0.5" in msg and "iteration 4" in msg, msg
    ck = load_checked(tmp_path / CHECKPOINT)
    assert ck["iteration"] == 4 and torch.isfinite(ck["method"]["images"]).all()
    assert not (tmp_path / "synthetic.safetensors").exists() and not (tmp_path / "metrics.json").exists()


def test_cli_diverged_run_is_an_error_not_a_result(tmp_path, run_cli):
    rc, err = run_cli(*DM, "--iterations", "3", "--set", "lr_img=1e30", "--out", tmp_path)
    assert rc == 2 and "diverged at iteration" in err and "lr_img=1e+30" in err, err
    assert not (tmp_path / "synthetic.safetensors").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "lr_img=inf"], "lr_img=inf is not finite"),
        (["--set", "lr_img=nan"], "lr_img=nan is not finite"),
        (["--eval-epochs", "0"], "--eval-epochs"),
        (["--set", "iterations=-2"], "iterations=-2"),
    ],
)
def test_impossible_values_are_rejected_before_any_work(tmp_path, run_cli, args, needle):
    rc, err = run_cli(*DM, "--iterations", "2", *args, "--out", tmp_path)
    assert rc == 2 and needle in err, err
    assert not (tmp_path / CHECKPOINT).exists()


def test_negative_epochs_rejected(tmp_path, run_cli):
    rc, err = run_cli(
        "distill",
        "--method",
        "dd",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "epochs=-1",
        "--out",
        tmp_path,
    )
    assert rc == 2 and "epochs=-1 is negative" in err, err


# ============================================================================== synthetic-set metadata
def _rewrite_meta(path: Path, edit) -> None:
    """Rewrite the safetensors header of ``path`` with ``edit(meta_dict)`` applied (tensor bytes unchanged)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["meta"])
    edit(meta)
    header["__metadata__"]["meta"] = json.dumps(meta, sort_keys=True)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


def test_edited_header_is_refused(tmp_path, run_cli):
    from pydistill.data import load_dataset

    ds = load_dataset("digits")
    path = tmp_path / "s.safetensors"
    SyntheticSet(ds.x_train[:10].clone(), ds.y_train[:10].clone(), None, {"dataset": "digits", "zca": False}).save(path)
    assert SyntheticSet.load(path).meta["zca"] is False
    _rewrite_meta(path, lambda m: m.update(zca=True))
    with pytest.raises(CorruptFileError, match="edited or damaged"):
        SyntheticSet.load(path)
    rc, err = run_cli("evaluate", "--synthetic", path, "--device", "cpu", "--no-progress")
    assert rc == 2 and "edited or damaged" in err, err


def test_version_1_set_still_loads_with_a_warning(tmp_path):
    """Files written before the checksum covered the metadata (version 1) are not lost: they load, warned."""
    from safetensors.torch import save

    from pydistill import synthetic

    tensors = {"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 1])}
    meta = {
        "format": "pydistill.SyntheticSet",
        "version": "1",
        "sha256": synthetic._digest(tensors),
        "meta": json.dumps({"dataset": "digits"}),
    }
    path = tmp_path / "v1.safetensors"
    path.write_bytes(save(tensors, metadata=meta))
    with pytest.warns(UserWarning, match="not covered by the checksum"):
        assert SyntheticSet.load(path).meta == {"dataset": "digits"}


def test_evaluate_refuses_other_dataset_unless_forced(tmp_path, run_cli):
    from pydistill.data import load_dataset

    ds = load_dataset("digits")
    path = tmp_path / "s.safetensors"
    SyntheticSet(ds.x_train[:10].clone(), ds.y_train[:10].clone(), None, {"dataset": "mnist"}).save(path)
    argv = [
        "evaluate",
        "--synthetic",
        path,
        "--dataset",
        "digits",
        "--device",
        "cpu",
        "--no-progress",
        "--eval-models",
        "MLP",
        "--num-eval",
        "1",
        "--eval-epochs",
        "1",
        "--no-eval-dsa",
    ]
    rc, err = run_cli(*argv)
    assert rc == 2 and "'mnist'" in err and "--force" in err, err
    rc, err = run_cli(*argv, "--force")
    assert rc == 0, err


# ============================================================================== outputs, ipc, overrides
def test_bad_out_paths_get_one_line_errors_before_work(tmp_path, run_cli):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, needle in (
        ("", "--out must name a folder"),
        (afile, "is an existing file"),
        (afile / "sub", "cannot create folder"),
    ):
        rc, err = run_cli(*DM, "--iterations", "1", "--out", out)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    rc, err = run_cli("evaluate", "--synthetic", tmp_path / "missing.safetensors", "--out", tmp_path)
    assert rc == 2 and "is a folder" in err, err
    rc, err = run_cli("baseline", "--kind", "full", "--dataset", "digits", "--out", tmp_path)
    assert rc == 2 and "is a folder" in err, err
    rc, err = run_cli("experts", "--dataset", "digits", "--out", afile)
    assert rc == 2 and "is an existing file" in err, err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_refused_before_work(tmp_path, run_cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err = run_cli(*DM, "--iterations", "1", "--out", ro)
        assert rc == 2 and "cannot write" in err, err
    finally:
        ro.chmod(0o755)


def test_ipc_above_class_size_is_refused_or_warned(tmp_path, run_cli):
    base = ["distill", "--method", "random", "--dataset", "digits", "--device", "cpu", "--no-progress", "--no-eval"]
    rc, err = run_cli(*base, "--ipc", "100000", "--out", tmp_path / "a")
    assert rc == 2 and "class 0: 143" in err and "--allow-repeat" in err, err
    rc, err = run_cli("baseline", "--kind", "random", "--ipc", "100000", "--dataset", "digits", "--device", "cpu")
    assert rc == 2 and "smallest 140" in err, err
    rc, err = run_cli(*base, "--ipc", "141", "--allow-repeat", "--out", tmp_path / "b")
    assert rc == 0 and "warning" in err and "--allow-repeat" in err, err
    assert len(SyntheticSet.load(tmp_path / "b" / "synthetic.safetensors")) == 140 + 9 * 141  # random: capped
    rc, err = run_cli(*DM, "--ipc", "141", "--iterations", "1", "--set", "init=noise", "--out", tmp_path / "c")
    assert rc == 0 and "warning" not in err, err  # noise images: nothing real to repeat


def test_set_and_flag_precedence_is_one_rule(tmp_path, run_cli):
    from pydistill.config_overrides import make_config, parse_overrides
    from pydistill.methods import get_method

    dm = get_method("dm")
    assert make_config(dm, "digits", 1, iterations=3, overrides={"iterations": 3}).iterations == 3  # same: fine
    with pytest.raises(ValueError, match="--iterations 3 and --set iterations=5"):
        make_config(dm, "digits", 1, iterations=3, overrides={"iterations": 5})
    with pytest.raises(ValueError, match="given twice"):
        parse_overrides(dm.Config, ["lr_img=1", "lr_img=2"])
    rc, err = run_cli(*DM, "--iterations", "3", "--set", "iterations=5", "--out", tmp_path)
    assert rc == 2 and "give only one" in err, err
    for bad, needle in (('model_kwargs={"width":"abc"}', "model_kwargs"), ("outer_loop=-1", "outer_loop=-1")):
        rc, err = run_cli(
            "distill",
            "--method",
            "dsa",
            "--dataset",
            "digits",
            "--ipc",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            bad,
            "--out",
            tmp_path,
        )
        assert rc == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / CHECKPOINT).exists()


# ============================================================================== train-diffusion: graceful stop
def test_train_diffusion_sigint_saves_state_and_resumes_exactly(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    from pydistill.diffusion.train import STATE_FILE, train_diffusion

    kw = dict(steps=6, batch_size=16, n_per_class=4, checkpoint_every=100, progress=False, device="cpu", width=8)
    train_diffusion("digits", tmp_path / "full", **kw)
    real_clip, calls = torch.nn.utils.clip_grad_norm_, []

    def clip_then_sigint(*a, **k):  # a real SIGINT to this process during optimizer step 3
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_clip(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_sigint)
    with pytest.raises(StopSignal) as info:
        train_diffusion("digits", tmp_path / "part", **kw)
    assert info.value.exit_code == 130 and "step 3/6" in info.value.message
    assert load_checked(tmp_path / "part" / STATE_FILE)["step"] == 3
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    train_diffusion("digits", tmp_path / "part", **kw)
    a = load_checked(tmp_path / "part" / STATE_FILE)
    b = load_checked(tmp_path / "full" / STATE_FILE)
    assert a["losses"] == b["losses"]
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in b["ema"])


def test_evaluate_sigterm_keeps_finished_networks_and_exits_143(tmp_path, run_cli, monkeypatch):
    """A real SIGTERM during `evaluate` ends it with one line and 143; the finished network's record is kept
    and a rerun trains only the rest."""
    import pydistill.evaluate as ev
    from pydistill.data import load_dataset

    ds = load_dataset("digits")
    path = tmp_path / "s.safetensors"
    SyntheticSet(ds.x_train[:20].clone(), ds.y_train[:20].clone(), None, {"dataset": "digits"}).save(path)
    argv = [
        "evaluate",
        "--synthetic",
        path,
        "--device",
        "cpu",
        "--no-progress",
        "--eval-models",
        "MLP",
        "--num-eval",
        "3",
        "--eval-epochs",
        "1",
        "--no-eval-dsa",
        "--out",
        tmp_path / "r.json",
    ]
    real_train, calls = ev.train_model, []

    def sigterm_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_train(*a, **k)

    monkeypatch.setattr(ev, "train_model", sigterm_on_second)
    rc, err = run_cli(*argv)
    assert rc == 143 and "SIGTERM" in err and "resume" in err and len(err.strip().splitlines()) == 1, err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the SIGTERM handler was not restored"
    assert len(list((tmp_path / "r.json.progress").glob("net_*.json"))) == 1
    calls.clear()
    monkeypatch.setattr(ev, "train_model", lambda *a, **k: (calls.append(1), real_train(*a, **k))[1])
    rc, err = run_cli(*argv)
    assert rc == 0 and len(calls) == 2, err
