"""GPU check: the one command that shows how the template runs on a GPU machine, as one table.

    python benchmarks/gpu_check.py --root ../shared/datasets               # on a GPU machine, < 5 min on one H100
    python benchmarks/gpu_check.py --root ../shared/datasets --device cpu --quick   # the code paths, on a CPU

Rows: each speed switch on MNIST (untimed warm-up epoch, then the median images/s of the next
epochs, with the warm-up's extra seconds, i.e. compilation, in their own column), a batch-size
sweep, evaluation images/s, streaming a JPEG folder through DataLoader workers, the time to 99.0%
MNIST test accuracy with the default config, the CIFAR-10 recipe's speed and the long CIFAR-10 recipe's
test accuracy with its TTA and training seconds (the headline: airbench94's network, 94 % on a GPU),
and train.py under torchrun with 1 GPU and with all GPUs (learning rate scaled with the number of
processes; validation shrunk to 1% of the data so it hardly counts). Every subprocess has a timeout.
"""
import argparse
import contextlib
import io
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.cli import run_cli  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.datasets import describe, load_split  # noqa: E402
from engine.entry import Parser  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.loaders import (Batching, Loader, make_eval_loader, make_train_loaders,  # noqa: E402
                            num_workers)
from engine.metrics import evaluate, evaluate_checkpoint  # noqa: E402
from model import build_model  # noqa: E402
import train as train_module  # noqa: E402

SWITCHES = {
    "float32, NCHW": ["run.channels_last=false"],
    "channels_last": [],
    "channels_last + cudnn_benchmark": ["run.cudnn_benchmark=true"],
    "channels_last + amp bf16": ["run.amp=bf16"],
    "channels_last + amp fp16 (scaler)": ["run.amp=fp16"],
    "channels_last + bf16 + compile": ["run.amp=bf16", "run.compile=true"],
}
COLUMNS = f"{'row':<44}{'images/s':>10}{'warm-up s':>10}{'seconds':>9}{'test acc':>10}{'peak GB':>9}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")


def train_timed(overrides: list[str], config: Path | None = None) -> tuple[list[float], list[int], Path]:
    """Train in-process; returns each epoch's training seconds (validation excluded), images, run folder."""
    cfg = load_config(config, overrides)
    seconds, images = [], []
    real_epoch = train_module.train_one_epoch

    def timed(model, loader, *args):
        sync(loader.device)
        start = time.perf_counter()
        result = real_epoch(model, loader, *args)
        sync(loader.device)
        seconds.append(time.perf_counter() - start)
        images.append(len(loader) * loader.batching.size)
        return result

    train_module.train_one_epoch = timed
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run_dir = train_module.train(cfg)
    finally:
        train_module.train_one_epoch = real_epoch
    return seconds, images, run_dir


def speed_row(label: str, overrides: list[str], device: torch.device, config: Path | None = None) -> str:
    """Epoch 1 is the warm-up; images/s is the median over the later epochs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, images, run_dir = train_timed(overrides, config)
    rates = [n / s for n, s in zip(images[1:], seconds[1:])]
    steady = statistics.median(rates)
    _, _, test = evaluate_checkpoint(run_dir / "last.pt", device)
    warmup = seconds[0] - images[0] / steady
    return (f"{label:<44}{steady:>10.0f}{warmup:>10.1f}{sum(seconds):>9.1f}{100 * test['accuracy']:>9.2f}%"
            f"{peak_gb(device):>9.2f}")


def eval_row(base: list[str], batch_size: int, device: torch.device) -> str:
    """images/s of the one evaluation loop over the MNIST test split, with the default model untrained."""
    cfg = load_config(None, base)
    info = make_train_loaders(cfg, device)[2]
    model = build_model(cfg.model, info.in_channels, len(info.class_names), info.image_size).to(device)
    loader = make_eval_loader(cfg, info, "test", batch_size, device)
    rates = []
    for _ in range(4):  # the first is the warm-up
        sync(device)
        start = time.perf_counter()
        evaluate(model, loader, 10, device)
        sync(device)
        rates.append(len(loader.labels) / (time.perf_counter() - start))
    return f"{f'evaluation, batch {batch_size}':<44}{statistics.median(rates[1:]):>10.0f}"


def streaming_row(folder: Path, device: torch.device, batches: int) -> str:
    """Decoding JPEGs in DataLoader workers (data.max_memory_mb=0), the loader alone."""
    cfg = load_config(None, ["data.name=folder", f"data.root={folder}", "data.max_memory_mb=0", "data.image_size=32"])
    images, labels = load_split(cfg.data, "train")
    info = replace(describe(cfg.data), mean=[0.5] * 3, std=[0.25] * 3)
    workers = num_workers(cfg.data)
    loader = Loader(images, labels, Batching(256, shuffle_seed=0, num_workers=workers), info, device)
    seen, start = 0, time.perf_counter()
    for step, (batch, _) in enumerate(loader, 1):
        seen += len(batch)
        if step == batches:
            break
    sync(device)
    return f"{f'streamed JPEG folder, {workers} workers':<44}{seen / (time.perf_counter() - start):>10.0f}"


def time_to_accuracy(base: list[str], target: float, device: torch.device, max_epochs: int) -> str:
    """Training seconds (validation excluded) until best.pt first reaches target test accuracy."""
    for epochs in range(1, max_epochs + 1):
        seconds, _, run_dir = train_timed([*base, f"train.epochs={epochs}"])
        _, _, test = evaluate_checkpoint(run_dir / "best.pt", device)
        if test["accuracy"] >= target:
            return f"{f'MNIST to {100 * target:.1f}% (default config)':<44}{'':>10}{'':>10}{sum(seconds):>9.1f}" \
                   f"{100 * test['accuracy']:>9.2f}%"
    return f"{'MNIST to 99.0%: not reached in':<44}{max_epochs} epochs"


def recipe_accuracy(overrides: list[str], device: torch.device, config: Path, target: float) -> str:
    """The headline: a fixed-schedule recipe's training seconds (validation excluded) and its test accuracy with
    the recipe's test-time augmentation; reached when that is at least target."""
    seconds, _, run_dir = train_timed(overrides, config)
    tta = load_config(config, overrides).train.tta
    _, _, test = evaluate_checkpoint(run_dir / "best.pt", device, tta=tta)
    reached = "reached" if test["accuracy"] >= target else "NOT reached"
    label = f"CIFAR-10 to {100 * target:.0f}% ({config.name}, tta {tta}): {reached}"
    return f"{label:<44}{'':>10}{'':>10}{sum(seconds):>9.1f}{100 * test['accuracy']:>9.2f}%{peak_gb(device):>9.2f}"


def torchrun_row(nproc: int, base: list[str], timeout: int) -> str:
    """train.py under torchrun, lr scaled by nproc; images/s of the last epoch from metrics.csv."""
    name = f"torchrun-{nproc}-{time.strftime('%H%M%S')}"
    lr = load_config(None, base).train.lr * nproc
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(ROOT / "train.py"), *base, "train.epochs=2", f"train.lr={lr}", "data.val_fraction=0.01",
               f"run.name={name}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"torchrun with {nproc} processes: no result within {timeout} s (hung collective?)"
    if result.returncode != 0:
        return f"torchrun with {nproc} processes failed: {result.stderr.strip().splitlines()[-1:]}"
    seconds = float(re.findall(r"  +([\d.]+)s", result.stdout)[-1])
    accuracy = float(re.search(r"accuracy ([\d.]+)%", result.stdout.splitlines()[-1])[1])
    label = f"torchrun, {nproc} GPU{'s' if nproc > 1 else ''} (lr x{nproc})"
    return f"{label:<44}{59_400 / seconds:>10.0f}{'':>10}{seconds:>9.1f}{accuracy:>9.2f}%"


def header(device: torch.device) -> str:
    if device.type != "cuda":
        return f"torch {torch.__version__} on CPU"
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}; TF32 matmul "
            f"{torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}")


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="folder holding MNIST/raw/ and cifar10-jpg/")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer epochs and rows: checks the code paths")
    parser.add_argument("--output-dir", default="checkpoints/gpu-check")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per torchrun subprocess")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("no CUDA device is available; run on a GPU machine or pass --device cpu")
    device = torch.device(args.device)
    epochs = 2 if args.quick else 4
    base = ["data.name=mnist", f"data.root={args.root}", f"run.device={args.device}",
            f"run.output_dir={args.output_dir}"]
    print(header(device))
    print(COLUMNS)
    switches = list(SWITCHES.items())[:2] if args.quick else SWITCHES.items()
    for label, overrides in switches:
        print(speed_row(label, [*base, f"train.epochs={epochs}", *overrides], device), flush=True)
    for batch_size in ([512] if args.quick else [512, 2048]):
        lr = load_config(None, base).train.lr * batch_size / 128
        # amp auto: bf16 on a GPU that has it; float32 on a CPU without native bf16 (emulated bf16 crawls there)
        print(speed_row(f"batch {batch_size} (lr x{batch_size // 128}), amp auto", [*base, f"train.epochs={epochs}",
              f"train.batch_size={batch_size}", f"train.lr={lr}"], device), flush=True)
    for batch_size in (512, 4096):
        print(eval_row(base, batch_size, device), flush=True)
    cifar = Path(args.root) / "cifar10-jpg"
    if cifar.is_dir():
        print(streaming_row(cifar, device, 20 if args.quick else 100), flush=True)
    print(time_to_accuracy(base, 0.99, device, 2 if args.quick else 4), flush=True)
    if cifar.is_dir() and not args.quick:
        overrides = ["data.name=folder", f"data.root={cifar}", f"run.device={args.device}",
                     f"run.output_dir={args.output_dir}"]
        print(speed_row("CIFAR-10 recipe (configs/cifar10.yaml)", overrides, device, ROOT / "configs" / "cifar10.yaml"),
              flush=True)
        print(recipe_accuracy(overrides, device, ROOT / "configs" / "cifar10_long.yaml", 0.94), flush=True)
    if device.type == "cuda":
        for nproc in sorted({1, torch.cuda.device_count()}):
            print(torchrun_row(nproc, base, args.timeout), flush=True)


if __name__ == "__main__":
    run_cli(main)
