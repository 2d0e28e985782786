"""Class imbalance, measured: the embedded digits with two classes cut to 5% of their training images,
trained plain, with train.class_weights=balanced, and with data.sampler=balanced.

    python benchmarks/imbalance.py                       # digits 3 and 8 keep 5 %, default config, ~1 min on a CPU
    python benchmarks/imbalance.py --rare 1 7 --keep 0.1

The data set is written as 8x8 PNG folders under --work (the test split stays complete); each run
is tested on it and the table gives the rare classes' recall and the balanced accuracy.
"""
import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.builtin_sets import load_digits  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.devices import select_device  # noqa: E402
from engine.entry import Parser, run_cli  # noqa: E402
from engine.metrics import evaluate_checkpoint, per_class  # noqa: E402
from train import train  # noqa: E402

SETTINGS = {"plain": [], "class_weights=balanced": ["train.class_weights=balanced"],
            "sampler=balanced": ["data.sampler=balanced"]}


def write_digits(folder: Path, rare: list[int], keep: float) -> list[int]:
    """folder/{train,test}/<digit>/i.png, the rare digits' training images cut to `keep`; returns train counts."""
    counts = []
    for split in ("train", "test"):
        images, labels = load_digits(split)
        for digit in range(10):
            members = images[labels == digit]
            if split == "train":
                members = members[: max(1, round(keep * len(members)))] if digit in rare else members
                counts.append(len(members))
            (folder / split / str(digit)).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(members):
                Image.fromarray(image[0].numpy()).save(folder / split / str(digit) / f"{i}.png")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("checkpoints/imbalance-bench"))
    parser.add_argument("--rare", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--keep", type=float, default=0.05, help="share of the rare classes' training images kept")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    counts = write_digits(args.work / "digits", args.rare, args.keep)
    print(f"training images per digit: {counts}")
    rows = []
    for label, overrides in SETTINGS.items():
        for seed in args.seeds:
            cfg = load_config(None, ["data.name=folder", f"data.root={args.work / 'digits'}", "data.channels=1",
                                     "data.image_size=8", "data.cache_dir=", f"run.output_dir={args.work / 'runs'}",
                                     f"run.seed={seed}", *overrides])
            run_dir = train(cfg)
            _, _, test = evaluate_checkpoint(run_dir / "best.pt", select_device(cfg.run.device))
            recall = [row["recall"] for row in per_class(test["confusion"], [str(d) for d in range(10)])]
            rows.append((label, seed, [recall[d] for d in args.rare], test["balanced_accuracy"], test["accuracy"]))
    rare = " | ".join(f"recall of {d}" for d in args.rare)
    print(f"\n| run | seed | {rare} | balanced accuracy | accuracy |")
    print("| --- | --- |" + " --- |" * (len(args.rare) + 2))
    for label, seed, recalls, balanced, accuracy in rows:
        print(f"| {label} | {seed} | " + " | ".join(f"{100 * r:.1f}%" for r in recalls)
              + f" | {100 * balanced:.2f}% | {100 * accuracy:.2f}% |")


if __name__ == "__main__":
    run_cli(main)
