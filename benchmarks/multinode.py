"""A multi-node torchrun world on one machine: N torchrun agents, each its own process group as on its own node,
meet through the c10d rendezvous on 127.0.0.1 and train the tiny digits config; its metrics.csv must equal a
one-node run with as many processes. Then the same world is stopped (SIGTERM to every agent's process group, as
Slurm or Kubernetes stop a job) in the middle of an epoch, and `--resume`, again as N agents, must end with the
metrics of the uninterrupted run. tests/test_distributed.py runs the smallest case (2 nodes x 1 process).

    python benchmarks/multinode.py                                # 2 nodes x 2 processes, 3 epochs, stopped in epoch 2
    python benchmarks/multinode.py --nodes 3 --per-node 1 --epochs 4
    python benchmarks/multinode.py --signal SIGUSR1               # Slurm's early warning, as tools/slurm.sbatch passes it
"""
import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.entry import Parser, run_cli  # noqa: E402

# The tiny digits model of the tests, one thread per process (several share the machine's cores).
TINY = ["run.device=cpu", "run.threads=1", "model.conv_blocks.0.out_channels=8", "model.conv_blocks.1.out_channels=8",
        "model.conv_blocks.2.out_channels=8", "model.hidden=[16]", "train.batch_size=8", "train.scheduler=step"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# As tools/slurm.sbatch starts torchrun: it passes SIGUSR1 on to its processes (by default it dies of it).
SIGNALS_TO_HANDLE = "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def start_nodes(args: list[str], cwd: Path, nodes: int, per_node: int) -> list[subprocess.Popen]:
    """One torchrun agent per node, each in a session (process group) of its own, meeting on 127.0.0.1 at a free
    port; the c10d rendezvous gives each agent its node rank and each process its rank. Their output goes to
    cwd/node-<i>.out and .err."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    agents = []
    for node in range(nodes):
        command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={per_node}",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=bench-{port}",
                   SIGNALS_TO_HANDLE, str(ROOT / "train.py"), *args]
        with open(cwd / f"node-{node}.out", "w") as out, open(cwd / f"node-{node}.err", "w") as err:
            agents.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True))
    return agents


def start_one_node(args: list[str], cwd: Path, processes: int) -> subprocess.Popen:
    """The same world on one node: torchrun --standalone with all the processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               str(ROOT / "train.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(cwd / "one-node.out", "w") as out, open(cwd / "one-node.err", "w") as err:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)


def wait_all(agents: list[subprocess.Popen], timeout: float = 900) -> list[int]:
    """Every agent's exit status; a hang guard kills them all."""
    deadline = time.monotonic() + timeout
    try:
        return [agent.wait(timeout=max(1.0, deadline - time.monotonic())) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()


def stop_when(agents: list[subprocess.Popen], path: Path, sig: int = signal.SIGTERM, timeout: float = 900) -> None:
    """Send sig to every agent's process group as soon as path exists (as a scheduler stops a job)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if any(agent.poll() is not None for agent in agents) or time.monotonic() > deadline:
            raise RuntimeError(f"the run ended or hung before {path} appeared")
        time.sleep(0.01)
    for agent in agents:
        os.killpg(agent.pid, sig)


def metrics(run_dir: Path) -> list[dict]:
    """metrics.csv's rows without the seconds, which differ from run to run."""
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def outputs(cwd: Path, prefix: str = "node-") -> str:
    return "".join(p.read_text() for p in sorted(cwd.glob(f"{prefix}*.err")))


def compare(args: argparse.Namespace) -> None:
    """Uninterrupted N-node run vs one node, then a stopped N-node run resumed by N agents."""
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = [*TINY, f"train.epochs={args.epochs}", *args.overrides]
    world = args.nodes * args.per_node
    steps = []
    for name, start in [("nodes", lambda cwd: start_nodes([*common, "run.name=r"], cwd, args.nodes, args.per_node)),
                        ("one-node", lambda cwd: [start_one_node([*common, "run.name=r"], cwd, world)])]:
        cwd = work / name
        cwd.mkdir(exist_ok=True)
        began = time.perf_counter()
        codes = wait_all(start(cwd))
        steps.append((name, time.perf_counter() - began))
        if any(codes):
            raise SystemExit(f"error: the {name} run failed ({codes}); see {cwd}")
    if metrics(work / "nodes" / "checkpoints" / "r") != metrics(work / "one-node" / "checkpoints" / "r"):
        raise SystemExit(f"error: {args.nodes} nodes x {args.per_node} and 1 node x {world} differ; see {work}")
    cwd = work / "stopped"
    cwd.mkdir(exist_ok=True)
    began = time.perf_counter()
    agents = start_nodes([*common, "run.name=r"], cwd, args.nodes, args.per_node)
    stop_when(agents, cwd / "checkpoints" / "r" / "last.pt", getattr(signal, args.signal))
    wait_all(agents)  # torchrun exits 1 when it is signalled, its processes 128 + the signal's number
    err = outputs(cwd)
    told = "Continue with: torchrun ... train.py --resume checkpoints/r" in err
    if not told or err.count("Traceback") != err.count("elastic.multiprocessing.api.SignalException: Process"):
        raise SystemExit(f"error: the stopped run did not say how to continue, or showed a traceback; see {cwd}")
    codes = wait_all(start_nodes(["--resume", "checkpoints/r"], cwd, args.nodes, args.per_node))
    steps.append(("stopped and resumed", time.perf_counter() - began))
    if any(codes):
        raise SystemExit(f"error: the resumed run failed ({codes}); see {cwd}")
    gap = largest_difference(metrics(cwd / "checkpoints" / "r"), metrics(work / "nodes" / "checkpoints" / "r"))
    for name, seconds in steps:
        print(f"{name}: {seconds:.1f} s")
    print(f"{args.nodes} nodes x {args.per_node} processes: metrics equal 1 node x {world}; the stopped, resumed run "
          f"differs from the uninterrupted one by {gap:.1e} at most (relative, {args.epochs} epochs)")
    if gap > (0 if world == 2 else RESUME_ROUNDING):
        raise SystemExit(f"error: the resumed run's metrics differ from the uninterrupted run's; see {cwd}")


# With two processes a resumed run equals an uninterrupted one bitwise. With more, gloo adds the processes'
# gradients in an order that depends on where each value sits in DDP's bucket, and DDP lays its buckets out anew
# for the first step after a resume (then as the uninterrupted run does): the sums round differently, by about 1e-8.
RESUME_ROUNDING = 1e-6


def largest_difference(rows: list[dict], reference: list[dict]) -> float:
    """The largest relative difference between two runs' metrics (inf if their epochs or columns differ)."""
    if [row.keys() for row in rows] != [row.keys() for row in reference]:
        return float("inf")
    return max(abs(float(a[key]) - float(b[key])) / max(abs(float(b[key])), 1e-12)
               for a, b in zip(rows, reference) for key in a if a[key] or b[key])


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--per-node", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--signal", choices=["SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP"], default="SIGTERM",
                        help="what stops the world (default: SIGTERM, as scancel and Kubernetes)")
    parser.add_argument("--work", default="checkpoints/multinode", help="folder for the runs (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="more key=value overrides for every run")
    compare(parser.parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
