"""Multi-process training on CPU (gloo): torchrun on one node, a multi-node world on one machine, stops."""
import functools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, call_script, forked, needs_fork
from engine import distributed
from engine.datasets import DataInfo
from engine.loaders import Batching, Loader
import test as test_script
from train import main as train_main

sys.path.insert(0, str(ROOT / "benchmarks"))
import multinode  # noqa: E402 (the launcher of benchmarks/multinode.py, whose smallest case runs here)
sys.path.insert(0, str(ROOT / "tools"))
import make_shards  # noqa: E402

ARGS = [*TINY, "train.epochs=2", "train.scheduler=step", "train.accumulate=2", "run.name=ddp"]  # accumulate: no_sync


def torchrun(*args, cwd, script="train.py", timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / script), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_shares_are_disjoint_cover_the_split_and_take_equal_steps():
    for n, batch_size in [(1293, 128), (257, 128), (10, 4), (1295, 2)]:
        info = DataInfo(1, 2, ["a"], mean=[0.0], std=[1.0])
        loader = Loader(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), Batching(batch_size, 0), info,
                        torch.device("cpu"))
        loader.set_epoch(3)
        seen, steps = [], []
        for rank in range(2):
            loader.rank, loader.world = rank, 2  # what torchrun's two processes would have
            labels = [batch_labels for _, batch_labels in loader]
            steps.append(len(labels))
            seen.append(torch.cat(labels).tolist())
            assert len(labels) == len(loader)
            assert max(len(b) for b in labels) <= batch_size + 1 and min(len(b) for b in labels) >= 2
        assert steps[0] == steps[1]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(n))


def test_an_error_in_one_process_ends_the_job(tmp_path):
    result = torchrun(*ARGS, cwd=tmp_path, script="tests/helpers/failing_train.py", timeout=600)  # a hang guard
    assert result.returncode != 0
    assert "error: rank 1 failed on purpose in epoch 2" in result.stderr


@needs_fork
def test_process_group_teardown_ends_gloos_threads(tmp_path):
    """destroy_process_group must free the group, so that no gloo thread outlives it into the interpreter's exit
    (rank 1 was aborted there, SIGABRT, in about one run in ten): DistributedDataParallel imports
    torch.distributed.nn.functional, whose defaults keep the group that exists at its import."""
    if not os.path.isdir("/proc/self/task"):
        return  # the thread names are read from Linux's /proc

    def world_of_one():  # as torchrun would start it, with no agent to wait for
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(multinode.free_port()))
        device = distributed.setup(torch.device("cpu"))
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2).to(device))
        model(torch.ones(2, 2)).sum().backward()
        distributed.barrier()
        del model
        distributed.teardown()
        threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
        (tmp_path / "threads.txt").write_text("\n".join(threads))
    assert wait_forked([forked(world_of_one)]) == [0]
    assert [t for t in (tmp_path / "threads.txt").read_text().splitlines() if "gloo" in t] == []


def forked_world(args: list[str], cwd: Path, processes: int) -> list[int]:
    """One node's world without its agent: train.py's main in `processes` children forked from this test process
    (torch is imported already, so none pays the start-up), each with the variables torchrun gives its processes.
    What they print goes to cwd/one-node.out and .err, as one torchrun's would; returns their pids."""
    port = str(multinode.free_port())

    def rank(r: int):
        os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(processes), LOCAL_WORLD_SIZE=str(processes),
                          GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        code, out, err = call_script(train_main, *args, cwd=cwd)
        for suffix, text in (("out", out), ("err", err)):
            with open(cwd / f"one-node.{suffix}", "a") as f:
                f.write(text)
        os._exit(code)
    return [forked(functools.partial(rank, r)) for r in range(processes)]


def wait_forked(pids: list[int]) -> list[int]:
    """The children's exit statuses (a hang ends the worker through pytest.ini's faulthandler_timeout)."""
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


@needs_fork
def test_two_nodes_on_shards_equal_one_node_and_a_stopped_world_resumes_exactly(tmp_path):
    """Two torchrun agents, each its own process group, form one world through the c10d rendezvous and train on
    WebDataset shards. Stopped as a scheduler stops a job (SIGTERM to both groups) in epoch 2 and resumed by a world
    of two on one node, as a job requeued on one node would be, the run ends with the metrics of one node running
    both processes uninterrupted. Both one-node worlds are forked_world's; benchmarks/multinode.py runs bigger
    worlds through torchrun alone, resumed as agents."""
    pytest.importorskip("webdataset", reason="webdataset is absent; pip install -r requirements-extras.txt")
    code, _, err = call_script(make_shards.main, "--out", "shards", "--shard-size", "150", cwd=tmp_path)
    assert code == 0, err  # the digits: 9 train shards, each process reads shards of its own
    args = [*multinode.TINY, "data.name=shards", f"data.root={tmp_path / 'shards'}", "data.shuffle_buffer=200",
            "data.num_workers=0", "train.epochs=2", "train.accumulate=2", "run.name=r"]  # accumulate: DDP's no_sync
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    reference = forked_world(args, tmp_path / "one", processes=2)
    agents = multinode.start_nodes(args, tmp_path / "two", nodes=2, per_node=1)
    stopper = threading.Thread(target=multinode.stop_when, args=(agents, tmp_path / "two/checkpoints/r/last.pt"))
    stopper.start()  # the one-node run meanwhile: both worlds share the machine's cores
    stopper.join()
    multinode.wait_all(agents)
    err = multinode.outputs(tmp_path / "two")
    assert "stopped in epoch 2; checkpoints/r/last.pt holds epoch 1" in err, err[-3000:]
    assert "Continue with: torchrun ... train.py --resume checkpoints/r" in err
    # torchrun reports the signal with a traceback of its own (SignalException); the training processes show none
    assert err.count("Traceback") == err.count("elastic.multiprocessing.api.SignalException: Process"), err[-3000:]
    assert wait_forked(reference) == [0, 0], multinode.outputs(tmp_path / "one", "one-node")[-3000:]
    one = tmp_path / "one" / "checkpoints" / "r"
    assert (tmp_path / "one" / "one-node.out").read_text().count("device: cpu x 2 processes") == 1  # rank 0 prints
    ckpt = torch.load(one / "best.pt", weights_only=True)
    assert len(ckpt["rng"]["torch"]) == 2  # one random state per process
    code, _, err = call_script(test_script.main, "checkpoints/r", "--split", "val", cwd=tmp_path / "one")
    assert code == 0, err  # the 2-process validation accuracy is a 1-process evaluation's of the saved weights
    assert json.loads((one / "val_report.json").read_text())["accuracy"] == ckpt["history"][ckpt["epoch"] - 1]["val_acc"]

    resumed = forked_world(["--resume", "checkpoints/r"], tmp_path / "two", processes=2)  # as if requeued on one node
    assert wait_forked(resumed) == [0, 0], multinode.outputs(tmp_path / "two", "one-node")[-3000:]
    assert multinode.metrics(tmp_path / "two/checkpoints/r") == multinode.metrics(tmp_path / "one/checkpoints/r")
    assert [row["epoch"] for row in multinode.metrics(tmp_path / "two/checkpoints/r")] == ["1", "2"]


def test_the_slurm_script_starts_one_torchrun_per_node_meeting_on_the_first(tmp_path):
    """tools/slurm.sbatch under a fake srun (which records its command) and scontrol: the rendezvous on the first
    node, the job's ID, every node's agent passing on SIGUSR1, the run's fixed name and run.requeue; torchrun's
    options are ones this PyTorch's torchrun accepts."""
    from torch.distributed.run import get_args_parser

    (tmp_path / "bin").mkdir()
    for name, body in {"srun": f'echo "$@" > {tmp_path / "srun.txt"}',
                       "scontrol": '[ "$1 $2" = "show hostnames" ] && printf "gpu-a\\ngpu-b\\n"'}.items():
        (tmp_path / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / "bin" / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "gpu-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "cnn", "SLURM_GPUS_ON_NODE": "4"}
    script = ROOT / "tools" / "slurm.sbatch"
    result = subprocess.run(["bash", str(script), "data.name=cifar10"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    words = (tmp_path / "srun.txt").read_text().split()
    assert words[:2] == ["--kill-on-bad-exit=1", "torchrun"]
    torchrun = words[2:words.index("train.py")]
    assert torchrun == ["--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-a:29500",
                        "--rdzv-id=77", "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                        "--shutdown-timeout=60"]
    assert words[words.index("train.py") + 1:] == ["run.name=cnn-77", "run.requeue=true", "data.name=cifar10"]
    get_args_parser().parse_args([*torchrun, "train.py"])  # exits 2 on an option this torchrun lacks
    lines = script.read_text().splitlines()
    assert "#SBATCH --signal=USR1@90" in [line.split("  ")[0].strip() for line in lines]
    assert "#SBATCH --requeue" in [line.split("  ")[0].strip() for line in lines]
