"""Small photo sets from scratch, offline: configs/photos.yaml against config.yaml and configs/cifar10.yaml.

Builds a photo set as people have one: PER_CLASS CIFAR-10 JPEGs of each class, resized to mixed sizes
(40-160 px, seeded), in one folder of class folders without a test split; each run holds out
data.test_fraction=0.2 of it (the same images for all) and trains in its own process. Prints a table.

    python benchmarks/photos.py --root ../shared/datasets/cifar10-jpg
    python benchmarks/photos.py --root ../shared/datasets/cifar10-jpg --per-class 30 --runs photos
"""
import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.entry import Parser, run_cli  # noqa: E402
RUNS = {  # name -> train.py arguments after the data; the new user tried the last two
    "photos": ["--config", str(ROOT / "configs" / "photos.yaml")],
    "photos-resnet": ["--config", str(ROOT / "configs" / "photos.yaml"), "model.name=resnet", "train.epochs=25",
                      "train.batch_size=32"],  # the recipe with model.py's small ResNet instead of the CNN
    "config.yaml": ["data.name=folder", "data.test_fraction=0.2"],
    "cifar10": ["--config", str(ROOT / "configs" / "cifar10.yaml"), "data.name=folder", "data.test_fraction=0.2"],
}


def build_photos(source: Path, folder: Path, per_class: int) -> int:
    """folder/<class>/*.jpg: the first per_class images of each class of source/train, resized; returns the count."""
    rng = random.Random(0)
    count = 0
    for class_dir in sorted(p for p in (source / "train").iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            width, height = rng.randint(40, 160), rng.randint(40, 160)
            Image.open(path).convert("RGB").resize((width, height)).save(folder / class_dir.name / path.name)
            count += 1
    return count


def run(name: str, folder: Path, output_dir: Path) -> dict:
    """Train one configuration in a child process; its numbers from what train.py prints."""
    command = [sys.executable, str(ROOT / "train.py"), *RUNS[name], f"data.root={folder}",
               f"run.output_dir={output_dir}", f"data.cache_dir={output_dir / 'cache'}", f"run.name={name}"]
    print("$ " + " ".join(command), flush=True)
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True).stdout
    if "test (best.pt" not in out:
        raise SystemExit(f"error: {name} failed:\n{out[-2000:]}")
    seconds = sum(float(s) for s in re.findall(r"^epoch .*?\s([\d.]+)s(?:  \*best)?$", out, re.M))
    sizes = re.search(r"(\d+) train / (\d+) val images", out)
    return {"run": name, "model": re.search(r"^model: (\w+)", out, re.M)[1],
            "epochs": len(re.findall(r"^epoch ", out, re.M)), "train/val": f"{sizes[1]}/{sizes[2]}",
            "test acc": float(re.search(r"^test .*accuracy ([\d.]+)%", out, re.M)[1]), "train s": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/datasets/cifar10-jpg", help="CIFAR-10 as JPEG class folders")
    parser.add_argument("--per-class", type=int, default=100, help="photos per class (default 100: 1,000 in all)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        print(f"{build_photos(Path(args.root), folder, args.per_class)} photos in {folder}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
        rows = [run(name, folder, Path(tmp) / "runs") for name in args.runs]
    print("| " + " | ".join(rows[0]) + " |\n|" + " --- |" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    run_cli(main)
