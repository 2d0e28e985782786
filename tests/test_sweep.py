"""tools/sweep.py: an Optuna study whose trials are ordinary run folders, pruned by a hook, resumable."""
import csv
import importlib.util
import os
import signal
import threading
from pathlib import Path

import pytest
import yaml

from conftest import TINY, call_script, forked, needs_fork, wait_until
from engine import storage
from engine.config import load_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("optuna") is None,
                                reason="optuna is absent; pip install -r requirements-extras.txt")


def sweep_file(folder, **changes) -> str:
    sweep = {"name": "tiny", "overrides": [*TINY, "train.epochs=3"], "trials": 4, "seed": 0,
             "space": {"train.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True},
                       "model.activation": ["relu", "sigmoid"]}, **changes}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return str(folder / "sweep.yaml")


def trials(folder) -> list[dict]:
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_sweep_runs_prunes_reports_and_continues(tmp_path):
    from tools import sweep

    code, out, err = call_script(sweep.main, sweep_file(tmp_path), cwd=tmp_path)
    assert code == 0, err
    folder = tmp_path / "checkpoints" / "sweeps" / "tiny"
    rows = trials(folder)
    assert [row["trial"] for row in rows] == ["0", "1", "2", "3"] and out.count("trial ") >= 4
    states = {row["state"] for row in rows}
    assert states <= {"complete", "pruned"} and "pruned" in states and "complete" in states
    for row in rows:  # every trial an ordinary run folder; a pruned one says where it stopped
        run_dir = folder / f"tiny-{row['trial']}"
        assert (run_dir / "best.pt").is_file() and (run_dir / "config.yaml").is_file()
        assert (run_dir / ("PRUNED.txt" if row["state"] == "pruned" else "MODEL_CARD.md")).is_file()
    best = load_config(folder / "best.yaml", [])
    assert best.run.name == "" and best.run.output_dir == "checkpoints" and best.train.epochs == 3
    assert max(float(row["accuracy"]) for row in rows if row["state"] == "complete") == pytest.approx(
        float(next(r["accuracy"] for r in rows if f"best: trial {r['trial']}," in out)))
    assert (folder / "history.png").is_file() and (folder / "study.log").is_file()

    code, out, err = call_script(sweep.main, sweep_file(tmp_path), "--trials", "5", cwd=tmp_path)
    assert code == 0, err
    again = trials(folder)
    assert [row["trial"] for row in again] == ["0", "1", "2", "3", "4"]  # the study continued
    assert "trial 4:" in out and "trial 0:" not in out
    assert again[4]["train.lr"] not in [row["train.lr"] for row in rows]  # not the first trial's point again


def test_list_valued_choices_and_a_metric_the_data_lacks(tmp_path):
    from tools import sweep

    space = {"model.hidden": [[16], [16, 8]]}
    code, out, err = call_script(sweep.main, sweep_file(tmp_path, space=space, trials=2), cwd=tmp_path)
    assert code == 0, err
    rows = trials(tmp_path / "checkpoints" / "sweeps" / "tiny")
    assert sorted({row["model.hidden"] for row in rows}) <= ["[16, 8]", "[16]"] and len(rows) == 2
    code, out, err = call_script(sweep.main, sweep_file(tmp_path, name="m", metric="map"), cwd=tmp_path)
    assert code == 2 and "metric: map is not measured on this data; use one of loss" in err


@pytest.mark.parametrize("change, message", [
    ({"sampler": "grid"}, "sampler: 'grid' is not allowed; use one of tpe | random"),
    ({"metric": "speed"}, "metric: 'speed' is not allowed; use one of loss | accuracy"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "space.train.lr: needs low < high"),
    ({"space": {"train.lrr": [0.1]}}, "unknown config key 'train.lrr'; did you mean 'lr'?"),
    ({"space": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "and low > 0 on a log scale"),
    ({"trails": 3}, "unknown config key 'trails'; did you mean 'trials'?"),
])
def test_a_bad_sweep_file_is_one_line_naming_the_key(tmp_path, change, message):
    from tools import sweep

    code, out, err = call_script(sweep.main, sweep_file(tmp_path, **change), cwd=tmp_path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written



def worker(tmp_path, spec: str, name: str, crash_at: str = "") -> int:
    """tools/sweep.py in a forked child (no second start-up of torch); its output goes to tmp_path/<name>.out|err.
    crash_at: the child kills itself with SIGKILL there (engine.storage.CRASH_ENV)."""
    import optuna.importance  # noqa: F401 -- imported once here rather than in each child: seconds each
    from tools import sweep

    def work():
        if crash_at:
            os.environ[storage.CRASH_ENV] = crash_at
        code, out, err = call_script(sweep.main, spec, cwd=tmp_path)
        (tmp_path / f"{name}.out").write_text(out)
        (tmp_path / f"{name}.err").write_text(err)
        os._exit(code)
    return forked(work)


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@needs_fork
def test_a_sweep_stopped_killed_and_finished_by_two_workers_runs_each_trial_once(tmp_path, one_thread):
    """SIGTERM mid-trial, then kill -9 mid-trial, then two workers at once: the study ends with exactly the asked
    trials finished, each stopped trial continued from its last.pt in its own folder, no epoch trained twice."""
    spec = sweep_file(tmp_path, trials=4, pruner="none", sampler="random",
                      overrides=[*TINY, "train.batch_size=32", one_thread])
    folder = tmp_path / "checkpoints" / "sweeps" / "tiny"

    pid = worker(tmp_path, spec, "first")
    wait_until(lambda: (folder / "tiny-1" / "last.pt").exists())  # trial 1's first epoch
    os.kill(pid, signal.SIGTERM)
    assert exit_code(pid) == 143
    err = (tmp_path / "first.err").read_text()
    assert "Traceback" not in err and "the sweep stopped in trial 1; the same command continues it" in err

    # kill -9 once trial 3's first epoch is saved (trial 2 continues tiny-1 and saves its last.pt once before it)
    pid = worker(tmp_path, spec, "second", crash_at="last.pt:replaced:2")
    assert exit_code(pid) == -signal.SIGKILL and (folder / "tiny-3" / "last.pt").is_file()

    assert [exit_code(pid) for pid in [worker(tmp_path, spec, "third"), worker(tmp_path, spec, "fourth")]] == [0, 0]
    outputs = [(tmp_path / f"{name}.out").read_text() for name in ("third", "fourth")]
    assert sum("trial 3 was killed; a new trial continues it in" in out for out in outputs) == 1

    table = trials(folder)
    finished = [row for row in table if row["state"] == "complete"]
    assert len(finished) == 4 and len({row["run"] for row in finished}) == 4  # each in a folder of its own
    assert {row["trial"] for row in table if row["state"] == "stopped"} == {"1", "3"}
    assert {row["run"] for row in finished} >= {"tiny-1", "tiny-3"}  # the stopped ones, continued
    assert sorted(p.name for p in folder.glob("tiny-*")) == sorted(row["run"] for row in finished)
    for row in finished:
        with open(folder / row["run"] / "metrics.csv") as f:
            assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]  # no epoch twice, none missing
        assert (folder / row["run"] / "MODEL_CARD.md").is_file()


def test_a_journal_lock_left_by_a_killed_worker_is_broken(tmp_path, monkeypatch):
    """kill -9 while a worker appends to the study's journal leaves its lock, a symlink to the journal; the next
    command waits LOCK_GRACE and takes it over. The folder is given relative to the working directory, as the
    sweep's default is: a relative symlink dangled, and Optuna then spun forever."""
    from tools import sweep

    monkeypatch.setattr(sweep, "LOCK_GRACE", 1)
    monkeypatch.chdir(tmp_path)
    spec, _ = sweep.read_sweep(Path(sweep_file(tmp_path)))
    folder = Path("checkpoints/sweeps/tiny")
    folder.mkdir(parents=True)
    first = sweep.make_study(spec, folder, None, epochs=2)
    first._storage._backend._lock.acquire()  # never released: what a worker killed while it appends leaves
    done = threading.Event()
    threading.Thread(target=lambda: (sweep.make_study(spec, folder, None, epochs=2), done.set()), daemon=True).start()
    assert done.wait(timeout=120), "the study's lock was never broken"  # a hang guard: it takes 1 s


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is absent")
def test_with_the_mlflow_hook_the_trials_nest_under_one_sweep_run(tmp_path):
    import mlflow

    from tools import sweep

    spec = sweep_file(tmp_path, trials=2, pruner="none", overrides=[*TINY, "train.epochs=1", "log.hooks=[mlflow]"])
    code, out, err = call_script(sweep.main, spec, cwd=tmp_path)
    assert code == 0, err
    folder = tmp_path / "checkpoints" / "sweeps" / "tiny"
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("runs").experiment_id])
    parent = next(run for run in runs if run.info.run_name == "sweep tiny")
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(run.info.run_name for run in children) == ["tiny-0", "tiny-1"] and len(runs) == 3
    assert parent.data.params["space.train.lr.low"] == "1e-05" and parent.data.params["metric"] == "accuracy"
    assert parent.info.status == "FINISHED" and f"{parent.data.metrics['best_accuracy']:.4f}" == max(
        row["accuracy"] for row in trials(folder))
    assert all("test_accuracy" in run.data.metrics for run in children)
