"""--logger tensorboard: the training scalars per iteration and the evaluation accuracy as TensorBoard events."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_distill_with_tensorboard_logger(tmp_path):
    pytest.importorskip("tensorboard")
    from pydistill.cli import main

    out = tmp_path / "run"
    rc = main(
        [
            "distill",
            "--method",
            "dm",
            "--dataset",
            "digits",
            "--ipc",
            "1",
            "--iterations",
            "4",
            "--eval-every",
            "2",
            "--eval-epochs",
            "5",
            "--num-eval",
            "1",
            "--no-eval-dsa",
            "--no-progress",
            "--device",
            "cpu",
            "--set",
            "batch_real=8",
            "--logger",
            "tensorboard",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    scalars = _scalars(out / "tensorboard")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s for s, _ in scalars["train/loss"]] == [0, 1, 2, 3]
    assert scalars["train/loss"][-1][1] == pytest.approx(metrics["final_scalars"]["loss"], rel=1e-6)
    evals = scalars["eval/ConvNet/accuracy"]
    assert [s for s, _ in evals] == [2, 4]  # --eval-every 2, then the final evaluation
    assert evals[-1][1] == pytest.approx(metrics["test_acc_mean"], rel=1e-6)


def test_make_logger_errors(tmp_path):
    from pydistill.loggers import make_logger

    assert make_logger("none", tmp_path) is None and make_logger(None, tmp_path) is None
    with pytest.raises(ValueError, match="logger must be one of"):
        make_logger("wandb", tmp_path)
