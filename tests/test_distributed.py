"""Multi-process training with torchrun on CPU (gloo)."""
import csv
import json
import subprocess
import sys

import torch

from conftest import ROOT, TINY, call_script
from engine.datasets import DataInfo
from engine.loaders import Batching, Loader
import test as test_script

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


def test_two_processes_train_checkpoint_and_resume(tmp_path):
    result = torchrun(*ARGS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("device: cpu x 2 processes") == 1
    assert result.stdout.count("epoch   2/2") == 1
    runs = list((tmp_path / "checkpoints").iterdir())
    assert [r.name for r in runs] == ["ddp"]
    run_dir = runs[0]
    with open(run_dir / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]

    # The 2-process validation accuracy equals a 1-process evaluation of the saved weights.
    code, _, stderr = call_script(test_script.main, "checkpoints/ddp", "--split", "val", cwd=tmp_path)
    assert code == 0, stderr
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    report = json.loads((run_dir / "val_report.json").read_text())
    assert report["accuracy"] == ckpt["history"][ckpt["epoch"] - 1]["val_acc"]
    assert len(ckpt["rng"]["torch"]) == 2  # one random state per process

    resumed = torchrun("--resume", "checkpoints/ddp", "train.epochs=3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open(run_dir / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]


def test_an_error_in_one_process_ends_the_job(tmp_path):
    result = torchrun(*ARGS, cwd=tmp_path, script="tests/helpers/failing_train.py", timeout=600)  # a hang guard
    assert result.returncode != 0
    assert "error: rank 1 failed on purpose in epoch 2" in result.stderr
