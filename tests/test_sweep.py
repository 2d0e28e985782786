"""tools/sweep.py: an Optuna study whose trials are ordinary run folders, pruned by a hook, resumable."""
import csv
import importlib.util

import pytest
import yaml

from conftest import TINY, call_script
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
