"""Shared test helpers: tiny configs built from config.yaml plus overrides, a tiny trained run shared
by the tests that only read it, and script runners (in-process and as real processes)."""
import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# One PyTorch thread in this process and in every process a test starts (they inherit the environment):
# on a 2-core machine that runs several at once this is faster, and no test depends on the core count.
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
# The servers the tests start (demo, mlflow) are on this machine: never through a proxy a CI machine may set.
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
import torch  # noqa: E402

torch.set_num_threads(1)
from engine.cli import run_cli  # noqa: E402
from engine.config import Config, load_config  # noqa: E402
import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
# Small and quick on the embedded digits: narrow conv blocks, two epochs, on the CPU (where runs are
# bitwise repeatable and test.py's numbers equal training's; the gpu-marked tests cover CUDA).
TINY = ["train.epochs=2", "run.device=cpu", "model.conv_blocks.0.out_channels=8", "model.conv_blocks.1.out_channels=8",
        "model.conv_blocks.2.out_channels=8", "model.hidden=[16]", "model.widths=[8, 8, 8]"]


@pytest.fixture
def tiny_cfg(tmp_path):
    """Build a tiny config writing its runs under tmp_path: tiny_cfg('train.lr=0.1', ...)."""
    def make(*overrides: str) -> Config:
        return load_config(None, [*TINY, f"run.output_dir={tmp_path / 'checkpoints'}",
                                  f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    return make


@dataclass
class TinyRun:
    root: Path  # the folder train.py ran in
    run_dir: Path  # root/checkpoints/r
    stdout: str  # what train.py printed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """A finished 3-epoch tiny run, trained once per session through train.py's main. Read it, or
    copy it with copy_run before changing anything in it."""
    root = tmp_path_factory.mktemp("tiny_run")
    stdout = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(stdout):
        run_cli(train.main, [*TINY, "train.epochs=3", "run.name=r"])
    return TinyRun(root, root / "checkpoints" / "r", stdout.getvalue())


def copy_run(run: TinyRun, root: Path, name: str = "r") -> Path:
    """The tiny run copied to root/checkpoints/name; returns the copy's run folder."""
    shutil.copytree(run.run_dir, root / "checkpoints" / name)
    return root / "checkpoints" / name


def snapshot(folder: Path) -> dict[Path, str]:
    """Every file under folder with a hash of its bytes, to prove that nothing changed."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def call_script(main, *args: str, cwd: Path) -> tuple[int, str, str]:
    """Run a script's main in this process as its command line would: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    sigterm = signal.getsignal(signal.SIGTERM)  # train.py installs its own; keep it out of pytest
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(main, list(args))
            code = 0
        except SystemExit as exit_info:
            code = 0 if exit_info.code is None else exit_info.code
        finally:
            signal.signal(signal.SIGTERM, sigterm)
    return code, out.getvalue(), err.getvalue()


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts as a user would, from cwd."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def start_script(script: str, *args: str, cwd: Path, stdout=subprocess.PIPE) -> subprocess.Popen:
    """Start one of the repo's scripts as a user would, from cwd, without waiting for it."""
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=cwd, stdout=stdout,
                            stderr=subprocess.PIPE, text=True)


def needs_shared(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (a user's clone has no ../shared); CI provides it")
    return path


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


def forked(work) -> int:
    """Run work() in a forked child process; returns its pid. The child never returns to pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1  # an exception in work() ends the child with status 1
        try:
            torch.set_num_threads(1)  # the parent's OpenMP thread pool does not survive fork: without this, a hang
            own_tqdm_lock()  # killed while holding the lock it shares with the parent, it would hang the parent
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def own_tqdm_lock() -> None:
    """Give this (forked) process a tqdm write lock of its own instead of the one inherited from its parent."""
    import multiprocessing

    from tqdm import tqdm
    from tqdm.std import TqdmDefaultWriteLock

    TqdmDefaultWriteLock.mp_lock = multiprocessing.RLock()
    tqdm.set_lock(TqdmDefaultWriteLock())


def wait_until(condition, timeout: float = 600) -> None:
    """Poll until condition() holds; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:  # a hang guard far beyond any busy machine's time, not a measurement
            raise TimeoutError(f"the condition did not hold within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def one_thread():
    """run.threads=1 for the tests that fork (a forked child must not inherit OpenMP's pool, and one thread
    each is fastest on a shared machine); the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    yield "run.threads=1"
    torch.set_num_threads(threads)
