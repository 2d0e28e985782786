"""Benchmark against pytorch/examples mnist/main.py, the script most people start from.

    python benchmarks/bench_mnist.py --root ../shared/datasets
    python benchmarks/bench_mnist.py --root ../shared/datasets --batches 100 --skip-full-run

In one run on this machine:
  (a) the canonical model through the canonical per-sample pipeline
      (torchvision MNIST -> ToTensor -> Normalize -> DataLoader), N batches of 64;
  (b) the same model, optimizer and batches through this project's pipeline (uint8 tensors in
      memory, normalised per batch, seeded randperm), alone and with the project's speed switches;
  (c) the model's FLOPs per image and the fraction of the measured conv throughput (b) reaches;
  (d) the default config trained on MNIST, with its training seconds and test accuracy.
"""
import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.cli import run_cli  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.datasets import DataInfo, load_split  # noqa: E402
from engine.entry import Parser  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.loaders import Batching, Loader  # noqa: E402
from engine.metrics import evaluate_checkpoint  # noqa: E402
from train import train  # noqa: E402

MEAN, STD = 0.1307, 0.3081  # the canonical example's normalisation constants
WARMUP = 5


class CanonicalNet(nn.Module):
    """The model of pytorch/examples mnist/main.py."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)  # (B, 64, 12, 12)
        x = self.dropout2(F.relu(self.fc1(self.dropout1(torch.flatten(x, 1)))))
        return self.fc2(x)  # (B, 10); the example's log_softmax + nll_loss == cross_entropy


def timed_rate(batches, num_batches: int, step) -> float:
    """Images per second of step(images, labels) over num_batches batches, after WARMUP untimed ones."""
    seen, start = 0, None
    for i, (images, labels) in enumerate(batches):
        if i == WARMUP:
            seen, start = 0, time.perf_counter()
        if i == WARMUP + num_batches:
            break
        step(images, labels)
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def images_per_second(batches, num_batches: int, channels_last: bool = False, bf16: bool = False) -> float:
    """Train the canonical model with Adadelta(lr=1.0) on num_batches; time all but the warm-up ones."""
    torch.manual_seed(0)
    model = CanonicalNet()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    model.train()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    return timed_rate(batches, num_batches, step)


def canonical_loader(root: str):
    from torchvision import datasets, transforms
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = datasets.MNIST(root, train=True, download=False, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)


def project_loader(root: str) -> Loader:
    cfg = load_config(None, ["data.name=mnist", f"data.root={root}"])
    images, labels = load_split(cfg.data, "train")
    info = DataInfo(1, 28, [str(d) for d in range(10)], mean=[MEAN], std=[STD])
    loader = Loader(images, labels, Batching(64, shuffle_seed=0), info, torch.device("cpu"))
    loader.set_epoch(1)
    return loader


def train_flops_per_image() -> float:
    """Forward + backward FLOPs of one training image, counted by PyTorch."""
    model, images = CanonicalNet(), torch.randn(8, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), torch.zeros(8, dtype=torch.int64)).backward()
    return counter.get_total_flops() / 8


def conv_throughput() -> float:
    """FLOP/s of this machine on the model's dominant layer (conv 32 -> 64, 3x3 on 26x26), forward and backward."""
    conv = nn.Conv2d(32, 64, 3).to(memory_format=torch.channels_last)
    x = torch.randn(64, 32, 26, 26).contiguous(memory_format=torch.channels_last).requires_grad_()
    flops = 3 * 2 * 64 * 24 * 24 * 64 * 32 * 9  # forward, plus about twice that backward
    for _ in range(3):
        conv(x).sum().backward()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        conv(x).sum().backward()
    return flops * reps / (time.perf_counter() - start)


def full_run(root: str, output_dir: str) -> None:
    cfg = load_config(None, ["data.name=mnist", f"data.root={root}", "train.epochs=2", f"run.output_dir={output_dir}"])
    with contextlib.redirect_stdout(io.StringIO()):
        run_dir = train(cfg)
    ckpt, _, test = evaluate_checkpoint(run_dir / "best.pt", torch.device("cpu"))
    seconds = sum(row["seconds"] for row in ckpt["history"])
    verdict = "reaches" if test["accuracy"] >= 0.99 else "DOES NOT reach"
    print(f"(d) default config, {cfg.train.epochs} epochs: {seconds:.1f} s of training (train + val per epoch), "
          f"test accuracy {100 * test['accuracy']:.2f}% ({verdict} 99.0%)")


CANONICAL, OURS = ("(a) canonical: MNIST -> ToTensor -> Normalize -> DataLoader",
                   "(b) this project: in-memory uint8, normalised per batch")


def compare_pipelines(canonical, ours: Loader, num_batches: int, rounds: int) -> dict[str, float]:
    """(a) and (b): each row's median images/s over interleaved rounds, printed with its ratio to (a)."""
    rows = {  # label -> (loader, channels_last, bf16)
        CANONICAL: (canonical, False, False),
        OURS: (ours, False, False),
        "(b) + channels_last (run.channels_last=true, the default)": (ours, True, False),
        "(b) + channels_last + bf16 autocast (run.amp=bf16)": (ours, True, True),
    }
    for loader, channels_last, bf16 in rows.values():  # untimed: the first row would pay oneDNN's set-up
        images_per_second(loader, 10, channels_last, bf16)
    speeds = {label: [] for label in rows}
    for _ in range(rounds):  # interleaved, so drifts in machine speed hit every row alike
        for label, (loader, channels_last, bf16) in rows.items():
            speeds[label].append(images_per_second(loader, num_batches, channels_last, bf16))
    medians = {label: statistics.median(values) for label, values in speeds.items()}
    print(f"{'pipeline':<62}{'images/s':>10}{'ratio':>8}")
    for label, speed in medians.items():
        print(f"{label:<62}{speed:>10.0f}{speed / medians[CANONICAL]:>8.2f}")
    return medians


def print_loading_share(canonical, canonical_rate: float, num_batches: int) -> None:
    """The most any data pipeline can give: the canonical step minus its loading time."""
    loading_rate = timed_rate(canonical, num_batches, lambda images, labels: None)
    share = canonical_rate / loading_rate  # seconds loading / seconds per training step
    print(f"\n    the canonical DataLoader alone delivers {loading_rate:.0f} images/s: loading is "
          f"{100 * share:.0f}% of its training step,\n    so a pipeline that loaded in no time at all "
          f"would reach {1 / (1 - share):.2f}x")


def print_conv_share(rate: float) -> None:
    """(c): FLOPs per image, and the share of the measured conv throughput that rate images/s reaches."""
    flops, peak = train_flops_per_image(), conv_throughput()
    print(f"\n(c) {flops / 1e6:.1f} MFLOP per training image (forward + backward); measured float32 conv "
          f"throughput {peak / 1e9:.1f} GFLOP/s;\n    (b) runs at {rate * flops / 1e9:.1f} GFLOP/s "
          f"= {100 * rate * flops / peak:.0f}% of it")


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="folder holding MNIST/raw/")
    parser.add_argument("--batches", type=int, default=200, help="timed batches of 64 per pipeline")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of each row")
    parser.add_argument("--skip-full-run", action="store_true", help="skip (d)")
    parser.add_argument("--output-dir", default="checkpoints/bench", help="where (d) writes its run")
    args = parser.parse_args(argv)
    if not (Path(args.root) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        raise UserError(f"MNIST not found in {args.root}/MNIST/raw; pass --root pointing at a folder with MNIST/raw/")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of "
          f"{args.batches} timed batches of 64 per row (median shown)")
    canonical = canonical_loader(args.root)
    medians = compare_pipelines(canonical, project_loader(args.root), args.batches, args.rounds)
    print_loading_share(canonical, medians[CANONICAL], args.batches)
    print_conv_share(medians[OURS])
    if not args.skip_full_run:
        full_run(args.root, args.output_dir)


if __name__ == "__main__":
    run_cli(main)
