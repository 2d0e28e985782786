"""A busy machine: how much slower the quickstart, a default MNIST epoch and (optionally) the README's test command
get when other CPU-bound processes run, for each thread setting. Each case runs idle, then with --competitors busy
loops started here (one pure-Python process each, as a CPU-bound job of someone else's), back to back; the table
gives the seconds and the busy/idle ratio.

    python benchmarks/busy.py                                         # the quickstart: run.threads auto vs 1
    python benchmarks/busy.py --root ../shared/datasets --wait active passive   # + an MNIST epoch; OpenMP's waiting
    python benchmarks/busy.py --tests                                 # + python -m pytest -q (minutes)

The figures in docs/speed.md come from it. The machine must be otherwise idle for the idle column to mean much.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.entry import Parser, run_cli  # noqa: E402
from engine.errors import UserError  # noqa: E402
BUSY_LOOP = "while True: pass"


def timed(command: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{' '.join(command[1:3])} failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
    return time.perf_counter() - start


def first_epoch_seconds(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as f:
        return float(next(csv.DictReader(f))["seconds"])


def cases(args: argparse.Namespace, threads: str, folder: Path) -> dict:
    """name -> a function that runs the case once and returns its seconds."""
    train = [sys.executable, str(ROOT / "train.py"), f"run.threads={threads}", f"run.output_dir={folder}"]
    found = {"quickstart (wall)": lambda env: timed(train, env, ROOT)}
    if args.root:
        def mnist(env: dict) -> float:
            name = f"mnist-{time.monotonic_ns()}"
            timed([*train, "data.name=mnist", f"data.root={args.root}", "train.epochs=1", f"run.name={name}"], env,
                  ROOT)
            return first_epoch_seconds(folder / name)
        found["MNIST epoch 1"] = mnist
    if args.tests:
        found["python -m pytest -q"] = lambda env: timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                                                          env, ROOT)
    return found


def measure(run, env: dict, competitors: int) -> float:
    others = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(competitors)]
    try:
        return run(env)
    finally:
        for process in others:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competitors", type=int, default=2, help="busy processes besides ours (default 2)")
    parser.add_argument("--threads", nargs="+", default=["auto", "1"], help="run.threads values (default auto 1)")
    parser.add_argument("--wait", nargs="+", default=["passive"], choices=["passive", "active"],
                        help="OMP_WAIT_POLICY values (default passive, the project's)")
    parser.add_argument("--root", help="the MNIST root (e.g. ../shared/datasets): adds a default MNIST epoch")
    parser.add_argument("--tests", action="store_true", help="adds the README's test command (minutes)")
    parser.add_argument("--rounds", type=int, default=1, help="idle/busy pairs per case; the median is shown")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start; {args.competitors} competitors when busy")
    print(f"{'case':28} {'threads':>7} {'wait':>8} {'idle s':>8} {'busy s':>8} {'busy/idle':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for wait in args.wait:
            env = {**os.environ, "OMP_WAIT_POLICY": wait.upper()}
            for threads in args.threads:
                for name, run in cases(args, threads, Path(folder)).items():
                    pairs = [(measure(run, env, 0), measure(run, env, args.competitors)) for _ in range(args.rounds)]
                    idle, busy = (sorted(times)[len(times) // 2] for times in zip(*pairs))
                    print(f"{name:28} {threads:>7} {wait:>8} {idle:8.1f} {busy:8.1f} {busy / idle:8.1f}x", flush=True)


if __name__ == "__main__":
    run_cli(main)
