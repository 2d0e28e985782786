"""Evaluate a saved checkpoint on the test split of the data set it was trained on.

The model is rebuilt from the config stored in the checkpoint, so no config file is needed.
Writes test_report.json, confusion_matrix.csv and confusion_matrix.png next to the checkpoint.

    python test.py                              # best.pt of the most recent run under checkpoints/
    python test.py checkpoints/<run>            # best.pt of that run
    python test.py checkpoints/<run>/last.pt    # any checkpoint file
"""
import argparse
import csv
import json
from pathlib import Path

import torch

from checkpoint import resolve
from config import Parser, run_cli, select_device
from metrics import evaluate_checkpoint, per_class
from plots import plot_confusion


def write_confusion_csv(confusion: torch.Tensor, class_names: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion.tolist()):
            writer.writerow([name, *row])


def print_report(report: dict) -> None:
    print(f"checkpoint: {report['checkpoint']} (epoch {report['epoch']})")
    print(f"test images: {report['num_images']}   loss {report['loss']:.4f}   "
          f"accuracy {100 * report['accuracy']:.2f}%")
    print(f"{'class':<16}{'accuracy/recall':>16}{'precision':>11}{'f1':>8}{'support':>9}")
    for row in report["per_class"]:
        print(f"{row['class'][:15]:<16}{100 * row['recall']:>15.2f}%{100 * row['precision']:>10.2f}%"
              f"{100 * row['f1']:>7.2f}%{row['support']:>9}")


def main() -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT_OR_RUN_FOLDER",
                        help="a .pt file or a run folder (default: the most recent run)")
    parser.add_argument("--runs-dir", default="checkpoints", help="where to look for the most recent run")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    args = parser.parse_args()

    path = resolve(args.checkpoint, args.runs_dir, "best.pt")
    ckpt, results = evaluate_checkpoint(path, select_device(args.device), args.batch_size)
    class_names = ckpt["data"]["class_names"]
    confusion = results["confusion"]
    report = {"checkpoint": str(path), "epoch": ckpt["epoch"], "data": ckpt["config"]["data"]["name"],
              "num_images": int(confusion.sum()), "loss": results["loss"], "accuracy": results["accuracy"],
              "per_class": per_class(confusion, class_names), "confusion": confusion.tolist()}
    print_report(report)

    run_dir = path.parent
    (run_dir / "test_report.json").write_text(json.dumps(report, indent=2))
    write_confusion_csv(confusion, class_names, run_dir / "confusion_matrix.csv")
    plot_confusion(confusion, class_names, run_dir / "confusion_matrix.png",
                   f"{report['data']} test: accuracy {100 * report['accuracy']:.2f}%")
    print(f"wrote {run_dir}/test_report.json, confusion_matrix.csv, confusion_matrix.png")


if __name__ == "__main__":
    run_cli(main)
