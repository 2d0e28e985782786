"""The mlflow hook: a run and its resumed epochs in one MLflow run, read back through MlflowClient and through
an `mlflow server`'s REST API."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from engine import runs
from engine.card import finish_run
from engine.checkpoint import load_checkpoint
from engine.errors import UserError
from train import train

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                reason="mlflow is absent; pip install -r requirements-extras.txt")


def test_a_run_and_its_resume_are_one_mlflow_run_that_a_server_answers_with(tiny_cfg, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # the store's tables, made before the server would make them too
    server, url = start_server(uri, tmp_path)  # it takes seconds to start: meanwhile the runs write to its store
    run_dir = train(tiny_cfg("log.hooks=[mlflow]", f"log.mlflow_uri={uri}", "train.scheduler=step"))
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    ckpt = load_checkpoint(run_dir / "last.pt")
    cfg = runs.resumed_config(ckpt, ["train.epochs=3"])
    train(cfg, ckpt, run_dir)
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # until train.py's final test
    test = finish_run(run_dir, cfg, torch.device("cpu"))

    found = client.get_run(run_id)
    assert (run_dir / "mlflow_run_id.txt").read_text().strip() == run_id  # the same run, continued
    assert found.info.status == "FINISHED" and found.info.run_name == run_dir.name
    assert found.data.metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    assert found.data.metrics["test_loss"] == pytest.approx(test["loss"])
    assert found.data.params["train.scheduler"] == "step" and found.data.params["data.name"] == "digits"
    history = client.get_metric_history(run_id, "val_acc")
    assert [m.step for m in history] == [1, 2, 3]  # no epoch logged twice
    rows = load_checkpoint(run_dir / "last.pt")["history"]
    assert [m.value for m in history] == pytest.approx([row["val_acc"] for row in rows])
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "metrics.csv", "curves.png",
                                                               "MODEL_CARD.md"}  # best.pt only when asked
    try:
        wait_for(server, url, tmp_path / "mlflow-server.log")
        answer = get(url, f"runs/get?run_id={run_id}")["run"]
        assert answer["info"]["status"] == "FINISHED" and answer["info"]["run_name"] == run_dir.name
        assert {p["key"]: p["value"] for p in answer["data"]["params"]}["train.scheduler"] == "step"
        assert {m["key"]: m["value"] for m in answer["data"]["metrics"]}["val_acc"] == pytest.approx(rows[-1]["val_acc"])
        assert {f["path"] for f in get(url, f"artifacts/list?run_id={run_id}")["files"]} >= {"MODEL_CARD.md"}
    finally:
        server.terminate()
        server.wait(timeout=60)


def start_server(uri: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free localhost port, with uri's store."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", uri, "--workers", "1"]
    log = open(folder / "mlflow-server.log", "wb")  # a file, not a pipe: a full pipe would stop the server
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runners: three fewer processes
    return subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=log), f"http://127.0.0.1:{port}"


def wait_for(server: subprocess.Popen, url: str, log: Path) -> None:
    for _ in range(1200):  # its start takes 10 to 30 s on a busy machine
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).close()
            return
        except OSError:
            assert server.poll() is None, log.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
    raise AssertionError(f"mlflow server at {url} did not answer in 2 minutes")


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}", timeout=30) as response:
        return json.load(response)




def test_an_unreachable_tracking_server_is_one_line_before_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg("log.hooks=[mlflow]", "log.mlflow_uri=http://127.0.0.1:9", "run.name=unreached")
    with pytest.raises(UserError, match=r"^log.mlflow_uri: 'http://127.0.0.1:9' cannot be reached"):
        train(cfg)
    assert not (Path(cfg.run.output_dir) / "unreached").exists()  # nothing trained, no folder left
