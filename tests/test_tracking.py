"""The mlflow hook: a run and its resumed epochs in one MLflow run, read back through MlflowClient."""
import importlib.util
from pathlib import Path

import pytest

from engine import runs
from engine.checkpoint import load_checkpoint
from engine.errors import UserError
from train import train

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                reason="mlflow is absent; pip install -r requirements-extras.txt")


def test_a_run_and_its_resume_are_one_mlflow_run(tiny_cfg, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = train(tiny_cfg("log.hooks=[mlflow]", f"log.mlflow_uri={uri}", "train.scheduler=step"))
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    ckpt = load_checkpoint(run_dir / "last.pt")
    train(runs.resumed_config(ckpt, ["train.epochs=3"]), ckpt, run_dir)

    client = mlflow.MlflowClient(uri)
    found = client.get_run(run_id)
    assert (run_dir / "mlflow_run_id.txt").read_text().strip() == run_id  # the same run, continued
    assert found.info.status == "FINISHED" and found.info.run_name == run_dir.name
    assert found.data.params["train.scheduler"] == "step" and found.data.params["data.name"] == "digits"
    history = client.get_metric_history(run_id, "val_acc")
    assert [m.step for m in history] == [1, 2, 3]  # no epoch logged twice
    rows = load_checkpoint(run_dir / "last.pt")["history"]
    assert [m.value for m in history] == pytest.approx([row["val_acc"] for row in rows])
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "metrics.csv", "curves.png"}


def test_an_unreachable_tracking_server_is_one_line_before_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg("log.hooks=[mlflow]", "log.mlflow_uri=http://127.0.0.1:9", "run.name=unreached")
    with pytest.raises(UserError, match=r"^log.mlflow_uri: 'http://127.0.0.1:9' cannot be reached"):
        train(cfg)
    assert not (Path(cfg.run.output_dir) / "unreached").exists()  # nothing trained, no folder left
