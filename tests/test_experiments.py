"""Experiments x networks (the official statistic): pooling, MTT's best set per run, run_experiments, the CLI."""

import json

import numpy as np
import pytest
import torch

from pydistill.cli import experiment_statistic, main
from pydistill.data import load_dataset
from pydistill.experiments import experiment_accuracies, pool_experiments, run_experiments
from pydistill.methods.base import Method
from pydistill.synthetic import SyntheticSet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("digits").subset(3, seed=0, n_test_per_class=3)


def _res(accs, **spec):
    return {"ConvNet": {"accs": accs, **spec}}


def test_pool_is_mean_and_population_std_of_all_networks():
    exps = [_res([0.5, 0.7], protocol="paper", epochs=300), _res([0.9, 0.6]), _res([0.8, 0.8])]
    pooled = pool_experiments(exps)["ConvNet"]
    everything = [0.5, 0.7, 0.9, 0.6, 0.8, 0.8]
    assert pooled["accs"] == everything  # experiment by experiment
    assert pooled["mean"] == pytest.approx(sum(everything) / 6)
    var = sum((a - sum(everything) / 6) ** 2 for a in everything) / 6  # np.std: population, as officially
    assert pooled["std"] == pytest.approx(var**0.5)
    # not the std of the experiment means (0.6, 0.75, 0.8)
    assert pooled["std"] != pytest.approx(float(np.std([0.6, 0.75, 0.8])))
    assert [e["mean"] for e in pooled["per_experiment"]] == pytest.approx([0.6, 0.75, 0.8])
    assert pooled["experiments"] == 3 and pooled["statistic"].startswith("mean +- std over 3 experiments x 2 networks")
    assert (pooled["protocol"], pooled["epochs"]) == ("paper", 300)


def test_pool_refuses_mismatched_experiments():
    with pytest.raises(ValueError, match="at least one"):
        pool_experiments([])
    with pytest.raises(ValueError, match="evaluated models"):
        pool_experiments([_res([0.5]), {"MLP": {"accs": [0.4]}}])
    with pytest.raises(ValueError, match="no accuracies"):
        pool_experiments([_res([0.5]), _res([])])


def test_experiment_accuracies_best_and_final():
    metrics = {
        "iterations": 10,
        "accuracies": _res([0.6, 0.6]),
        "best_eval": {"iteration": 5, "eval_acc": 0.8, "eval_accs": [0.7, 0.9], "eval_model": "ConvNet"},
    }
    assert experiment_accuracies(metrics, "final")["ConvNet"]["accs"] == [0.6, 0.6]
    best = experiment_accuracies(metrics, "best")["ConvNet"]
    assert best["accs"] == [0.7, 0.9] and best["iteration"] == 5
    metrics["best_eval"] = {"iteration": 10, "eval_acc": 0.6, "eval_accs": [0.6, 0.6], "eval_model": "ConvNet"}
    assert experiment_accuracies(metrics, "best")["ConvNet"]["accs"] == [0.6, 0.6]  # the final set was the best
    with pytest.raises(ValueError, match="no final evaluation"):
        experiment_accuracies({"accuracies": {}}, "final")
    with pytest.raises(ValueError, match="statistic"):
        experiment_accuracies(metrics, "median")


class Scored(Method):
    """Images hold (seed, step); the fake evaluation scores a set by them, so pooling can be checked exactly."""

    name = "scored"
    num_iterations = 3

    def __init__(self, dataset, ipc, **kw):
        super().__init__(dataset, ipc, **kw)
        self.images = torch.zeros(dataset.num_classes * ipc, dataset.channel, *dataset.im_size)
        self.images[:, 0, 0, 0] = float(self.seed)
        self.steps = 0

    def step(self, it):
        self.steps += 1
        self.images[:, 0, 0, 1] = float(self.steps)
        return {"loss": 0.0}

    def synthetic_set(self):
        labels = torch.arange(self.dataset.num_classes).repeat_interleave(self.ipc)
        return SyntheticSet(self.images.clone(), labels, None, {"method": self.name, "ipc": self.ipc})

    def state_dict(self):
        return {**super().state_dict(), "images": self.images.clone(), "steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.images, self.steps = state["images"].clone(), state["steps"]


@pytest.fixture
def fake_eval(monkeypatch):
    """evaluate() -> two networks scoring (seed, step, eval seed): step 2 is each run's best evaluation."""
    import pydistill.evaluate as ev

    calls = []

    def fake(syn, dataset, *, seed=0, num_eval=2, **kw):
        s, step = int(syn.images[0, 0, 0, 0]), int(syn.images[0, 0, 0, 1])
        calls.append((s, step, seed))
        base = {1: 0.2, 2: 0.9, 3: 0.5}[step] + 0.01 * s
        accs = [base + 0.001 * seed + 0.0001 * i for i in range(num_eval)]
        return {"ConvNet": {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "accs": accs, "epochs": 7}}

    monkeypatch.setattr(ev, "evaluate", fake)
    return calls


def test_run_experiments_pools_runs_with_their_own_seeds_and_resumes(tiny, tmp_path, fake_eval):
    make = lambda seed: Scored(tiny, 1, seed=seed)  # noqa: E731
    kw = dict(experiments=3, seed=10, checkpoint_every=1, progress=False, eval_kwargs={"seed": 4, "num_eval": 2})
    result = run_experiments(make, tmp_path, **kw)
    # experiment k: method seed 10 + k, evaluation seed 4 + k, its final set (step 3)
    assert sorted(c for c in fake_eval if c[1] == 3) == [(10, 3, 4), (11, 3, 5), (12, 3, 6)]
    want = [0.5 + 0.01 * (10 + k) + 0.001 * (4 + k) + 0.0001 * i for k in range(3) for i in range(2)]
    pooled = result["accuracies"]["ConvNet"]
    assert pooled["accs"] == pytest.approx(want)
    assert pooled["mean"] == pytest.approx(np.mean(want)) and pooled["std"] == pytest.approx(np.std(want))
    assert [r["seed"] for r in result["experiments"]] == [10, 11, 12]
    for k in range(3):
        sub = json.loads((tmp_path / f"exp-{k}" / "metrics.json").read_text())
        assert sub["seed"] == 10 + k and sub["accuracies"]["ConvNet"]["accs"] == pytest.approx(want[2 * k : 2 * k + 2])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["accuracies"]["ConvNet"]["accs"] == pytest.approx(want)
    assert (tmp_path / "experiments.png").stat().st_size > 0
    # rerun: every experiment is finished, nothing is distilled again, the same pooled result
    fake_eval.clear()
    stamps = [(tmp_path / f"exp-{k}" / "checkpoint.pt").stat().st_mtime_ns for k in range(3)]
    again = run_experiments(make, tmp_path, **kw)
    assert [(tmp_path / f"exp-{k}" / "checkpoint.pt").stat().st_mtime_ns for k in range(3)] == stamps
    assert again["accuracies"]["ConvNet"]["accs"] == pytest.approx(want)
    assert all(json.loads((tmp_path / f"exp-{k}" / "metrics.json").read_text())["iterations"] == 3 for k in range(3))


def test_run_experiments_best_statistic_takes_each_runs_best_evaluation(tiny, tmp_path, fake_eval):
    make = lambda seed: Scored(tiny, 1, seed=seed)  # noqa: E731
    result = run_experiments(
        make, tmp_path, experiments=2, statistic="best", eval_every=1, progress=False, eval_kwargs={"num_eval": 2}
    )
    want = [0.9 + 0.01 * k + 0.001 * k + 0.0001 * i for k in range(2) for i in range(2)]  # step 2 of each run
    assert result["accuracies"]["ConvNet"]["accs"] == pytest.approx(want)
    assert [r["iteration"] for r in result["experiments"]] == [2, 2]
    assert "best evaluated set" in result["accuracies"]["ConvNet"]["statistic"]


def test_run_experiments_refuses_bad_arguments(tiny, tmp_path):
    make = lambda seed: Scored(tiny, 1, seed=seed)  # noqa: E731
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="experiments must be an int"):
            run_experiments(make, tmp_path, experiments=bad)
    with pytest.raises(ValueError, match="final_eval"):
        run_experiments(make, tmp_path, experiments=2, final_eval=False)
    with pytest.raises(ValueError, match="statistic"):
        run_experiments(make, tmp_path, experiments=2, statistic="mean")


def test_cli_statistic_choice_and_bad_flags(tmp_path, capsys):
    assert experiment_statistic("auto", "mtt", 100) == "best"
    assert experiment_statistic("auto", "mtt", None) == "final"
    assert experiment_statistic("auto", "dc", 10) == "final"
    assert experiment_statistic("final", "mtt", 100) == "final"
    base = ["distill", "--method", "random", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "o")]
    assert main(base + ["--experiments", "0"]) == 2
    assert "--experiments must be >= 1" in capsys.readouterr().err
    assert main(base + ["--experiments", "2", "--no-eval"]) == 2
    assert "--no-eval" in capsys.readouterr().err
    assert main(base + ["--experiments", "2", "--statistic", "best"]) == 2
    assert "--eval-every" in capsys.readouterr().err


def test_cli_experiments_end_to_end(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["distill", "--method", "random", "--dataset", "digits", "--ipc", "1", "--out", str(out)]
    args += ["--experiments", "2", "--num-eval", "2", "--eval-epochs", "3", "--no-progress"]
    assert main(args) == 0
    assert "over 4 models" in capsys.readouterr().out
    pooled = json.loads((out / "metrics.json").read_text())["accuracies"]["ConvNet"]
    subs = [json.loads((out / f"exp-{k}" / "metrics.json").read_text()) for k in range(2)]
    assert pooled["accs"] == subs[0]["accuracies"]["ConvNet"]["accs"] + subs[1]["accuracies"]["ConvNet"]["accs"]
    # two experiments are two different random subsets
    sets = [SyntheticSet.load(out / f"exp-{k}" / "synthetic.safetensors") for k in range(2)]
    assert not torch.equal(sets[0].images, sets[1].images)
    assert pooled["statistic"].startswith("mean +- std over 2 experiments x 2 networks")


def test_cli_evaluate_pools_several_sets(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["distill", "--method", "random", "--dataset", "digits", "--ipc", "1", "--out", str(out)]
    assert main(args + ["--experiments", "2", "--num-eval", "2", "--eval-epochs", "3", "--no-progress"]) == 0
    sets = [str(out / f"exp-{k}" / "synthetic.safetensors") for k in range(2)]
    ev = ["evaluate", "--num-eval", "2", "--eval-epochs", "3", "--no-progress"]
    assert main(ev + ["--synthetic", *sets, "--out", str(tmp_path / "pooled.json")]) == 0
    pooled = json.loads((tmp_path / "pooled.json").read_text())["ConvNet"]
    # set k is evaluated with seed k, as experiment k of distill --experiments: the same networks, same accuracies
    want = json.loads((out / "metrics.json").read_text())["accuracies"]["ConvNet"]["accs"]
    assert pooled["accs"] == pytest.approx(want) and pooled["experiments"] == 2
    single = ev + ["--synthetic", sets[1], "--seed", "1", "--out", str(tmp_path / "one.json")]
    assert main(single) == 0
    assert json.loads((tmp_path / "one.json").read_text())["ConvNet"]["accs"] == pytest.approx(want[2:])
    capsys.readouterr()
    other = tmp_path / "other"
    assert (
        main(
            [
                "distill",
                "--method",
                "random",
                "--dataset",
                "digits",
                "--ipc",
                "1",
                "--zca",
                "--no-eval",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    assert main(ev + ["--synthetic", sets[0], str(other / "synthetic.safetensors")]) == 2
    assert "must share them" in capsys.readouterr().err
