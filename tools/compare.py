"""Compare runs: their validation curves on one figure, each labelled by the config keys that differ.

    python tools/compare.py checkpoints/act-relu checkpoints/act-tanh
    python tools/compare.py checkpoints/act-* --output checkpoints/activations.png
    python tools/compare.py checkpoints/act-* --metric macro_f1   # any metric of engine/columns.py's METRICS
"""
import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
from engine.cli import run_cli  # noqa: E402
from engine.columns import METRICS, is_validated  # noqa: E402
from engine.config import flatten, read_config  # noqa: E402
from engine.entry import Parser  # noqa: E402
from engine.errors import UserError, shown  # noqa: E402
from engine.escape import printable  # noqa: E402
from engine.plots import plot_comparison  # noqa: E402
from engine.storage import make_folder  # noqa: E402

IGNORED = {"run.name", "run.output_dir"}  # differ between any two runs without changing the experiment


def read_run(run_dir: Path, column: str) -> tuple[dict[str, str], list[dict]]:
    """A run folder's flattened config and its metrics.csv rows (epoch, val_loss and column) as numbers."""
    if not run_dir.exists():
        raise UserError(f"{run_dir} does not exist; pass run folders written by train.py (checkpoints/<run>)")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; pass run folders written by train.py "
                        "(checkpoints/<run>), not files")
    for name in ("config.yaml", "metrics.csv"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} has no {name}; pass run folders written by train.py")
    raw = read_config(run_dir / "config.yaml")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{run_dir / 'config.yaml'} is not a run's config (a mapping of sections such as data:, "
                        f"model:), got {shown(raw)}; leave this run out or train it again")
    config = {key: str(value) for key, value in flatten(raw).items()}
    return config, read_metrics(run_dir / "metrics.csv", column)


def read_metrics(path: Path, column: str) -> list[dict]:
    """The rows of a metrics.csv as numbers; an empty, damaged or foreign file is an error naming the line."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    history, keys = [], ("epoch", METRICS["loss"].column, column)
    for line, row in enumerate(rows, 2):
        try:
            history.append({key: float(row[key]) for key in keys})
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path} line {line} lacks numbers for {', '.join(keys[:-1])} and {keys[-1]} (a damaged "
                            "or foreign file, or a run from before that metric); leave this run out or train it "
                            "again") from None
    history = [row for row in history if is_validated(row)]  # train.val_every: the other epochs' val columns are NaN
    if not history:
        raise UserError(f"{path} has no epochs yet; leave this run out until it has finished one")
    return history


def labels_for(configs: list[dict[str, str]], names: list[str]) -> list[str]:
    """Each run's values of the keys that differ between the runs; the folder name if none do."""
    keys = sorted({k for c in configs for k in c if len({c.get(k) for c in configs}) > 1} - IGNORED)
    if not keys:
        return names
    return [", ".join(f"{key}={config.get(key, '-')}" for key in keys) for config in configs]


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_FOLDER", help="run folders under checkpoints/")
    parser.add_argument("--output", default="comparison.png",
                        help="PNG to write (default: comparison.png in the current folder)")
    parser.add_argument("--metric", default="accuracy", choices=[name for name, metric in METRICS.items() if metric.is_best],
                        help="the validation metric to plot beside the loss and rank by (default: accuracy)")
    args = parser.parse_args(argv)
    run_dirs, metric = [Path(run) for run in args.runs], METRICS[args.metric]
    configs, histories = zip(*(read_run(run_dir, metric.column) for run_dir in run_dirs))
    labels = labels_for(list(configs), [run_dir.name for run_dir in run_dirs])
    output = Path(args.output)
    make_folder(output.parent, "--output")
    shared = [f"{key}={configs[0][key]}" for key in ("data.name", "model.name", "run.seed")
              if len({config.get(key) for config in configs}) == 1 and key in configs[0]]
    plot_comparison(list(zip(labels, histories)), output, f"{len(run_dirs)} runs, all with {', '.join(shared)}",
                    (metric.column, args.metric.replace("_", " ")))
    for label, history in zip(labels, histories):
        best = max(history, key=lambda row: row[metric.column])
        print(f"{printable(label)}: best val {args.metric.replace('_', ' ')} {100 * best[metric.column]:.2f}% at epoch "
              f"{int(best['epoch'])}")
    print(f"wrote {output}")


if __name__ == "__main__":
    run_cli(main)
