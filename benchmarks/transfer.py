"""Transfer learning, measured offline: pretrain on CIFAR-10 classes 0-4, then learn classes 5-9 from
100 training images per class, (a) from scratch and (b) fine-tuned from (a)'s checkpoint.

    python benchmarks/transfer.py --root ../shared/datasets/cifar10-jpg                 # the template's CNN
    python benchmarks/transfer.py --root ../shared/datasets/cifar10-jpg --model resnet18 --pretrain-epochs 10
    python benchmarks/transfer.py model.conv_blocks.2.out_channels=128    # key=value overrides for every run

The class-per-folder views (symlinks) and every run go under --work. The pretraining run sees all
25,000 training images of classes 0-4; the target runs see 100 images of each of classes 5-9
(chosen with a seeded permutation) and are tested on all 5,000 test images of those classes.
(b) starts from (a)'s best.pt via model.pretrained=PATH: every layer but the head (new for the
other classes) is loaded, the head trains alone for --freeze-epochs, then all layers train, the
pretrained ones at train.lr x --backbone-lr.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.config import load_config  # noqa: E402
from engine.devices import select_device  # noqa: E402
from engine.entry import Parser, run_cli  # noqa: E402
from engine.metrics import evaluate_checkpoint  # noqa: E402
from train import train  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_views(root: Path, work: Path, per_class: int, seed: int) -> tuple[Path, Path]:
    """work/source (classes 0-4, all images) and work/target (classes 5-9, per_class training images)."""
    generator = torch.Generator().manual_seed(seed)
    for view, names in (("source", CLASSES[:5]), ("target", CLASSES[5:])):
        for split in ("train", "test"):
            for name in names:
                link = work / view / split / name
                if link.exists():
                    continue
                link.parent.mkdir(parents=True, exist_ok=True)
                if view == "source" or split == "test":
                    link.symlink_to((root / split / name).resolve(), target_is_directory=True)
                    continue
                files = sorted((root / split / name).iterdir())
                link.mkdir()
                for i in torch.randperm(len(files), generator=generator)[:per_class].tolist():
                    (link / files[i].name).symlink_to(files[i].resolve())
    return work / "source", work / "target"


def run(args: argparse.Namespace, data_root: Path, name: str, *overrides: str) -> tuple[float, float, Path]:
    """Train one config; returns (test accuracy of best.pt, training seconds, run folder)."""
    cfg = load_config(None, ["data.name=folder", f"data.root={data_root}", "data.image_size=32", "data.channels=3",
                             "data.augment=true", f"data.cache_dir={args.work / 'cache'}", f"model.name={args.model}",
                             f"run.output_dir={args.work / 'runs'}", f"run.name={name}-{time.strftime('%H%M%S')}",
                             f"run.seed={args.seed}", *args.overrides, *overrides])
    start = time.perf_counter()
    run_dir = train(cfg)
    seconds = time.perf_counter() - start
    _, _, test = evaluate_checkpoint(run_dir / "best.pt", select_device(cfg.run.device))
    return test["accuracy"], seconds, run_dir


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("../shared/datasets/cifar10-jpg"))
    parser.add_argument("--work", type=Path, default=Path("checkpoints/transfer-bench"))
    parser.add_argument("--model", default="cnn", help="cnn (the template's, fast on a CPU) or a torchvision name")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each target run")
    parser.add_argument("--per-class", type=int, default=100, help="training images per target class")
    parser.add_argument("--freeze-epochs", type=int, default=3)
    parser.add_argument("--backbone-lr", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for all three runs")
    args = parser.parse_args(argv)
    source, target = make_views(args.root, args.work, args.per_class, args.seed)
    target_cfg = [f"train.epochs={args.epochs}", "train.batch_size=64"]

    pre_acc, pre_s, pre_dir = run(args, source, "pretrain", f"train.epochs={args.pretrain_epochs}")
    scratch_acc, scratch_s, _ = run(args, target, "scratch", *target_cfg)
    tuned_acc, tuned_s, _ = run(args, target, "finetune", *target_cfg, f"model.pretrained={pre_dir / 'best.pt'}",
                                f"train.freeze_epochs={args.freeze_epochs}", f"train.backbone_lr={args.backbone_lr}")

    print(f"\ntransfer on CIFAR-10 ({args.model} {' '.join(args.overrides)}, 32 px, seed {args.seed}); "
          "test accuracy of best.pt")
    print("| run | training data | epochs | test accuracy | training time |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| (a) pretrain | classes 0-4, 25,000 images | {args.pretrain_epochs} | {100 * pre_acc:.2f}% (classes 0-4) "
          f"| {pre_s:.0f} s |")
    print(f"| from scratch | classes 5-9, {args.per_class}/class | {args.epochs} | {100 * scratch_acc:.2f}% | "
          f"{scratch_s:.0f} s |")
    print(f"| fine-tuned from (a) | classes 5-9, {args.per_class}/class | {args.epochs} "
          f"({args.freeze_epochs} head only) | {100 * tuned_acc:.2f}% | {tuned_s:.0f} s |")
    gain = 100 * (tuned_acc - scratch_acc)
    print(f"fine-tuned - from scratch: {gain:+.2f} points ({'meets' if gain >= 10 else 'MISSES'} the +10 target)")


if __name__ == "__main__":
    run_cli(main)
