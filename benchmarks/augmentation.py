"""Augmentation's share of a training step, per option, on CIFAR-10 batches with the cifar10 recipe's model.

For each option: milliseconds to augment a batch (uint8 -> augmented, normalised float, as the
training loader does it) and to train one step on it (forward, backward, AdamW), and the share of
the two that augmentation takes. Also times torchvision.transforms.v2 called once per image (the
only way v2 gives per-image draws; it takes them from the global RNG, not a seeded generator).

    python benchmarks/augmentation.py --cifar10-folder ../shared/datasets/cifar10-jpg
    python benchmarks/augmentation.py --batch-size 128 --rounds 5 --threads 1
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.augment import Augmentation, augment_images, augment_normalised, generator_for  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.datasets import load_split  # noqa: E402
from engine.entry import Parser, run_cli  # noqa: E402
from model import build_model  # noqa: E402

OPTIONS = {
    "none": Augmentation("none"),
    "crop": Augmentation("crop"),
    "flip_crop": Augmentation("flip_crop"),
    "trivialaugment": Augmentation("trivialaugment"),
    "randaugment": Augmentation("randaugment"),
    "flip_crop + random_erasing 0.25": Augmentation("flip_crop", random_erasing=0.25),
    "flip_crop + mixup 0.2 + cutmix 1.0": Augmentation("flip_crop", mixup_alpha=0.2, cutmix_alpha=1.0,
                                                       num_classes=10),
}


def milliseconds(fn, repeats: int) -> float:
    fn()  # untimed: first calls pay allocation and oneDNN set-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar10-folder", help="CIFAR-10 JPEG folder (train/<class>/); random images if absent")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = PyTorch's default")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "configs" / "cifar10.yaml", [])
    if args.cifar10_folder:
        folder = load_config(None, ["data.name=folder", f"data.root={args.cifar10_folder}"]).data
        images = load_split(folder, "train")[0][: args.batch_size]
    else:
        images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(args.batch_size) % 10
    model = build_model(cfg.model, 3, 10, 32).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), cfg.train.lr)
    mean, std = images.float().mean((0, 2, 3), keepdim=True), images.float().std((0, 2, 3), keepdim=True)
    generator = generator_for(0, 1, 0, torch.device("cpu"))

    def augment(aug: Augmentation) -> tuple[torch.Tensor, torch.Tensor]:
        batch = (augment_images(images.float(), aug, generator) - mean) / std
        return augment_normalised(batch, labels, aug, generator)

    def train_step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch[0]), batch[1]).backward()
        optimizer.step()

    from torchvision.transforms import v2
    v2_options = {"torchvision v2 TrivialAugmentWide, once per image": v2.TrivialAugmentWide(),
                  "torchvision v2 RandAugment, once per image": v2.RandAugment()}
    times = {name: [] for name in [*OPTIONS, *v2_options, "training step"]}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit every row alike
        for name, aug in OPTIONS.items():
            times[name].append(milliseconds(lambda: augment(aug), args.repeats))
        for name, transform in v2_options.items():
            times[name].append(milliseconds(lambda: torch.stack([transform(image) for image in images]), args.repeats))
        batch = augment(OPTIONS["none"])
        times["training step"].append(milliseconds(lambda: train_step(batch), args.repeats))
    median = {name: statistics.median(values) for name, values in times.items()}
    step = median["training step"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"model {cfg.model.name} {cfg.model.widths}: training step {step:.0f} ms (median of {args.rounds} rounds)")
    print("| augmentation | ms per batch | share of a training step (augment / (augment + step)) |")
    print("| --- | ---: | ---: |")
    for name in [*OPTIONS, *v2_options]:
        print(f"| {name} | {median[name]:.1f} | {100 * median[name] / (median[name] + step):.1f}% |")


if __name__ == "__main__":
    run_cli(main)
