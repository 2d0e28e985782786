"""GPU check: one epoch of MNIST with each speed switch, as a table of images/s and accuracy.

    python benchmarks/gpu_check.py --root ../shared/datasets            # on a machine with a GPU, < 5 min
    python benchmarks/gpu_check.py --root ../shared/datasets --device cpu --skip-compile

Each row trains the default config for one epoch from the same seed; images/s counts training
images over the epoch's training time (validation excluded), except in the torchrun rows, which
run train.py under torchrun with 1 GPU and with all GPUs and count the whole epoch.
"""
import argparse
import contextlib
import csv
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from config import load_config  # noqa: E402
from metrics import evaluate_checkpoint  # noqa: E402
import train as train_module  # noqa: E402

SWITCHES = {
    "baseline (float32, NCHW)": ["run.channels_last=false"],
    "channels_last": ["run.channels_last=true"],
    "channels_last + cudnn_benchmark": ["run.channels_last=true", "run.cudnn_benchmark=true"],
    "channels_last + amp bf16": ["run.channels_last=true", "run.amp=bf16"],
    "channels_last + amp fp16 (grad scaler)": ["run.channels_last=true", "run.amp=fp16"],
    "channels_last + compile": ["run.channels_last=true", "run.compile=true"],
}


def timed_epoch(overrides: list[str]) -> tuple[float, float]:
    """Train one epoch; return (training images/s, test accuracy of the result)."""
    cfg = load_config(None, overrides)
    seconds = []
    real_epoch = train_module.train_one_epoch

    def timed(model, loader, *args):
        start = time.perf_counter()
        result = real_epoch(model, loader, *args)
        if loader.labels.is_cuda:
            torch.cuda.synchronize()
        seconds.append((time.perf_counter() - start, len(loader.labels)))
        return result

    train_module.train_one_epoch = timed
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run_dir = train_module.train(cfg)
            _, _, test = evaluate_checkpoint(run_dir / "last.pt", torch.device(cfg.run.device))
    finally:
        train_module.train_one_epoch = real_epoch
    elapsed, images = seconds[0]
    return images / elapsed, test["accuracy"]


def torchrun_row(nproc: int, root: str, output_dir: str) -> tuple[float, float]:
    """One epoch under torchrun with nproc processes: (training images/s incl. validation, test accuracy)."""
    name = f"torchrun-{nproc}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(ROOT / "train.py"), "data.name=mnist", f"data.root={root}", "train.epochs=1",
               f"run.output_dir={output_dir}", f"run.name={name}-{time.strftime('%H%M%S')}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: torchrun with {nproc} processes failed:\n{result.stderr[-2000:]}")
    accuracy = float(re.search(r"accuracy ([\d.]+)%", result.stdout.splitlines()[-1])[1]) / 100
    run_dir = max(Path(output_dir).glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
    with open(run_dir / "metrics.csv") as f:
        seconds = float(next(csv.DictReader(f))["seconds"])
    return 54_000 / seconds, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="folder holding MNIST/raw/")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--output-dir", default="checkpoints/gpu-check")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: no CUDA device is available; run on a GPU machine or pass --device cpu")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__} on {name}; MNIST, default config, 1 epoch per row")
    print(f"{'switches':<42}{'images/s':>10}{'test acc':>10}")
    for label, overrides in SWITCHES.items():
        if args.skip_compile and "compile" in label:
            continue
        speed, accuracy = timed_epoch(["data.name=mnist", f"data.root={args.root}", "train.epochs=1",
                                       f"run.device={args.device}", f"run.output_dir={args.output_dir}", *overrides])
        print(f"{label:<42}{speed:>10.0f}{100 * accuracy:>9.2f}%", flush=True)
    if args.device.startswith("cuda"):
        for nproc in sorted({1, torch.cuda.device_count()}):
            speed, accuracy = torchrun_row(nproc, args.root, args.output_dir)
            label = f"torchrun, {nproc} GPU{'s' if nproc > 1 else ''} (batch 128 per GPU)"
            print(f"{label:<42}{speed:>10.0f}{100 * accuracy:>9.2f}%", flush=True)


if __name__ == "__main__":
    main()
