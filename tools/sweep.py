"""Search hyperparameters with Optuna: every trial is an ordinary run folder, the study one file beside them.

    python tools/sweep.py configs/sweeps/digits.yaml              # its trials, then the table, best config, figures
    python tools/sweep.py configs/sweeps/digits.yaml --trials 16  # more finished trials into the same study
    python tools/sweep.py configs/sweeps/digits.yaml --storage postgresql://user:pass@host/sweeps  # shared study

The sweep file (docs/sweeps.md) names the base config and overrides, the space over dotted keys, the metric,
the sampler, the pruner and the budget. Trials go to checkpoints/sweeps/<name>/<name>-<trial>/, the study to
checkpoints/sweeps/<name>/study.log (or --storage); running the same command again adds the trials that are
missing. Needs optuna (pip install -r requirements-extras.txt).
"""
import csv
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
from engine.hooks import Hook  # noqa: E402
from engine.runs import yaml_value  # noqa: E402
from engine.storage import make_folder, write_text  # noqa: E402

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
    """Reports each validated epoch's metric to the trial and stops it when the pruner says so."""

    def __init__(self, trial, column: str):
        self.trial, self.column = trial, column

    def on_epoch_end(self, run, row: dict) -> None:
        import optuna

        value = row[self.column]
        if math.isnan(value):  # an epoch train.val_every skipped
            return
        self.trial.report(value, row["epoch"])
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_after_epoch", row["epoch"])
            write_text(run.run_dir / "PRUNED.txt", f"The sweep stopped this trial after epoch {row['epoch']}: its "
                       f"{self.column} {value:.4f} was worse than the median of the earlier trials at that epoch.\n")
            print(f"trial {self.trial.number} pruned after epoch {row['epoch']}: {self.column} {value:.4f}")
            raise optuna.TrialPruned()


def trial_config(sweep: Sweep, folder: Path, values: dict, number: int):
    overrides = [*sweep.overrides, *(f"{key}={yaml_value(value)}" for key, value in values.items()),
                 f"run.output_dir={folder}", f"run.name={sweep.name}-{number}"]
    return load_config(sweep.config or None, overrides)


def make_study(sweep: Sweep, folder: Path, storage: str | None, epochs: int):
    """The study in storage (default: the sweep folder's journal file), created or continued. The sampler's seed
    is the file's plus the trials the study has: a continued sweep does not draw its first points again."""
    import optuna

    if storage is None or "://" not in storage:  # a journal file: on this machine, or on shared storage (NFS)
        path = Path(storage) if storage else folder / "study.log"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
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


def run_trial(trial, sweep: Sweep, space: dict, folder: Path) -> float:
    """One trial: a run of its sampled config, tested and carded as train.py does; returns its best score."""
    values = {key: suggest(trial, key, spec) for key, spec in space.items()}
    cfg = trial_config(sweep, folder, values, trial.number)
    print(f"trial {trial.number}: {' '.join(f'{k}={short(v)}' for k, v in values.items())}", flush=True)
    metric = METRICS[sweep.metric]
    run_dir = train_script.train(cfg, explicit_name=True, hooks=(Pruning(trial, metric.column),))
    trial.set_user_attr("run_dir", str(run_dir))
    finish_run(run_dir, cfg, select_device(cfg.run.device))
    scores = [row[metric.column] for row in read_rows(run_dir) if not math.isnan(row[metric.column])]
    return max(scores) if metric.is_best else min(scores)


def short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else yaml_value(value)


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        return [{key: float(value) if value else math.nan for key, value in row.items()} for row in csv.DictReader(f)]


def report(study, sweep: Sweep, folder: Path) -> None:
    """The trials as a table (printed and trials.csv), the best trial's config, and Optuna's figures."""
    rows = []
    for t in study.trials:
        epochs = t.user_attrs.get("pruned_after_epoch") or max(t.intermediate_values, default="")
        seconds = t.duration.total_seconds() if t.duration else math.nan
        rows.append({"trial": t.number, **{k: short(v) for k, v in t.params.items()},
                     sweep.metric: "" if t.value is None else f"{t.value:.4f}", "state": t.state.name.lower(),
                     "epochs": epochs, "seconds": f"{seconds:.1f}"})
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = io.StringIO()
    CsvWriter(table, lineterminator="\n").writerows([columns, *([row.get(c, "") for c in columns] for row in rows)])
    write_text(folder / "trials.csv", table.getvalue())
    print("".join(f"  {line}\n" for line in table.getvalue().splitlines()), end="")
    if any(t.value is not None for t in study.trials):
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
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    start = time.perf_counter()
    if len(study.get_trials(states=finished)) < sweep.trials:
        study.optimize(lambda trial: run_trial(trial, sweep, space, folder), timeout=sweep.minutes * 60 or None,
                       callbacks=[optuna.study.MaxTrialsCallback(sweep.trials, states=finished)])
    print(f"{len(study.get_trials(states=finished))} finished trials in {study.study_name} "
          f"({time.perf_counter() - start:.0f} s this time)")
    report(study, sweep, folder)


if __name__ == "__main__":
    run_cli(main)
