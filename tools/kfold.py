"""k-fold cross-validation: K runs of one config, each validating on another fold of the training split.

    python tools/kfold.py --folds 5                                   # the default CNN on the digits
    python tools/kfold.py --folds 5 --config configs/mnist.yaml data.root=../shared/datasets
    python tools/kfold.py --folds 5                                   # again: finished folds are kept

The folds are stratified and seeded by run.seed (data.folds, data.fold); the test split is never touched.
Each fold is an ordinary run folder, checkpoints/kfold/<name>/fold-<k>/; at the end a table of each fold's
best validation score (train.best_metric) and test accuracy with their mean ± standard deviation, printed
and written as folds.csv and folds.png. Running the same command again keeps the finished folds and
continues an interrupted one from its last.pt.
"""
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
import train as train_script  # noqa: E402
from engine import runs  # noqa: E402
from engine.card import CARD_NAME, finish_run  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.cli import make_parser, positive_int, run_cli  # noqa: E402
from engine.columns import spread  # noqa: E402
from engine.config import Config, check_plain_name, flatten, load_config, read_config, to_dict  # noqa: E402
from engine.devices import select_device  # noqa: E402
from engine.errors import UserError, shown  # noqa: E402
from engine.escape import CsvWriter  # noqa: E402
from engine.metrics import evaluate_checkpoint  # noqa: E402
from engine.plots import plot_folds  # noqa: E402
from engine.storage import write_text  # noqa: E402


def run_fold(cfg: Config, run_dir: Path) -> dict:
    """Train the fold, or continue it from its last.pt (a fold whose model card exists is done); its test results."""
    if (run_dir / "config.yaml").is_file():
        check_same_settings(cfg, run_dir)
    if (run_dir / CARD_NAME).is_file():
        print(f"{run_dir.name}: done before, kept")
        return evaluate_checkpoint(run_dir / "best.pt", select_device(cfg.run.device))[2]
    if (run_dir / "last.pt").is_file():
        ckpt = load_checkpoint(run_dir / "last.pt")
        print(f"{run_dir.name}: continuing from epoch {ckpt['epoch']}")
        if not runs.finished(ckpt, cfg):
            train_script.train(runs.resumed_config(ckpt, []), ckpt, run_dir)
    else:
        train_script.train(cfg, explicit_name=True)
    return finish_run(run_dir, cfg, select_device(cfg.run.device))


def check_same_settings(cfg: Config, run_dir: Path) -> None:
    """A fold folder kept from an earlier command must hold a run of these settings, or the table would mix them."""
    saved, now = flatten(read_config(run_dir / "config.yaml")), flatten(to_dict(cfg))
    differ = [key for key in now if key in saved and saved[key] != now[key]]
    if differ:
        raise UserError(f"{run_dir} was trained with other settings ({differ[0]}: {shown(saved[differ[0]])}, now "
                        f"{shown(now[differ[0]])}{' and more' if len(differ) > 1 else ''}); give --name for a new set "
                        "of folds, or the same settings to continue this one")


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--folds", type=positive_int, default=5, help="K, at least 2 (default 5)")
    parser.add_argument("--name", help="the folder under checkpoints/kfold/ (default: <data>-<model>-<K>folds)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        raise UserError("--folds must be at least 2: each fold validates on 1/K of the training split")
    base = load_config(args.config, args.overrides)
    name = args.name or f"{base.data.name}-{base.model.name}-{args.folds}folds"
    check_plain_name(name, "--name")
    folder = Path(base.run.output_dir) / "kfold" / name
    rows = []
    for k in range(args.folds):
        cfg = load_config(args.config, [*args.overrides, f"data.folds={args.folds}", f"data.fold={k}",
                                        f"run.output_dir={folder}", f"run.name=fold-{k}"])
        print(f"fold {k} of {args.folds}", flush=True)
        test = run_fold(cfg, folder / f"fold-{k}")
        best = load_checkpoint(folder / f"fold-{k}" / "best.pt")
        rows.append({"fold": k, "val": 100 * best["best_score"], "test": 100 * test["accuracy"],
                     "epoch": best["epoch"]})
    metric = base.train.best_metric
    table = io.StringIO()
    CsvWriter(table, lineterminator="\n").writerows([["fold", f"val {metric}", "test accuracy", "best epoch"]] + [
        [row["fold"], f"{row['val']:.2f}", f"{row['test']:.2f}", row["epoch"]] for row in rows])
    write_text(folder / "folds.csv", table.getvalue())
    plot_folds(rows, folder / "folds.png", f"{name}: val {metric} and test accuracy per fold")
    print(table.getvalue(), end="")
    print(f"val {metric}: {spread([row['val'] for row in rows], 'fold')}")
    print(f"test accuracy: {spread([row['test'] for row in rows], 'fold')}")
    print(f"wrote {folder / 'folds.csv'} and folds.png")


if __name__ == "__main__":
    run_cli(main)
