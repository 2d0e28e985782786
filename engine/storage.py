"""Files that must survive a crash, and the folders that hold them.

Every file is written to a temporary file beside it, flushed, then renamed into place, so a crash
leaves either the old file or the new one. A write that fails (disk full, read-only folder, name too
long) becomes one StorageError naming the file. A run folder has one writer at a time (RunLock).
"""
import contextlib
import errno
import os
import shutil
import signal
import socket
from pathlib import Path
from typing import IO, Iterator

import torch

from engine.errors import UserError

LOCK_NAME = ".lock"  # in a run folder: the training process that writes it
TMP_SUFFIX = ".tmp"
# For the crash tests: "<file name>:<point>:<n>" kills this process with SIGKILL the n-th time a write
# of that file reaches that point (written: the temporary file is complete; replaced: renamed into place).
CRASH_ENV = "TEMPLATE_CRASH_AT"
_crash_counts: dict[str, int] = {}


class StorageError(UserError):
    """A file could not be written; files already there are intact."""


class RunFolderInUse(UserError):
    """Another process holds the run folder's lock."""


def crash_point(name: str, point: str) -> None:
    """Die here, as kill -9 would, when CRASH_ENV names this point (tests only)."""
    target = os.environ.get(CRASH_ENV)
    if not target:
        return
    key = f"{name}:{point}"
    _crash_counts[key] = _crash_counts.get(key, 0) + 1
    if target == f"{key}:{_crash_counts[key]}":
        os.kill(os.getpid(), signal.SIGKILL)


def write_failure(path: Path, err: BaseException) -> StorageError:
    """The one message for a file that could not be written: the file as given and the system's reason (torch.save
    reports a full disk as a RuntimeError without one: then the free space on the folder's disk tells)."""
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    else:
        try:
            full = shutil.disk_usage(path.parent).free < FULL_BYTES
        except OSError:
            full = False
        said = str(err).strip().splitlines()[0][:80] if str(err).strip() else type(err).__name__
        reason = os.strerror(errno.ENOSPC) if full else f"the write failed: {said}"
    return StorageError(f"could not write {path} ({reason}); free some space or choose a writable folder; "
                        "files already there are intact")


FULL_BYTES = 1 << 20  # free space below which a write that failed without a reason is taken for a full disk


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Any write failure in the block (an OSError, which a write() raises without a file name, or torch's
    RuntimeError) becomes one StorageError naming path."""
    try:
        yield
    except BaseException as err:
        if is_write_failure(err):
            raise write_failure(Path(path), err) from None
        raise


def is_write_failure(err: BaseException) -> bool:
    """OSError, or the RuntimeError torch.save raises when its writes fall short (e.g. disk full)."""
    return isinstance(err, OSError) or (isinstance(err, RuntimeError) and (
        "inline_container" in str(err) or "PytorchStreamWriter" in str(err)))


@contextlib.contextmanager
def replacing(path: str | Path, binary: bool = True) -> Iterator[IO]:
    """Open a temporary file beside path; when the block succeeds it replaces path, else it is removed."""
    path = Path(path)
    # One name per process and machine: torchrun ranks on several machines may share a folder.
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        crash_point(path.name, "written")
        os.replace(tmp, path)
        crash_point(path.name, "replaced")
    except BaseException as err:  # includes Ctrl-C: never leave a half-written temporary file behind
        failure = write_failure(path, err) if is_write_failure(err) else None  # the disk as it was full
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from None
        raise


def atomic_save(state: dict, path: Path) -> None:
    """torch.save through a temporary file: a crash or a full disk leaves the old file intact."""
    with replacing(path) as f:
        torch.save(state, f)


def write_text(path: str | Path, text: str) -> None:
    """Replace a text file (UTF-8) atomically."""
    with replacing(path, binary=False) as f:
        f.write(text)


def make_folder(path: str | Path, key: str) -> Path:
    """Create a folder (and its parents) for outputs; key names the setting that chose it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create folder {path} ({err.strerror}); set {key} to a writable folder") from None
    return path


def remove_stale_temporaries(folder: Path, only_dead: bool = False) -> list[str]:
    """Delete the temporary files killed writers left in folder (<name>.<host>.<pid>.tmp); with only_dead,
    only this machine's whose process no longer runs (a shared folder such as the data cache). Returns
    their names."""
    removed = []
    for tmp in folder.glob(f"*{TMP_SUFFIX}"):
        pid = tmp.name.removesuffix(TMP_SUFFIX).rpartition(".")[2]
        ours = tmp.name.endswith(f".{socket.gethostname()}.{pid}{TMP_SUFFIX}")
        if only_dead and (not pid.isdigit() or not ours or process_alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp.name)
    return removed


def process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists but belongs to another user, or the number is no pid: leave the file
    return True


class RunLock:
    """One writer per run folder: an exclusive lock on <run>/.lock (or another name), which holds the owner's pid.

    The operating system drops the lock when its process dies (even by kill -9), so a lock file left
    by a crash is stale and taken over. Without fcntl (Windows) the lock is not enforced.
    """

    def __init__(self, run_dir: Path, name: str = LOCK_NAME):
        self.path, self.fd = run_dir / name, None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunFolderInUse(f"run folder {self.path.parent} is in use by {owner}; wait for it to "
                                     "finish, stop it, or pick another run.name") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # the previous owner removed it between our open and lock
                same = False
            if same:
                break
            os.close(fd)
        try:
            with writing(self.path):
                os.ftruncate(fd, 0)
                os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        except StorageError:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
