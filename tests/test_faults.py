"""Faults: full and read-only storage for every writer, kill -9 at every write, two writers on one run
folder, Ctrl-C swallowed by a library, and unexpected exceptions. Runs in-process; a forked child
stands in for a second process where the process boundary is the point (kill -9, the lock)."""
import builtins
import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY, call_script, copy_run, forked, needs_fork, snapshot, wait_until
from engine import imagefiles, runs, storage
from engine.checkpoint import load_checkpoint
from engine.entry import LINE_MAX
from engine.errors import UserError
import test as test_script
from tools import compare
from tools import summary
import train


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


class FullFile:
    """A file whose writes fail as on a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def failing_storage(monkeypatch):
    """failing_storage(folder, kind): below folder, writes fail as on a full disk (kind 'full': files open,
    writes fail) or a read-only file system (kind 'readonly': creating files and folders fails)."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def start(folder: Path, kind: str) -> None:
        def inside(path) -> bool:
            return isinstance(path, (str, Path)) and Path(os.path.abspath(path)).is_relative_to(folder.resolve())

        def refuse(path):
            code = errno.EROFS if kind == "readonly" else errno.ENOSPC
            raise OSError(code, os.strerror(code), str(path))

        def fake_open(file, mode="r", *args, **kwargs):
            writing = any(c in mode for c in "wax+")
            if writing and inside(file):
                if kind == "readonly":
                    refuse(file)
                return FullFile(real_open(file, mode, *args, **kwargs))
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and kind == "readonly" and inside(path):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if kind == "readonly" and inside(path):
                refuse(path)
            return real_mkdir(path, *args, **kwargs)
        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return start


def image(path: Path, value: int = 128) -> Path:
    Image.new("L", (8, 8), value).save(path)
    return path


WRITERS = {  # (script, arguments) for every script that writes, with FAULTY the folder that fails
    "train": (train.main, [*TINY, "train.epochs=1", "run.output_dir=FAULTY", "run.name=new"]),
    "test report": (test_script.main, ["FAULTY/r"]),
    "test predictions": (test_script.main, ["checkpoints/r", "--predict", "digit.png", "--output", "FAULTY/p.csv"]),
    "test feature maps": (test_script.main, ["FAULTY/r", "--feature-maps", "digit.png"]),
    "compare": (compare.main, ["checkpoints/r", "--output", "FAULTY/comparison.png"]),
}


@pytest.mark.parametrize("kind", ["full", "readonly"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_on_full_or_read_only_storage_gives_one_line_and_keeps_files(
        tiny_run, tmp_path, failing_storage, writer, kind):
    copy_run(tiny_run, tmp_path)
    faulty = tmp_path / "faulty"
    shutil.copytree(tiny_run.run_dir, faulty / "r")
    image(tmp_path / "digit.png")
    before = snapshot(tmp_path)
    main, args = WRITERS[writer]
    failing_storage(faulty, kind)
    code, _, stderr = call_script(main, *[a.replace("FAULTY", str(faulty)) for a in args], cwd=tmp_path)
    assert code == 2
    line = one_error_line(stderr)
    reason = "Read-only file system" if kind == "readonly" else "No space left on device"
    assert str(faulty) in line and reason in line
    after = snapshot(tmp_path)
    assert {p: h for p, h in after.items() if p in before} == before
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("kind", ["full", "readonly"])
def test_a_cache_that_cannot_be_written_is_skipped_with_a_note(tiny_cfg, tmp_path, failing_storage, kind):
    root = tmp_path / "images"
    for split in ("train", "test"):
        for label, value in (("dark", 20), ("light", 230)):
            (root / split / label).mkdir(parents=True)
            for i in range(6):
                image(root / split / label / f"{i}.png", value + i)
    failing_storage(tmp_path / "cache", kind)
    overrides = [*TINY, "train.epochs=1", "data.name=folder", f"data.root={root}", "data.channels=1",
                 "data.image_size=8", "data.val_fraction=0.2", f"data.cache_dir={tmp_path / 'cache'}",
                 f"run.output_dir={tmp_path / 'checkpoints'}"]
    code, out, err = call_script(train.main, *overrides, cwd=tmp_path)
    assert code == 0, err
    assert "(not cached: " in out


def test_a_file_name_that_is_too_long_is_one_line(tiny_run, tmp_path):
    copy_run(tiny_run, tmp_path)
    image(tmp_path / "digit.png")
    code, _, stderr = call_script(test_script.main, "checkpoints/r", "--predict", "digit.png", "--output",
                                  "x" * 300 + ".csv", cwd=tmp_path)
    assert code == 2
    assert "(File name too long)" in one_error_line(stderr)


NO_SPACE = os.strerror(errno.ENOSPC)


def no_space(named: bool):
    """A write that fails as on a full disk: an OSError with the file's name, or without (as write() raises it)."""
    def write(*args, **kwargs):
        raise OSError(errno.ENOSPC, NO_SPACE, *(["elsewhere.tmp"] if named else []))
    return write


@pytest.mark.parametrize("named", [False, True], ids=["unnamed", "named"])
@pytest.mark.parametrize("point", ["checkpoint", "export onnx", "export pt2"])
def test_a_full_disk_at_each_write_point_names_the_file_and_the_cause(tiny_run, tmp_path, monkeypatch, point, named):
    if point == "checkpoint":  # under a long output folder: the line abridges the path, never the cause
        output = tmp_path / ("d" * 120) / ("e" * 120)
        monkeypatch.setattr(torch, "save", no_space(named))
        main, written = train.main, output / "r" / "best.pt"
        args = [*TINY, "train.epochs=1", "data.cache_dir=", f"run.output_dir={output}", "run.name=r"]
    else:
        for extra in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(extra)
        from tools import export
        copy_run(tiny_run, tmp_path)
        if point == "export onnx":
            monkeypatch.setattr(torch.onnx.ONNXProgram, "save", no_space(named))
        else:
            monkeypatch.setattr(torch.export, "save", no_space(named))
        main, written = export.main, Path("checkpoints", "r", "model.onnx" if point == "export onnx" else "model.pt2")
        args = ["checkpoints/r", "--no-verify"]
    code, _, stderr = call_script(main, *args, cwd=tmp_path)
    assert code == 2
    line = one_error_line(stderr)
    assert len(line) <= LINE_MAX and f"{str(written)[-40:]} ({NO_SPACE}); free some space" in line, line
    assert line.startswith(f"error: could not write {str(written)[:20]}")


@pytest.mark.parametrize("reader", ["image", "checkpoint"])
def test_a_file_the_system_will_not_read_is_named_with_its_reason(tiny_run, tmp_path, monkeypatch, reader):
    copy_run(tiny_run, tmp_path)
    image(tmp_path / "digit.png")
    refused = OSError(errno.EIO, os.strerror(errno.EIO), "where the system failed")
    if reader == "image":  # as root in CI a chmod 000 file stays readable: the refusal is injected
        monkeypatch.setattr(imagefiles.Image, "open", lambda *args, **kwargs: (_ for _ in ()).throw(refused))
        expected, status = "digit.png cannot be read (Input/output error)", 1
    else:
        monkeypatch.setattr(torch, "load", lambda *args, **kwargs: (_ for _ in ()).throw(refused))
        expected, status = "checkpoint checkpoints/r/best.pt cannot be read (Input/output error)", 2
    code, _, stderr = call_script(test_script.main, "checkpoints/r", "--predict", "digit.png", cwd=tmp_path)
    assert code == status and expected in one_error_line(stderr)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs at path: a real file system that fills up; skips where mount is not allowed."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (the shim above covers the same writers)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs is Linux's")
def test_real_full_disk_makes_torch_save_fail_and_the_old_file_stays(tmp_path):
    with tmpfs(tmp_path / "small", "256k") as small:
        storage.atomic_save({"weights": torch.ones(10)}, small / "last.pt")
        # torch.save reports this disk-full as a RuntimeError, not an OSError
        with pytest.raises(storage.StorageError, match="could not write .*last.pt .*intact"):
            storage.atomic_save({"weights": torch.ones(200_000)}, small / "last.pt")
        assert torch.equal(torch.load(small / "last.pt", weights_only=True)["weights"], torch.ones(10))
        assert [p.name for p in small.iterdir()] == ["last.pt"]


# --- rule 2: names that become paths -------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "a\\b", "x" * 101, '"a\\tb"'])
def test_run_names_that_are_not_plain_names_are_refused(tmp_path, name):
    (tmp_path / "config.yaml").write_text("mine")
    code, _, stderr = call_script(train.main, f"run.name={name}", cwd=tmp_path)
    assert code == 2
    assert "run.name: " in one_error_line(stderr)
    assert (tmp_path / "config.yaml").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_a_run_folder_that_links_outside_is_refused(tiny_cfg, tmp_path):
    cfg = tiny_cfg("run.name=linked")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "checkpoints" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="outside run.output_dir"):
        runs.make_run_dir(cfg)


def test_a_saved_config_repeats_its_run_in_a_new_folder(tiny_run, tmp_path):
    copy_run(tiny_run, tmp_path)
    before = snapshot(tmp_path)
    code, out, err = call_script(train.main, "--config", "checkpoints/r/config.yaml", "train.epochs=1",
                                 cwd=tmp_path)
    assert code == 0, err
    assert "this one goes to checkpoints/r-2" in out
    assert load_checkpoint(tmp_path / "checkpoints" / "r-2" / "best.pt")["config"]["run"]["name"] == "r-2"
    assert snapshot(tmp_path).items() >= before.items()


def test_summary_takes_a_run_folder(tiny_run):
    code, out, err = call_script(summary.main, "--checkpoint", str(tiny_run.run_dir), cwd=tiny_run.root)
    assert code == 0, err
    assert "model: cnn" in out and "total" in out


# --- rule 7: resuming a finished run -------------------------------------------------------------

def test_resume_of_a_finished_run_says_so_and_touches_nothing(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    before = snapshot(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    code, out, err = call_script(train.main, "--resume", str(run_dir), cwd=tmp_path)
    assert code == 0, err
    assert "already finished: all 3 epochs are done" in out
    assert snapshot(tmp_path) == before
    assert {p: p.stat().st_mtime_ns for p in run_dir.iterdir()} == mtimes


# --- rule 3: one writer per run folder -----------------------------------------------------------

@needs_fork
def test_a_second_training_of_the_same_run_is_refused_naming_the_first(tmp_path, one_thread):
    args = [*TINY, "train.epochs=50", "train.batch_size=8", "run.name=shared", "train.scheduler=none",
            f"run.output_dir={tmp_path / 'checkpoints'}", one_thread]
    run_dir = tmp_path / "checkpoints" / "shared"
    pid = forked(lambda: call_script(train.main, *args, cwd=tmp_path))
    try:
        wait_until(lambda: (run_dir / "config.yaml").exists())
        code, _, stderr = call_script(train.main, *args, cwd=tmp_path)
        assert code == 2
        assert f"run folder {run_dir} is in use by process {pid} on " in one_error_line(stderr)
    finally:
        os.kill(pid, signal.SIGKILL)  # a crash: the lock file stays, but its lock is gone
        os.waitpid(pid, 0)
    assert (run_dir / storage.LOCK_NAME).exists()
    with storage.RunLock(run_dir):  # stale: taken over
        assert str(os.getpid()) in (run_dir / storage.LOCK_NAME).read_text()
    assert not (run_dir / storage.LOCK_NAME).exists()


# --- rule 4: kill -9 at every write, then --resume -----------------------------------------------

FILES = ["config.yaml", "metrics.csv", "curves.png", "best.pt", "last.pt"]
CRASH_POINTS = [f"{name}:{point}:1" for name in FILES for point in ("written", "replaced")] + [
    "last.pt:replaced:2", "random:0"]


@needs_fork
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_at_every_write_then_resume_ends_with_every_file(tmp_path, one_thread, point):
    args = [*TINY, "run.name=k", "train.scheduler=none", one_thread]
    run_dir = tmp_path / "checkpoints" / "k"

    def child():
        if not point.startswith("random"):
            os.environ[storage.CRASH_ENV] = point
        call_script(train.main, *args, cwd=tmp_path)
    pid = forked(child)
    if point.startswith("random"):  # a kill at a time drawn from the run's length, not at a write
        time.sleep(random.Random(point).uniform(0.2, 2.0))
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if not point.startswith("random"):
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{point} was never reached"

    left = sorted(path.name.split(".")[0] for path in run_dir.glob("*.tmp"))  # kill -9 between write and rename
    assert point.startswith("random") or left == ([point.split(".")[0]] if point.endswith(":written:1") else []), left
    if not run_dir.exists():  # a random kill while the config was still being read: no folder, nothing written
        code, out, err = call_script(train.main, *args, cwd=tmp_path)
    else:
        code, out, err = call_script(train.main, "--resume", str(run_dir), cwd=tmp_path)
    if left and (run_dir / "config.yaml").exists():  # the next --resume removes it, and says so
        assert f"note: removed {left[0]}." in out, out
    if not (run_dir / "config.yaml").exists():  # killed before the run's first file: nothing to resume ...
        assert code == 2 and "nothing to resume; start the run again with the same command" in err
        code, out, err = call_script(train.main, *args, cwd=tmp_path)  # ... and the same command starts over
    assert code == 0, err
    last, best = load_checkpoint(run_dir / "last.pt"), load_checkpoint(run_dir / "best.pt")
    assert last["epoch"] == 2
    assert best["epoch"] == max(last["history"], key=lambda row: row["val_acc"])["epoch"]
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3  # header and two epochs
    assert (run_dir / "curves.png").stat().st_size > 0 and (run_dir / "config.yaml").stat().st_size > 0
    assert not list(run_dir.glob("*.tmp"))
    storage.RunLock(run_dir).acquire().release()  # a lock file a killed run left is stale, not held


# --- Ctrl-C that a library swallows; exceptions nobody expected ----------------------------------

@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing is the point
def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_training(tiny_cfg, tmp_path, monkeypatch):
    """Python drops an exception raised inside a finalizer or weakref callback (matplotlib runs many while
    collecting garbage), so a Ctrl-C landing there was lost and training ran on; reproduced by sending
    SIGINT from inside a weakref callback while curves.png is drawn."""
    plot_curves = runs.plot_curves

    class Garbage:
        pass

    def swallowing_plot(history, path):
        garbage = Garbage()
        weakref.finalize(garbage, lambda: (os.kill(os.getpid(), signal.SIGINT), [0] * 1000))
        del garbage  # the callback runs here; its KeyboardInterrupt is printed and dropped
        plot_curves(history, path)
    monkeypatch.setattr(runs, "plot_curves", swallowing_plot)
    monkeypatch.setattr(runs, "CURVES_SECONDS", 0)  # drawn after every epoch, the first too
    args = [*TINY, "train.epochs=3", "run.name=c", f"run.output_dir={tmp_path / 'checkpoints'}"]
    code, _, err = call_script(train.main, *args, cwd=tmp_path)
    assert code == 130, err
    assert "Continue with: python train.py --resume" in err
    assert load_checkpoint(tmp_path / "checkpoints" / "c" / "last.pt")["epoch"] == 1


def test_an_unexpected_exception_is_one_line_and_a_traceback_file(tiny_run, tmp_path, monkeypatch):
    def broken(*args):
        return {}["no such key"]
    monkeypatch.setattr(summary, "summary", broken)
    code, _, stderr = call_script(summary.main, "--checkpoint", str(tiny_run.run_dir), cwd=tmp_path)
    assert code == 3
    line = one_error_line(stderr)
    assert line.startswith("error: unexpected KeyError at test_faults.py:")
    path = Path(line.split("the full traceback is in ")[1].split(";")[0])
    assert "Traceback (most recent call last)" in path.read_text() and "broken" in path.read_text()
    path.unlink()
