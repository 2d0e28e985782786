"""Interrupting the real train.py: kill -9, SIGTERM and Ctrl-C, then resuming."""
import csv
import signal
import subprocess
import sys
import time

import pytest
import torch

from checkpoint import load_checkpoint
from config import load_config
from conftest import ROOT, TINY, run_script
from train import train

# The tiny model with small batches: an epoch takes long enough (~160 steps) that a signal sent when
# one epoch's files appear lands in the next.
ARGS = [*TINY, "train.epochs=4", "train.batch_size=8", "train.scheduler=cosine", "train.patience=3"]


def start(tmp_path, name):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, f"run.name={name}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_first_epoch(proc, run_dir, timeout=120):
    deadline = time.monotonic() + timeout
    while not (run_dir / "last.pt").exists():  # written last of an epoch's files
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.01)


def rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    train(load_config(None, [*ARGS, "run.name=straight", f"run.output_dir={tmp_path / 'checkpoints'}"]))
    run_dir = tmp_path / "checkpoints" / "killed"
    proc = start(tmp_path, "killed")
    wait_for_first_epoch(proc, run_dir)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    done = load_checkpoint(run_dir / "last.pt")["epoch"]
    assert 1 <= done < 4
    load_checkpoint(run_dir / "best.pt")

    resumed = run_script("train.py", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert rows(run_dir) == rows(tmp_path / "checkpoints" / "straight")
    a = load_checkpoint(tmp_path / "checkpoints" / "straight" / "last.pt")["model"]
    b = load_checkpoint(run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_promptly_and_print_the_resume_command(tmp_path, sig, code):
    run_dir = tmp_path / "checkpoints" / "stopped"
    proc = start(tmp_path, "stopped")
    wait_for_first_epoch(proc, run_dir)
    sent = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    assert time.monotonic() - sent < 10
    message = proc.stderr.read()
    assert f"Continue with: python train.py --resume {run_dir.relative_to(tmp_path)}" in message
    assert "Traceback" not in message
    assert load_checkpoint(run_dir / "last.pt")["epoch"] >= 1
