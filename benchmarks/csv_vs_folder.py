"""The same images as class folders and as one folder plus train.csv/test.csv: the same test accuracy.

Takes the first PER_CLASS training (and PER_CLASS/5 test) images of each class of a folder data set
(CIFAR-10's JPEG copy by default), links them into a folder copy (train/<class>/, test/<class>/) and a
CSV copy (images/ plus train.csv and test.csv, rows in the folder's order, and once more shuffled), and
trains each with the same seed and config in its own process. Prints a table.

    python benchmarks/csv_vs_folder.py --root ../shared/datasets/cifar10-jpg
    python benchmarks/csv_vs_folder.py --per-class 1000 train.epochs=3
"""
import argparse
import csv
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.entry import Parser, run_cli  # noqa: E402


def link_copies(source: Path, work: Path, per_class: int) -> None:
    """work/folder/<split>/<class>/ and work/csv/images/ + train.csv, test.csv, train_shuffled.csv (symlinks)."""
    (work / "csv" / "images").mkdir(parents=True)
    for split, count in (("train", per_class), ("test", max(1, per_class // 5))):
        rows = []
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            (work / "folder" / split / class_dir.name).mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:count]:
                os.symlink(path.resolve(), work / "folder" / split / class_dir.name / path.name)
                name = f"{split}_{class_dir.name}_{path.name}"
                os.symlink(path.resolve(), work / "csv" / "images" / name)
                rows.append([f"images/{name}", class_dir.name])
        write_csv(work / "csv" / f"{split}.csv", rows)
        if split == "train":
            random.Random(0).shuffle(rows)
            write_csv(work / "csv" / "train_shuffled.csv", rows)


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["file", "label"], *rows])


def run(name: str, data: list[str], work: Path, overrides: list[str]) -> dict:
    """Train in a child process; test accuracy and time from what train.py prints."""
    command = [sys.executable, str(ROOT / "train.py"), *data, "data.augment=flip_crop",
               f"run.output_dir={work / 'runs'}", f"data.cache_dir={work / 'cache'}", f"run.name={name}", *overrides]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True).stdout
    if "test (best.pt" not in out:
        raise SystemExit(f"error: {name} failed:\n{out[-2000:]}")
    seconds = sum(float(s) for s in re.findall(r"^epoch .*?\s([\d.]+)s(?:  \*best)?$", out, re.M))
    return {"layout": name, "test acc": float(re.search(r"^test .*accuracy ([\d.]+)%", out, re.M)[1]),
            "train s": seconds, "total s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/datasets/cifar10-jpg", help="a folder data set")
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        link_copies(Path(args.root), work, args.per_class)
        csv_root = f"data.root={work / 'csv'}"
        layouts = {"folder": ["data.name=folder", f"data.root={work / 'folder'}"],
                   "csv": ["data.name=csv", csv_root, "data.labels=train.csv", "data.test_labels=test.csv"],
                   "csv-shuffled": ["data.name=csv", csv_root, "data.labels=train_shuffled.csv",
                                          "data.test_labels=test.csv"]}
        rows = [run(name, data, work, args.overrides) for name, data in layouts.items()]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {args.per_class} training images per class, {args.overrides}")
    print("| layout | test acc | train s | total s |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['layout']} | {row['test acc']:.2f}% | {row['train s']:.1f} | {row['total s']:.1f} |")


if __name__ == "__main__":
    run_cli(main)
