"""Multi-label with a known answer: 2x2 mosaics of four CIFAR-10 images (64x64 px), each labelled with the set
of classes in it (one to four), from the JPEG copy's train and test images. Trains the default CNN and the
cifar10 recipe's model (data.multilabel, train.best_metric=map), each in its own process, and prints their
test mAP, micro and macro F1, subset accuracy and time.

    python benchmarks/mosaics.py --root ../shared/datasets/cifar10-jpg
    python benchmarks/mosaics.py --train 2000 --test 500 train.epochs=3
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.entry import Parser, run_cli  # noqa: E402
MODELS = {"cnn": [], "cifar10 recipe": ["--config", str(ROOT / "configs" / "cifar10.yaml")]}


def build_mosaics(source: Path, folder: Path, counts: dict[str, int]) -> None:
    """folder/<split>_<i>.jpg and folder/labels.csv (file, label, split): counts[split] mosaics per split."""
    rng = random.Random(0)
    rows = ["file,label,split"]
    for split, count in counts.items():
        images = [(path, path.parent.name) for path in sorted((source / split).glob("*/*.jpg"))]
        for i in range(count):
            picked = rng.sample(images, 4)
            mosaic = Image.new("RGB", (64, 64))
            for q, (path, _) in enumerate(picked):
                mosaic.paste(Image.open(path).convert("RGB").resize((32, 32)), (32 * (q % 2), 32 * (q // 2)))
            mosaic.save(folder / f"{split}_{i}.jpg", quality=95)
            rows.append(f"{split}_{i}.jpg,{' '.join(sorted({name for _, name in picked}))},{split}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def run(name: str, folder: Path, work: Path, overrides: list[str]) -> dict:
    """Train in a child process, then read test.py's report of best.pt."""
    data = ["data.name=csv", f"data.root={folder}", "data.labels=labels.csv", "data.multilabel=true",
            "data.image_size=64", "data.augment=flip_crop", "train.best_metric=map", f"run.output_dir={work}",
            f"data.cache_dir={work / 'cache'}", f"run.name={name.replace(' ', '-')}"]
    command = [sys.executable, str(ROOT / "train.py"), *MODELS[name], *data, *overrides]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    seconds = time.perf_counter() - start
    if "test (best.pt" not in out:
        raise SystemExit(f"error: {name} failed:\n{out[-2000:]}")
    subprocess.run([sys.executable, str(ROOT / "test.py"), str(work / name.replace(" ", "-"))], cwd=ROOT,
                   capture_output=True, check=True)
    report = json.loads((work / name.replace(" ", "-") / "test_report.json").read_text())
    return {"model": name, **{key: report[key] for key in ("map", "micro_f1", "macro_f1", "subset_accuracy")},
            "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/datasets/cifar10-jpg", help="CIFAR-10 as JPEG class folders")
    parser.add_argument("--train", type=int, default=5000, help="training mosaics")
    parser.add_argument("--test", type=int, default=1000, help="test mosaics")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mosaics"
        folder.mkdir()
        build_mosaics(Path(args.root), folder, {"train": args.train, "test": args.test})
        rows = [run(name, folder, Path(tmp) / "runs", args.overrides) for name in MODELS]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {args.train} training / {args.test} test mosaics, {args.overrides}")
    print("| model | test mAP | micro F1 | macro F1 | subset accuracy | time (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['model']} | {100 * row['map']:.2f}% | {100 * row['micro_f1']:.2f}% | "
              f"{100 * row['macro_f1']:.2f}% | {100 * row['subset_accuracy']:.2f}% | {row['seconds']:.0f} |")


if __name__ == "__main__":
    run_cli(main)
