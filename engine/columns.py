"""The epoch row's columns, declared once: METRICS, the validation metrics. train.py's row, metrics.csv, the
epoch line, the NaN of epochs not validated, train.best_metric's choices and tools/compare.py all read them,
so a new metric is one line here (docs/extend.md).
"""
import math
import statistics
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Metric:
    column: str  # its metrics.csv column
    label: str  # its name in the epoch line
    compute: Callable[[dict], float]  # from the evaluation's results (engine/metrics.py evaluate, or
    # engine/multilabel.py evaluate_multilabel when multilabel)
    is_best: bool = True  # higher is better, and train.best_metric may pick it
    is_percent: bool = True  # printed as a percentage
    multilabel: bool | None = None  # only for single-label (False) or multi-label (True) data; None: both


METRICS = {
    "loss": Metric("val_loss", "loss", lambda results: results["loss"], is_best=False, is_percent=False),
    "accuracy": Metric("val_acc", "acc", lambda results: results["accuracy"]),
    "balanced_accuracy": Metric("val_balanced_acc", "bal", lambda results: results["balanced_accuracy"]),
    "macro_f1": Metric("val_macro_f1", "f1", lambda results: results["macro_f1"]),
    "map": Metric("val_map", "map", lambda results: results["map"], multilabel=True),  # mean average precision
}


def metrics_for(multilabel: bool) -> dict[str, Metric]:
    """The metrics of a run on single-label or multi-label data."""
    return {name: m for name, m in METRICS.items() if m.multilabel is None or m.multilabel == multilabel}


def validation_columns(results: dict | None, multilabel: bool) -> dict[str, float]:
    """Each metric's column and value; NaN for every one when the epoch was not validated (results None)."""
    return {m.column: math.nan if results is None else float(m.compute(results))
            for m in metrics_for(multilabel).values()}


def is_validated(row: dict) -> bool:
    return not math.isnan(float(row[METRICS["loss"].column]))


def epoch_line(row: dict, epochs: int, improved: bool) -> str:
    """The line train.py prints per epoch: training loss and accuracy, the validation metrics, lr, seconds."""
    shown = [f"{m.label} {100 * row[m.column]:6.2f}%" if m.is_percent else f"{m.label} {row[m.column]:.4f}"
             for m in METRICS.values() if m.column in row]
    val = f"  val {' '.join(shown)}" if is_validated(row) else "  val -"  # "-": an epoch train.val_every skipped
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:6.2f}%"
            f"{val}  lr {row['lr']:.2e}  {row['seconds']:5.1f}s{'  *best' if improved else ''}")


def csv_columns(history: list[dict]) -> list[str]:
    """metrics.csv's columns: every row's, in order of first appearance (a run resumed on a build with other
    metrics keeps its old rows' values and leaves the new columns empty there)."""
    return list(dict.fromkeys(key for row in history for key in row))


def spread(values: list[float], unit: str) -> str:
    """'98.33 ± 0.42 % (min 97.92, max 98.89, 3 seeds)' of percentages over several runs (benchmarks/seeds.py,
    tools/kfold.py): the sample standard deviation (n - 1); one run has none."""
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return (f"{statistics.mean(values):.2f} ± {std:.2f} % (min {min(values):.2f}, max {max(values):.2f}, "
            f"{len(values)} {unit}{'s' if len(values) > 1 else ''})")
