"""Hooks: code that runs when a run starts, after every epoch (with the epoch's row) and when it ends,
named in log.hooks. A hook is a class with Hook's three methods (each does nothing unless overridden); a
new one is its class and its line in HOOKS (docs/extend.md). Hooks run in the process that writes the
run folder (rank 0 under torchrun), after the epoch's files are written; run end is a finished run's
(all epochs, or an early stop), not a stopped or failed one's.
"""
import dataclasses
import logging
import math
import urllib.request
from pathlib import Path

from engine.columns import METRICS
from engine.distributed import is_main
from engine.errors import UserError, shown
from engine.storage import write_text
from engine.yamlfile import flatten


class Hook:
    def on_run_start(self, run) -> None:
        """run: train.py's Run (cfg, run_dir, model, state, ...), before the first epoch of this process."""

    def on_epoch_end(self, run, row: dict) -> None:
        """row: the epoch's metrics.csv row (engine/columns.py), written to disk already."""

    def on_run_end(self, run) -> None:
        """After the last epoch, before the final test."""


class TensorBoard(Hook):
    """The epoch rows' numbers for TensorBoard, in <run folder>/tensorboard; at the end the config's keys and the
    best epoch's row as hyperparameters and metrics (its HParams tab compares runs)."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("log.hooks has tensorboard but the tensorboard package is not installed; "
                            "pip install tensorboard, or take tensorboard out of log.hooks") from None
        self.writer_class, self.writer = SummaryWriter, None

    def on_run_start(self, run) -> None:
        self.writer = self.writer_class(str(run.run_dir / "tensorboard"))

    def on_epoch_end(self, run, row: dict) -> None:
        for key, value in row.items():
            self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def on_run_end(self, run) -> None:
        column = METRICS[run.cfg.train.best_metric].column  # best.pt's epoch: the first with the best score
        best = next((row for row in run.state.history if row.get(column) == run.state.best_score), {})
        hparams = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                   for key, value in flatten(dataclasses.asdict(run.cfg)).items()}
        metrics = {f"best/{key}": value for key, value in best.items() if key != "epoch" and not math.isnan(value)}
        self.writer.add_hparams(hparams, metrics, run_name=".")  # ".": in this run's folder, beside its epochs
        self.writer.close()


class MLflow(Hook):
    """Each run an MLflow run: the config as parameters (dotted keys), each epoch's row as metrics (step = epoch),
    config.yaml, metrics.csv and curves.png as artifacts at the end. --resume continues the same MLflow run (its
    id is kept in the run folder). log.mlflow_uri: where; "" = a SQLite file beside the run folders."""
    ID_FILE = "mlflow_run_id.txt"

    def __init__(self):
        try:
            import mlflow
        except ImportError:
            raise UserError("log.hooks has mlflow but the mlflow package is not installed; pip install mlflow, "
                            "or take mlflow out of log.hooks") from None
        for name in ("mlflow", "alembic"):  # their INFO lines (creating tables, ...) would bury the epoch lines
            logging.getLogger(name).setLevel(logging.WARNING)
        self.mlflow, self.run_id = mlflow, None

    def on_run_start(self, run) -> None:
        output_dir = Path(run.cfg.run.output_dir).resolve()
        uri = run.cfg.log.mlflow_uri or f"sqlite:///{output_dir / 'mlflow.db'}"
        check_reachable(uri)
        self.mlflow.set_tracking_uri(uri)
        id_file = run.run_dir / self.ID_FILE
        if id_file.is_file():  # --resume: the same MLflow run, whose parameters are logged already
            self.run_id = id_file.read_text().strip()
            return
        client = self.mlflow.MlflowClient()
        experiment = client.get_experiment_by_name("runs")
        # a SQLite file keeps the artifacts beside it (MLflow's default is ./mlruns of wherever train.py runs)
        artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri() if uri.startswith(
            "sqlite:///") else None
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            "runs", artifact_location=artifacts)
        self.run_id = client.create_run(experiment_id, run_name=run.run_dir.name).info.run_id
        params = flatten(dataclasses.asdict(run.cfg))
        self.mlflow.log_params({key: str(value)[:6000] for key, value in params.items()}, run_id=self.run_id)

    def on_epoch_end(self, run, row: dict) -> None:
        numbers = {key: value for key, value in row.items() if key != "epoch" and not math.isnan(value)}
        self.mlflow.log_metrics(numbers, step=row["epoch"], run_id=self.run_id)
        id_file = run.run_dir / self.ID_FILE  # written with the first epoch: a run that never starts leaves no file
        if not id_file.is_file():
            write_text(id_file, self.run_id + "\n")

    def on_run_end(self, run) -> None:
        client = self.mlflow.MlflowClient()
        for name in ("config.yaml", "metrics.csv", "curves.png"):
            client.log_artifact(self.run_id, str(run.run_dir / name))
        client.set_terminated(self.run_id)


def check_reachable(uri: str) -> None:
    """An MLflow server's URL must answer its /health before the run starts, not after training."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except OSError as err:
        raise UserError(f"log.mlflow_uri: {shown(uri)} cannot be reached ({type(err).__name__}); start the MLflow "
                        "server, fix the URL, or set log.mlflow_uri=\"\" for a file beside the runs") from None


HOOKS = {
    "tensorboard": TensorBoard,
    "mlflow": MLflow,
}


def make_hooks(names: list[str]) -> list[Hook]:
    """The hooks log.hooks names, built before any work (a missing package fails at once); none off rank 0."""
    hooks = [HOOKS[name]() for name in names]
    return hooks if is_main() else []
