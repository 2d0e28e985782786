"""Time to 99.0% MNIST test accuracy: pytorch/examples mnist/main.py's recipe against this project's default.

The canonical recipe, re-implemented as its script does it: the two-conv model (CanonicalNet),
Adadelta lr 1.0, StepLR gamma 0.7 per epoch, batch 64 through a per-sample ToTensor + Normalize
DataLoader (shuffled only on CUDA, as in the example's kwargs), seed 1, test (batch 1000) after
every epoch. This project: config.yaml with data.name=mnist train.epochs=2, the README's MNIST command, and
each --recipes file (e.g. configs/mnist_speedrun.yaml) as it is. Runs alternate (canonical, ours, each recipe,
canonical, ...) so drifts in machine speed hit all alike. Times count training (and, for this project, its
validation), not the test passes; the table gives each one's ratio to the canonical recipe.

    python benchmarks/vs_canonical.py --root ../shared/datasets --recipes configs/mnist_speedrun.yaml
    python benchmarks/vs_canonical.py --root ../shared/datasets --rounds 1 --max-epochs 3 --threads 1
"""
import argparse
import contextlib
import functools
import io
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as train_module  # noqa: E402
from bench_mnist import MEAN, STD, CanonicalNet  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.entry import Parser, run_cli  # noqa: E402
from engine.loaders import make_eval_loader  # noqa: E402
from engine.metrics import evaluate  # noqa: E402

TARGET = 0.99


def canonical_run(root: str, max_epochs: int) -> list[tuple[float, float]]:
    """(cumulative training seconds, test accuracy) after each epoch of the canonical recipe."""
    from torchvision import datasets, transforms
    torch.manual_seed(1)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train_set = datasets.MNIST(root, train=True, download=False, transform=transform)
    test_set = datasets.MNIST(root, train=False, download=False, transform=transform)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=cuda)  # the example's kwargs
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    model = CanonicalNet().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    curve, seconds = [], 0.0
    for _ in range(max_epochs):
        start = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()  # == log_softmax + nll_loss
            optimizer.step()
        seconds += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            correct = sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item() for x, y in test_loader)
        curve.append((seconds, correct / len(test_set)))
        scheduler.step()
        if curve[-1][1] >= TARGET:
            break
    return curve


def our_run(root: str, output_dir: str, recipe: str | None = None) -> list[tuple[float, float]]:
    """(cumulative seconds, test accuracy) after each epoch of train.py on MNIST: the default config for 2 epochs,
    or a recipe file as it is."""
    overrides = [f"data.root={root}", f"run.output_dir={output_dir}"]
    cfg = load_config(recipe, overrides if recipe else ["data.name=mnist", "train.epochs=2", *overrides])
    curve, real_save = [], train_module.save_epoch
    test_loader = None

    def save_and_test(run, improved: bool) -> None:  # test after each epoch, outside the timed epoch
        nonlocal test_loader
        real_save(run, improved)
        test_loader = test_loader or make_eval_loader(cfg, run.info, "test", 128, torch.device("cpu"))
        accuracy = evaluate(run.model, test_loader, 10, torch.device("cpu"))["accuracy"]
        seconds = sum(row["seconds"] for row in run.state.history)
        curve.append((seconds, accuracy))
    train_module.save_epoch = save_and_test
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            train_module.train(cfg)
    finally:
        train_module.save_epoch = real_save
    return curve


def time_to_target(curve: list[tuple[float, float]]) -> float | None:
    return next((seconds for seconds, accuracy in curve if accuracy >= TARGET), None)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="folder holding MNIST/raw/")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each")
    parser.add_argument("--max-epochs", type=int, default=14, help="the canonical run stops here or at 99.0%%")
    parser.add_argument("--output-dir", default="checkpoints/bench")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for all; 0 = PyTorch's default")
    parser.add_argument("--recipes", nargs="*", default=[], metavar="FILE", help="recipe files to time as well")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {"canonical": functools.partial(canonical_run, args.root, args.max_epochs),
            "ours (config.yaml, 2 epochs)": functools.partial(our_run, args.root, args.output_dir)}
    runs.update({recipe: functools.partial(our_run, args.root, args.output_dir, recipe) for recipe in args.recipes})
    times = {name: [] for name in runs}
    for round_ in range(1, args.rounds + 1):
        for name, run in runs.items():
            curve = run()
            times[name].append(time_to_target(curve))
            epochs = "  ".join(f"{i}: {100 * acc:.2f}% at {s:.1f}s" for i, (s, acc) in enumerate(curve, 1))
            print(f"round {round_} {name}: test accuracy by epoch  {epochs}", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| recipe | time to 99.0% test (median s) | runs | canonical / it |")
    print("| --- | ---: | --- | ---: |")
    medians = {}
    for name, values in times.items():
        reached = [v for v in values if v is not None]
        medians[name] = statistics.median(reached) if len(reached) == len(values) else None
        shown = f"{medians[name]:.1f}" if medians[name] else "not reached in every run"
        ratio = f"{medians['canonical'] / medians[name]:.1f}x" if medians["canonical"] and medians[name] else "-"
        print(f"| {name} | {shown} | {', '.join('-' if v is None else f'{v:.1f}' for v in values)} | {ratio} |")


if __name__ == "__main__":
    run_cli(main)
