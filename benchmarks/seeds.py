"""Is a gain real or another seed? Train one config under N seeds and print the test accuracy's spread.

Each seed runs as its own `python train.py ... run.seed=S` process, one after the other (the runs
are independent; on a bigger machine they could run side by side). Prints each run's test accuracy,
then mean +- standard deviation (sample, n - 1) and min/max: a difference between two configs smaller
than about two standard deviations is not shown to be one.

    python benchmarks/seeds.py --seeds 3                                  # the default config on the digits
    python benchmarks/seeds.py --seeds 3 --config configs/digits.yaml
    python benchmarks/seeds.py --seeds 5 model.activation=tanh run.threads=1
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.columns import spread  # noqa: E402
from engine.entry import Parser, run_cli  # noqa: E402
TEST_LINE = re.compile(r"^test \(best\.pt, epoch (\d+)\): loss [\d.]+ +accuracy ([\d.]+)%", re.M)


def run_seed(seed: int, args: argparse.Namespace, stamp: str) -> tuple[float, float]:
    """Train one seed in a child process; (test accuracy in %, seconds it took)."""
    command = [sys.executable, str(ROOT / "train.py"), *(["--config", args.config] if args.config else []),
               *args.overrides, f"run.seed={seed}", f"run.output_dir={args.output_dir}",
               f"run.name=seeds-{stamp}-{seed}"]
    print(f"$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    child = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    found = TEST_LINE.search(child.stdout)
    if child.returncode != 0 or found is None:
        output = (child.stdout + child.stderr)[-2000:]
        raise SystemExit(f"error: seed {seed} failed (exit {child.returncode}):\n{output}")
    print(f"  seed {seed}: test accuracy {found[2]}% (best.pt from epoch {found[1]}), {seconds:.0f} s", flush=True)
    return float(found[2]), seconds


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds: run.seed = first, first + 1, ...")
    parser.add_argument("--first-seed", type=int, default=0, help="the first run.seed")
    parser.add_argument("--config", help="a config file or recipe for train.py (default: config.yaml)")
    parser.add_argument("--output-dir", default="checkpoints/seeds", help="run.output_dir for the runs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. train.epochs=5")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.first_seed < 0:
        parser.error("--seeds must be at least 1 and --first-seed at least 0")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = [run_seed(seed, args, stamp) for seed in range(args.first_seed, args.first_seed + args.seeds)]
    accuracies = [accuracy for accuracy, _ in results]
    print(f"\n{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} at the end, config "
          f"{args.config or 'config.yaml'}, overrides: {' '.join(args.overrides) or 'none'}; "
          f"{sum(seconds for _, seconds in results):.0f} s in all")
    print(f"test accuracy: {spread(accuracies, 'seed')}")


if __name__ == "__main__":
    run_cli(main)
