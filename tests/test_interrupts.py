"""Interrupting train.py: kill -9 (in a forked child), SIGTERM and Ctrl-C (in a real process), then resuming."""
import csv
import os
import signal
import subprocess
import time

import torch

from conftest import TINY, call_script, forked, needs_fork, start_script, wait_until
from engine.checkpoint import load_checkpoint
from engine.config import load_config
from train import main as train_main, train

# The tiny model with small batches: an epoch takes long enough (~160 steps) that a signal sent when
# one epoch's files appear lands in the next.
ARGS = [*TINY, "train.epochs=3", "train.batch_size=8", "train.scheduler=cosine", "train.patience=3"]


def start(tmp_path, name):
    """train.py with more epochs than the test lasts, so that it is still running when its signal comes;
    one thread each, as two of them run at once."""
    return start_script("train.py", *ARGS, "train.epochs=50", "run.threads=1", f"run.name={name}",
                        cwd=tmp_path, stdout=subprocess.DEVNULL)


def wait_for_first_epoch(proc, run_dir, timeout=600):
    deadline = time.monotonic() + timeout
    while not (run_dir / "last.pt").exists():  # written last of an epoch's files
        assert proc.poll() is None, proc.stderr.read()
        if time.monotonic() > deadline:  # a hang guard, not a measurement
            raise TimeoutError(f"no epoch finished within {timeout} s")
        time.sleep(0.01)


def rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@needs_fork
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, one_thread):
    args = [*ARGS, one_thread, f"run.output_dir={tmp_path / 'checkpoints'}"]
    train(load_config(None, [*args, "run.name=straight"]))
    run_dir = tmp_path / "checkpoints" / "killed"
    pid = forked(lambda: call_script(train_main, *args, "run.name=killed", cwd=tmp_path))
    try:
        wait_until(lambda: (run_dir / "last.pt").exists())  # written last of an epoch's files
    finally:
        os.kill(pid, signal.SIGKILL)  # no handler runs
        os.waitpid(pid, 0)
    done = load_checkpoint(run_dir / "last.pt")["epoch"]
    assert 1 <= done < 3
    load_checkpoint(run_dir / "best.pt")

    code, _, err = call_script(train_main, "--resume", str(run_dir), cwd=tmp_path)
    assert code == 0, err
    assert rows(run_dir) == rows(tmp_path / "checkpoints" / "straight")
    a = load_checkpoint(tmp_path / "checkpoints" / "straight" / "last.pt")["model"]
    b = load_checkpoint(run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_signals_stop_promptly_and_print_the_resume_command(tmp_path):
    signals = {"term": (signal.SIGTERM, 143), "int": (signal.SIGINT, 130)}  # a scheduler's stop; Ctrl-C
    processes = {name: start(tmp_path, name) for name in signals}  # started together: the start-ups overlap
    try:
        for name, (sig, code) in signals.items():
            proc, run_dir = processes[name], tmp_path / "checkpoints" / name
            wait_for_first_epoch(proc, run_dir)
            proc.send_signal(sig)
            sent_in = load_checkpoint(run_dir / "last.pt")["epoch"] + 1  # the epoch the signal reaches, or a later one
            assert proc.wait(timeout=300) == code, name  # a hang guard, not a measurement
            message = proc.stderr.read()
            assert f"Continue with: python train.py --resume {run_dir.relative_to(tmp_path)}" in message, name
            assert "Traceback" not in message, name
            assert 1 <= load_checkpoint(run_dir / "last.pt")["epoch"] <= sent_in, name  # promptly: within that epoch
    finally:
        for proc in processes.values():  # a failed check must not leave a 50-epoch run behind
            proc.kill()
            proc.wait()
