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

    def on_run_tested(self, run_dir: Path, cfg, test: dict) -> None:
        """After the final test of best.pt (test: its loss, accuracy, ...) and the model card; in a new instance
        of the hook (the one that trained may have been in another process)."""


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
    config.yaml, metrics.csv and curves.png as artifacts at the end, then the final test's metrics (test_*) and
    MODEL_CARD.md (and best.pt with log.mlflow_checkpoint). --resume continues the same MLflow run (its id is kept
    in the run folder). A run started while an MLflow run is active (tools/sweep.py's) is nested under it.
    log.mlflow_uri: where; "" = a SQLite file beside the run folders."""
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
        experiment_id = use_store(self.mlflow, run.cfg)
        id_file = run.run_dir / self.ID_FILE
        if id_file.is_file():  # --resume: the same MLflow run, whose parameters are logged already
            self.run_id = id_file.read_text().strip()
            return
        parent = self.mlflow.active_run()  # a sweep's
        tags = {"mlflow.parentRunId": parent.info.run_id} if parent else {}
        self.run_id = self.mlflow.MlflowClient().create_run(experiment_id, run_name=run.run_dir.name,
                                                            tags=tags).info.run_id
        self.mlflow.log_params(as_params(dataclasses.asdict(run.cfg)), run_id=self.run_id)

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

    def on_run_tested(self, run_dir: Path, cfg, test: dict) -> None:
        id_file = run_dir / self.ID_FILE
        if not id_file.is_file():  # the run was trained without the hook (an older run tested again)
            return
        use_store(self.mlflow, cfg)
        client, run_id = self.mlflow.MlflowClient(), id_file.read_text().strip()
        numbers = {f"test_{key}": value for key, value in test.items() if isinstance(value, (int, float))}
        self.mlflow.log_metrics(numbers, run_id=run_id)
        for name in ("MODEL_CARD.md", *(["best.pt"] if cfg.log.mlflow_checkpoint else [])):
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        client.set_terminated(run_id)


def use_store(mlflow, cfg) -> str:
    """Point mlflow at log.mlflow_uri (checked to answer); returns the id of the experiment "runs" there."""
    uri = tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("runs")
    if experiment:
        return experiment.experiment_id
    # a SQLite file keeps the artifacts beside it (MLflow's default is ./mlruns of wherever train.py runs)
    artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri() if uri.startswith(
        "sqlite:///") else None
    try:
        return client.create_experiment("runs", artifact_location=artifacts)
    except mlflow.exceptions.MlflowException:  # another process (a second sweep worker) made it just now
        return client.get_experiment_by_name("runs").experiment_id


def tracking_uri(cfg) -> str:
    return cfg.log.mlflow_uri or f"sqlite:///{Path(cfg.run.output_dir).resolve() / 'mlflow.db'}"


def as_params(config: dict) -> dict[str, str]:
    """A nested config as MLflow parameters: dotted keys, values as text within MLflow's 6,000 characters."""
    return {key: str(value)[:6000] for key, value in flatten(config).items()}


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
