"""Search hyperparameters with Optuna: every trial is an ordinary run folder, the study one file beside them.

    python tools/sweep.py configs/sweeps/digits.yaml              # its trials, then the table, best config, figures
    python tools/sweep.py configs/sweeps/digits.yaml --trials 16  # more finished trials into the same study
    python tools/sweep.py configs/sweeps/digits.yaml --storage postgresql://user:pass@host/sweeps  # shared study

The sweep file (docs/sweeps.md) names the base config and overrides, the space over dotted keys, the metric,
the sampler, the pruner and the budget. Trials go to checkpoints/sweeps/<name>/<name>-<trial>/, the study to
checkpoints/sweeps/<name>/study.log (or --storage); running the same command again adds the trials that are
missing. Needs optuna (pip install -r requirements-extras.txt).
"""
import contextlib
import csv
import dataclasses
import io
import math
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
import train as train_script  # noqa: E402
from engine.card import finish_run  # noqa: E402
from engine.cli import positive_int, run_cli  # noqa: E402
from engine.columns import METRICS, metrics_for  # noqa: E402
from engine.config import (DEFAULT_CONFIG, at_least, build, check_plain_name, load_config, one_of,  # noqa: E402
                           read_config, to_yaml)
from engine.devices import select_device  # noqa: E402
from engine.entry import Parser  # noqa: E402
from engine.errors import UserError, shown  # noqa: E402
from engine.escape import CsvWriter  # noqa: E402
from engine.hooks import Hook, as_params, use_store  # noqa: E402
from engine.runs import finished, what_to_train, yaml_value  # noqa: E402
from engine.storage import RunLock, abandoned, make_folder, write_text  # noqa: E402

SWEEPS_DIR = Path("checkpoints") / "sweeps"  # relative to where the command runs, as run.output_dir is


@dataclass
class Range:
    """A number between low and high: float or int, on a log scale if log (low > 0)."""
    type: Literal["float", "int"]
    low: float
    high: float
    log: bool = False


@dataclass
class Sweep:
    """A sweep file, checked as config.yaml is: unknown or ill-typed keys are one error naming them."""
    name: str
    config: str  # a recipe merged over config.yaml, as train.py --config; "" = config.yaml alone
    overrides: list[str]  # key=value for every trial
    metric: str = field(metadata=one_of(METRICS))  # the trial's score: its best validated value (loss: lowest)
    sampler: Literal["tpe", "random"]
    seed: int = field(metadata=at_least(0))
    pruner: Literal["median", "none"]  # median: stop a trial whose metric is below the earlier trials' median
    trials: int = field(metadata=at_least(1))  # finished (complete or pruned) trials the study ends with
    minutes: float = field(metadata=at_least(0.0))  # this command's time budget; 0 = none
    # and space: dotted key -> a Range ({type, low, high, log}) or a list of choices, read by parameter()


DEFAULTS = {"config": "", "overrides": [], "metric": "accuracy", "sampler": "tpe", "seed": 0, "pruner": "median",
            "trials": 8, "minutes": 0}


def read_sweep(path: Path) -> tuple[Sweep, dict]:
    """The sweep file checked, and its space as key -> Range or list of choices."""
    raw = read_config(path, Sweep)
    if not isinstance(raw, dict):
        raise UserError(f"sweep file {path} must map keys (name:, space:, ...) to values, got {shown(raw)}")
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise UserError(f"sweep file {path}: space must map dotted config keys to ranges or lists of choices, "
                        f"got {shown(space)}; e.g. space: {{train.lr: {{type: float, low: 1e-4, high: 0.1, log: true}}}}")
    sweep = build(Sweep, {"name": path.stem, **DEFAULTS, **{k: v for k, v in raw.items() if k != "space"}}, "")
    check_plain_name(sweep.name, "name")
    return sweep, {key: parameter(key, spec) for key, spec in space.items()}


def parameter(key: str, spec: object) -> Range | list:
    if isinstance(spec, list) and spec:
        return spec
    if not isinstance(spec, dict):
        raise UserError(f"space.{key}: expected {{type: float | int, low, high, log}} or a list of choices, "
                        f"got {shown(spec)}")
    found = build(Range, {"log": False, **spec}, f"space.{key}.")
    if not found.low < found.high or (found.log and found.low <= 0):
        raise UserError(f"space.{key}: needs low < high{' and low > 0 on a log scale' if found.log else ''}, "
                        f"got low {found.low}, high {found.high}")
    return found


def suggest(trial, key: str, spec: Range | list) -> object:
    if isinstance(spec, list):  # as the text of an override, so that a list value such as [128, 64] is one choice
        return yaml.safe_load(trial.suggest_categorical(key, [yaml_value(choice) for choice in spec]))
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, log=spec.log)


class Pruning(Hook):
    """Reports each validated epoch's metric to the trial and ends the run when the pruner says so: a pruned
    trial is an ordinary run folder that stopped early (tested and carded), with PRUNED.txt saying where."""

    def __init__(self, trial, column: str):
        self.trial, self.column, self.epoch = trial, column, 0

    def on_epoch_end(self, run, row: dict) -> None:
        value = row[self.column]
        if math.isnan(value):  # an epoch train.val_every skipped
            return
        self.trial.report(value, row["epoch"])
        if self.trial.should_prune():
            self.epoch = row["epoch"]
            why = (f"its {self.column} {value:.4f} was worse than the median of the earlier trials at that epoch")
            write_text(run.run_dir / "PRUNED.txt", f"The sweep stopped this trial after epoch {self.epoch}: {why}.\n")
            run.stop = f"the sweep pruned trial {self.trial.number} after epoch {self.epoch}: {why}"


def trial_config(sweep: Sweep, folder: Path, values: dict, number: int):
    overrides = [*sweep.overrides, *(f"{key}={yaml_value(value)}" for key, value in values.items()),
                 f"run.output_dir={folder}", f"run.name={sweep.name}-{number}"]
    return load_config(sweep.config or None, overrides)


LOCK_GRACE = 10  # seconds after which a journal lock is taken as a killed worker's (a write holds it for milliseconds)


def make_study(sweep: Sweep, folder: Path, storage: str | None, epochs: int):
    """The study in storage (default: the sweep folder's journal file), created or continued. The sampler's seed
    is the file's plus the trials the study has: a continued sweep does not draw its first points again."""
    import optuna

    if storage is None or "://" not in storage:  # a journal file: on this machine, or on shared storage (NFS)
        path = str((Path(storage) if storage else folder / "study.log").resolve())
        # The lock is a symlink to the journal: with a relative path it dangles, and Optuna then never breaks a
        # lock that a killed worker left (the next command spun forever). Absolute, it is broken after LOCK_GRACE.
        lock = optuna.storages.journal.JournalFileSymlinkLock(path, grace_period=LOCK_GRACE)
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path, lock_obj=lock))
    kind = optuna.samplers.TPESampler if sweep.sampler == "tpe" else optuna.samplers.RandomSampler
    # median: from the third trial on, after the first quarter of the epochs (a warming-up schedule's early
    # epochs say little about the end)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=epochs // 4) if sweep.pruner == "median"
              else optuna.pruners.NopPruner())
    direction = "maximize" if METRICS[sweep.metric].is_best else "minimize"  # accuracy, ... or loss
    study = optuna.create_study(study_name=sweep.name, storage=storage, load_if_exists=True, direction=direction,
                                pruner=pruner)
    study.sampler = kind(seed=sweep.seed + len(study.trials))
    return study


def finished_states() -> tuple:
    from optuna.trial import TrialState

    return TrialState.COMPLETE, TrialState.PRUNED


@contextlib.contextmanager
def parent_run(study, sweep: Sweep, space: dict, cfg):
    """With the mlflow hook: one MLflow run for the sweep (its file as parameters; the id kept in the study, so
    every worker and every continuation uses the same), active while trials run, so theirs nest under it."""
    if "mlflow" not in cfg.log.hooks:
        yield
        return
    import mlflow

    experiment_id = use_store(mlflow, cfg)
    run_id = study.user_attrs.get("mlflow_run_id")
    if run_id is None:
        run_id = mlflow.start_run(experiment_id=experiment_id, run_name=f"sweep {sweep.name}").info.run_id
        study.set_user_attr("mlflow_run_id", run_id)
        ranges = {key: spec if isinstance(spec, list) else dataclasses.asdict(spec) for key, spec in space.items()}
        mlflow.log_params(as_params({**dataclasses.asdict(sweep), "space": ranges}))
    else:
        mlflow.start_run(run_id=run_id)
    status = "KILLED"  # stopped or failed: the next command continues it
    try:
        yield
        status = "FINISHED"
    finally:
        if study.best_trials:
            mlflow.log_metric(f"best_{sweep.metric}", study.best_value)
        mlflow.end_run(status)


def run_trials(study, sweep: Sweep, space: dict, folder: Path) -> None:
    """Trials until the study has sweep.trials finished or running ones (this worker's and others'), or the
    time budget is spent. Each trial holds a lock file in the sweep folder while it runs: a trial left running
    without its lock was killed, and is continued as a stopped one is (continue_stopped)."""
    from optuna.trial import TrialState

    deadline = time.perf_counter() + (sweep.minutes * 60 or math.inf)
    failed_in_a_row = 0
    while continue_stopped(study, sweep, folder) < sweep.trials and time.perf_counter() < deadline:
        trial = study.ask()
        if counted(study.get_trials(deepcopy=False), before=trial.number) >= sweep.trials:
            trial.set_user_attr("surplus", True)  # another worker asked for the last trial at the same moment
            study.tell(trial, state=TrialState.FAIL)
            break
        with RunLock(folder, trial_lock(trial.number)):
            try:
                state, score = run_trial(trial, sweep, space, folder)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stopped, continued by the next command
                trial.set_user_attr("stopped", True)
                study.tell(trial, state=TrialState.FAIL)
                print(f"the sweep stopped in trial {trial.number}; the same command continues it from its last.pt",
                      file=sys.stderr)
                raise
            except UserError as err:  # e.g. a learning rate at which the loss became NaN: the sweep goes on
                study.tell(trial, state=TrialState.FAIL)
                print(f"trial {trial.number} failed: {err}")
                failed_in_a_row += 1
                if failed_in_a_row == 3:
                    raise UserError(f"3 trials in a row failed, the last with: {err}") from None
                continue
            # told while the lock is held: another worker never sees this trial running without its lock
            study.tell(trial, score if state == TrialState.COMPLETE else None, state=state)
        failed_in_a_row = 0
        print(f"trial {trial.number} {state.name.lower()}: {sweep.metric} {score:.4f}", flush=True)


FINISHED_OR_RUNNING = ("COMPLETE", "PRUNED", "RUNNING")


def counted(trials: list, before: float = math.inf) -> int:
    """The trials that count towards sweep.trials: finished ones and those running now (numbered below before)."""
    return sum(t.state.name in FINISHED_OR_RUNNING and t.number < before for t in trials)


def trial_lock(number: int) -> str:
    return f".trial-{number}.lock"


def continue_stopped(study, sweep: Sweep, folder: Path) -> int:
    """Each trial that was stopped (Ctrl-C, SIGTERM) or killed (a running trial whose lock no process holds) is
    continued once, by a new trial with its parameters that resumes its run folder from last.pt. Returns how
    many trials count towards sweep.trials then."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get("continues") for t in trials}
    for t in trials:
        if t.number in continued or not (t.state == TrialState.FAIL and t.user_attrs.get("stopped")
                                          or t.state == TrialState.RUNNING and was_killed(t, folder)):
            continue
        if t.state == TrialState.RUNNING:
            try:  # another worker may be doing the same: the first to tell continues it
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError):
                continue
        run = t.user_attrs.get("folder", t.number)
        study.enqueue_trial(t.params, user_attrs={"continues": t.number, "folder": run})
        print(f"trial {t.number} was {'stopped' if t.state == TrialState.FAIL else 'killed'}; a new trial "
              f"continues it in {folder / f'{sweep.name}-{run}'}")
    return counted(study.get_trials(deepcopy=False))


def was_killed(trial, folder: Path, grace: float = 60.0) -> bool:
    """A running trial whose worker died: its lock file names the worker but no process holds it, or it has no lock
    grace seconds after it started (killed between asking for the trial and locking it)."""
    left = abandoned(folder / trial_lock(trial.number))
    return left if left is not None else time.time() - trial.datetime_start.timestamp() > grace


def run_trial(trial, sweep: Sweep, space: dict, folder: Path) -> tuple:
    """One trial: a run of its sampled config (or the stopped trial's that it continues), tested and carded as
    train.py does; returns its state (complete or pruned) and best score."""
    from optuna.trial import TrialState

    values = {key: suggest(trial, key, spec) for key, spec in space.items()}
    number = trial.user_attrs.get("folder", trial.number)
    cfg = trial_config(sweep, folder, values, number)
    print(f"trial {trial.number}: {' '.join(f'{k}={short(v)}' for k, v in values.items())}", flush=True)
    metric = METRICS[sweep.metric]
    pruning = Pruning(trial, metric.column)
    run_dir = folder / cfg.run.name
    if (run_dir / "last.pt").is_file():  # a stopped trial's run: continue it
        cfg, ckpt, run_dir = what_to_train(str(run_dir), None, [])
        if not finished(ckpt, cfg):
            train_script.train(cfg, ckpt, run_dir, hooks=(pruning,))
    else:
        train_script.train(cfg, explicit_name=True, hooks=(pruning,))
    trial.set_user_attr("run_dir", str(run_dir))
    finish_run(run_dir, cfg, select_device(cfg.run.device))
    scores = [row[metric.column] for row in read_rows(run_dir) if not math.isnan(row[metric.column])]
    if pruning.epoch:
        trial.set_user_attr("pruned_after_epoch", pruning.epoch)
    return (TrialState.PRUNED if pruning.epoch else TrialState.COMPLETE), max(scores) if metric.is_best else min(scores)


def short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else yaml_value(value)


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        return [{key: float(value) if value else math.nan for key, value in row.items()} for row in csv.DictReader(f)]


def report(study, sweep: Sweep, folder: Path) -> None:
    """The trials as a table (printed and trials.csv), the best trial's config, and Optuna's figures."""
    rows, continued = [], {t.user_attrs.get("continues") for t in study.trials}
    for t in study.trials:
        if t.user_attrs.get("surplus"):  # asked for at the same moment as another worker's last trial; never run
            continue
        epochs = t.user_attrs.get("pruned_after_epoch") or max(t.intermediate_values, default="")
        seconds = t.duration.total_seconds() if t.duration else math.nan
        rows.append({"trial": t.number, **{k: short(v) for k, v in t.params.items()},
                     sweep.metric: "" if t.value is None else f"{t.value:.4f}",
                     "state": "stopped" if t.number in continued else t.state.name.lower(), "epochs": epochs,
                     "seconds": f"{seconds:.1f}", "run": f"{sweep.name}-{t.user_attrs.get('folder', t.number)}"})
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = io.StringIO()
    CsvWriter(table, lineterminator="\n").writerows([columns, *([row.get(c, "") for c in columns] for row in rows)])
    write_text(folder / "trials.csv", table.getvalue())
    print("".join(f"  {line}\n" for line in table.getvalue().splitlines()), end="")
    if study.best_trials:  # complete ones (a pruned trial's value is its last reported one)
        best = study.best_trial
        cfg = load_config(Path(best.user_attrs["run_dir"]) / "config.yaml", [])
        defaults = load_config(DEFAULT_CONFIG, []).run
        write_text(folder / "best.yaml", to_yaml(replace(cfg, run=replace(cfg.run, name="",
                                                                         output_dir=defaults.output_dir))))
        print(f"best: trial {best.number}, {sweep.metric} {best.value:.4f} ({best.user_attrs['run_dir']}); its "
              f"config: python train.py --config {folder / 'best.yaml'}")
    figures(study, folder)


def figures(study, folder: Path) -> None:
    import optuna
    from engine.plots import save

    for name, plot in (("history", optuna.visualization.matplotlib.plot_optimization_history),
                       ("importances", optuna.visualization.matplotlib.plot_param_importances)):
        try:
            ax = plot(study)
        except (ValueError, RuntimeError) as err:  # e.g. importances need two finished trials
            print(f"note: no {name}.png ({err})")
            continue
        save(ax.figure, folder / f"{name}.png")
    print(f"wrote {folder / 'trials.csv'}, best.yaml and the figures")


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("sweep", metavar="SWEEP_FILE", help="the sweep's YAML file, e.g. configs/sweeps/digits.yaml")
    parser.add_argument("--trials", type=positive_int, help="finished trials the study ends with (overrides the file)")
    parser.add_argument("--storage", metavar="URL_OR_FILE", help="an RDB URL (postgresql://..., sqlite:///...) or a "
                        "journal file that several workers share (default: study.log in the sweep's folder)")
    args = parser.parse_args(argv)
    try:
        import optuna
    except ImportError:
        raise UserError("tools/sweep.py needs optuna; pip install optuna (or -r requirements-extras.txt)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # its matplotlib plots
    sweep, space = read_sweep(Path(args.sweep))
    sweep = replace(sweep, trials=args.trials or sweep.trials)
    folder = SWEEPS_DIR / sweep.name
    for key, spec in space.items():  # every choice and both ends of each range, before the first trial
        for value in spec if isinstance(spec, list) else (spec.low, spec.high):
            first = trial_config(sweep, folder, {key: value}, 0)
    usable = metrics_for(first.data.multilabel)
    if sweep.metric not in usable:
        raise UserError(f"metric: {sweep.metric} is not measured on this data; use one of {' | '.join(usable)}")
    make_folder(folder, "name")
    study = make_study(sweep, folder, args.storage, first.train.epochs)
    start = time.perf_counter()
    with parent_run(study, sweep, space, first):
        run_trials(study, sweep, space, folder)
    print(f"{len(study.get_trials(states=finished_states()))} finished trials in {study.study_name} "
          f"({time.perf_counter() - start:.0f} s this time)")
    report(study, sweep, folder)


if __name__ == "__main__":
    run_cli(main)
