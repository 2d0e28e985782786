"""Interrupting train.py: kill -9 (in a forked child), stop signals to the process or its whole process group (with
DataLoader workers or without, in the first epoch or later, continued by --resume or, with run.requeue, by the same
command), Slurm's requeue, and Ctrl-C to a real process."""
import csv
import itertools
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from conftest import TINY, call_script, forked, needs_fork, start_script, wait_until
from engine.checkpoint import load_checkpoint
from engine.cli import run_cli
from engine.config import load_config
from train import main as train_main, train

# The tiny model with small batches: an epoch takes long enough (~160 steps) that a signal sent when
# one epoch's files appear lands in the next.
ARGS = [*TINY, "train.epochs=3", "train.batch_size=8", "train.scheduler=cosine", "train.patience=3"]


def start(tmp_path, name):
    """train.py with more epochs than the test lasts, so that it is still running when its signal comes."""
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


# --- the stop rules, on generated cases ------------------------------------------------------------

STOPS = {"SIGTERM": 143, "SIGHUP": 129, "SIGUSR1": 138, "SIGINT": 130}  # scancel/Kubernetes, closed terminal,
# Slurm's early warning (sbatch --signal=USR1@90), Ctrl-C
FACTORS = {
    "signal": list(STOPS),
    "target": ["process", "group"],  # os.kill of the process, or os.killpg of its group as scancel and Kubernetes do
    "workers": [0, 2],  # data.num_workers of a streamed folder: DataLoader worker processes in the group
    "moment": ["first epoch", "later"],  # before any epoch was kept, or after one
    "continue_by": ["--resume", "same command"],  # the same command with run.requeue=true, as a requeued job runs
}


def all_pairs(factors: dict[str, list]) -> list[dict]:
    """A few cases in which every pair of values of any two factors occurs together (greedy all-pairs): 8 of the
    64 combinations here. STOP_CASES=all runs every combination."""
    combos = [dict(zip(factors, values)) for values in itertools.product(*factors.values())]
    if os.environ.get("STOP_CASES") == "all":
        return combos

    def pairs(case):
        return {(a, case[a], b, case[b]) for a, b in itertools.combinations(factors, 2)}
    uncovered, chosen = set().union(*map(pairs, combos)), []
    while uncovered:
        best = max(combos, key=lambda case: len(pairs(case) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of 8x8 grey PNGs, streamed from disk (data.max_memory_mb=0) when workers are on."""
    root = tmp_path_factory.mktemp("stops") / "set"
    for split, count in (("train", 150), ("test", 4)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), (7 * i + 90 * (label == "b")) % 256).save(root / split / label / f"{i}.png")
    return root


def fake_scontrol(folder):
    """An `scontrol` that records its arguments, first on PATH."""
    folder.mkdir()
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "calls.txt"}\n')
    script.chmod(0o755)
    return folder / "calls.txt"


def start_forked(args, cwd, err_path, env):
    """train.py's main in a forked child that leads a process group of its own (as a job under a scheduler) and
    writes its stderr, and its DataLoader workers', to err_path; returns the child's pid."""
    def child():
        os.setpgid(0, 0)
        os.environ.update(env)
        os.chdir(cwd)
        sys.stdout, sys.stderr = open(os.devnull, "w"), open(err_path, "w", buffering=1)  # not pytest's capture
        os.dup2(sys.stderr.fileno(), 2)  # where a worker's own traceback would go
        try:
            run_cli(train_main, args)
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code or 0
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    pid = forked(child)
    try:
        os.setpgid(pid, pid)  # also here: killpg must find the group however the two processes are scheduled
    except (PermissionError, ProcessLookupError):
        pass
    return pid


@needs_fork
@pytest.mark.parametrize("case", all_pairs(FACTORS), ids=lambda case: "-".join(map(str, case.values())))
def test_a_stop_signal_keeps_the_run_says_truly_how_to_continue_and_continues(case, image_folder, tmp_path,
                                                                              one_thread):
    """Any stop signal, sent to the process or its whole group, with DataLoader workers or without, in the first
    epoch or later: the documented status, no traceback (the workers' either), the folder kept with no temporary
    file, a line that says what the folder holds; Slurm's job requeued on SIGUSR1 alone (run.requeue, a fake
    scontrol); then --resume, or the same command with run.requeue, finishes the run."""
    sig = getattr(signal, case["signal"])
    streamed = ["data.max_memory_mb=0", f"data.num_workers={case['workers']}"] if case["workers"] else []
    command = [*TINY, "data.name=folder", f"data.root={image_folder}", "data.channels=1", "data.image_size=8",
               "data.cache_dir=", *streamed, "train.batch_size=2", "train.scheduler=none", "run.name=s",
               "run.requeue=true", one_thread]
    calls = fake_scontrol(tmp_path / "bin")
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{calls.parent}{os.pathsep}{os.environ['PATH']}"}
    run_dir, err_path = tmp_path / "checkpoints" / "s", tmp_path / "err.txt"
    pid = start_forked([*command, "train.epochs=50"], tmp_path, err_path, env)
    try:
        wait_until(lambda: (run_dir / ("config.yaml" if case["moment"] == "first epoch" else "last.pt")).exists())
        (os.kill if case["target"] == "process" else os.killpg)(pid, sig)
        _, status = os.waitpid(pid, 0)
    except BaseException:  # a failed wait must not leave a 50-epoch run behind
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    err = err_path.read_text()
    assert os.waitstatus_to_exitcode(status) == STOPS[case["signal"]], err
    assert "Traceback" not in err and "error:" not in err, err
    assert run_dir.is_dir() and not list(run_dir.glob("*.tmp"))
    saved = load_checkpoint(run_dir / "last.pt")["epoch"] if (run_dir / "last.pt").exists() else 0
    if saved:
        assert f"holds epoch {saved}, and epoch {saved + 1} starts again" in err, err
        assert f"Continue with: python train.py --resume {os.path.join('checkpoints', 's')}" in err, err
    else:
        assert case["moment"] == "first epoch"
        assert "stopped before its first epoch ended: nothing was kept but" in err, err
    requeued = calls.exists() and calls.read_text().split() == ["requeue", "4242"]
    assert requeued == (sig == signal.SIGUSR1) and (not calls.exists() or requeued), case
    assert ("requeued Slurm job 4242" in err) == requeued

    epochs = f"train.epochs={saved + 1}"  # a resumed run may change train.epochs: one more epoch, then done
    again = ["--resume", str(run_dir), epochs] if case["continue_by"] == "--resume" else [*command, epochs]
    code, out, err = call_script(train_main, *again, cwd=tmp_path)
    assert code == 0, err
    assert case["continue_by"] == "--resume" or "run.requeue: checkpoints/s holds this run" in out
    assert [row["epoch"] for row in rows(run_dir)] == [str(epoch) for epoch in range(1, saved + 2)]


def test_the_same_command_with_other_settings_is_refused_not_continued(tmp_path, tiny_cfg):
    """With run.requeue, the folder of run.name is continued only by a command that agrees with its run."""
    train(tiny_cfg("run.name=q", "run.requeue=true"))
    args = [*TINY, f"run.output_dir={tmp_path / 'checkpoints'}", "run.name=q", "run.requeue=true"]
    code, _, err = call_script(train_main, *args, "train.lr=0.5", cwd=tmp_path)
    assert code == 2 and "run.requeue: " in err and "train.lr=0.004, but this command sets 0.5" in err, err
    code, out, _ = call_script(train_main, *args, cwd=tmp_path)  # the same settings: finished, nothing to do
    assert code == 0 and "already finished" in out


def test_a_deferred_stop_waits_for_its_point_but_a_second_ctrl_c_does_not():
    """Inside stops_deferred a stop signal is only recorded (a scheduler's SIGTERM often comes twice, from it and from
    torchrun); the point that checks raises it, and a second Ctrl-C raises at once."""
    from engine import entry

    def main(argv):
        with entry.stops_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert entry.stopped_by() == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # a hang guard: the handler runs before this returns
        assert entry.received == [signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGINT]
        raise entry.Terminated(signal.SIGUSR1)  # what check_stopped raises for another process's signal
    with pytest.raises(SystemExit) as ended:
        run_cli(main, [])
    assert ended.value.code == 138


def test_ctrl_c_to_a_real_process_stops_promptly_and_prints_the_resume_command(tmp_path):
    """The forked cases above, once as a user runs it: `python train.py`, then Ctrl-C."""
    proc, run_dir = start(tmp_path, "int"), tmp_path / "checkpoints" / "int"
    try:
        wait_for_first_epoch(proc, run_dir)
        proc.send_signal(signal.SIGINT)
        sent_in = load_checkpoint(run_dir / "last.pt")["epoch"] + 1  # the epoch the signal reaches, or a later one
        assert proc.wait(timeout=300) == 130  # a hang guard, not a measurement
        message = proc.stderr.read()
        assert f"Continue with: python train.py --resume {run_dir.relative_to(tmp_path)}" in message
        assert "Traceback" not in message
        assert 1 <= load_checkpoint(run_dir / "last.pt")["epoch"] <= sent_in  # promptly: within that epoch
    finally:
        proc.kill()  # a failed check must not leave a 50-epoch run behind
        proc.wait()
