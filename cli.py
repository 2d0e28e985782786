"""What every script shares: --config and overrides, one-line errors and exit codes, device and seed."""
import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, NoReturn

import torch

from config import UserError, check_device_name, key_help
from model import ShapeError


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C but exiting with 143."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error here."""

    def error(self, message: str) -> None:
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """argparse type for sizes and counts: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def make_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every script shares: --config FILE and key=value overrides."""
    parser = Parser(description=doc, epilog=key_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="config file (default: config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=0.01")
    return parser


# Exit statuses, also listed in the README.
EXIT_USER_ERROR = 2  # a problem with the input or the machine: one `error:` line naming it and the fix
EXIT_UNEXPECTED = 3  # a bug: one line, and the traceback in a file
SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}
received: list[int] = []  # Ctrl-C / SIGTERM seen during this run_cli call


def on_signal(signum: int, frame) -> None:
    """Ctrl-C and SIGTERM: remember the signal, then interrupt whatever runs now."""
    received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def check_interrupted() -> None:
    """Raise again a Ctrl-C or SIGTERM that was swallowed: an exception raised inside a finalizer or a
    weakref callback (matplotlib runs many during garbage collection) is printed and dropped by Python."""
    if received:
        raise Terminated() if received[-1] == signal.SIGTERM else KeyboardInterrupt()


def fail(message: str, status: int = EXIT_USER_ERROR) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def report_unexpected(err: BaseException, script: str) -> NoReturn:
    """One line naming the exception and where it was raised; the full traceback goes to a file."""
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    text = str(err).splitlines()[0][:200] if str(err) else ""
    name = f"{script}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-traceback.txt"
    path = Path(tempfile.gettempdir()) / name
    try:
        path.write_text("".join(traceback.format_exception(err)))
        saved = f"the full traceback is in {path}; please report it with that file"
    except OSError:
        saved = "the traceback could not be written to the temporary folder"
    fail(f"unexpected {type(err).__name__}{where}: {text}; this is a bug in the template, not in your input; "
         f"{saved}", EXIT_UNEXPECTED)


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a script's main on argv (default: the command line) and turn every way it can end into an exit
    status: 0 done, 2 with one `error:` line for a problem the user can fix, 3 with one line and a
    traceback file for a bug, 130 Ctrl-C, 143 SIGTERM."""
    received.clear()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS} if in_main_thread else {}
    try:
        main(argv)
    except (UserError, ShapeError) as err:
        fail(str(err))
    except KeyboardInterrupt as err:
        sys.exit(143 if isinstance(err, Terminated) else 130)
    except BrokenPipeError:  # e.g. `python test.py | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as err:
        if is_out_of_memory(err):
            fail(f"out of memory ({str(err).splitlines()[0][:120]}); lower train.batch_size or "
                 "train.eval_batch_size, the model's widths, or data.image_size")
        if isinstance(err, OSError):  # a file the user named or a folder they chose: theirs to fix
            fail(f"{err.filename or 'a file'}: {err.strerror or err}; check that it exists, is readable, "
                 "and that its folder is writable with free space")
        report_unexpected(err, getattr(main, "__module__", "script"))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def mps_available() -> bool:
    return torch.backends.mps.is_available()


def select_device(name: str) -> torch.device:
    """auto -> CUDA, else Apple's MPS, else CPU; explicit requests are checked. cuda:N becomes the
    current CUDA device, so libraries that use 'the current device' use it too."""
    check_device_name(name, "device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "mps" and not mps_available():
        raise UserError("device 'mps' requested but this machine has no Apple GPU (MPS); use auto or cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' requested but no CUDA device is available; use auto or cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"device '{name}' requested but only {torch.cuda.device_count()} "
                            "CUDA device(s) exist; use cuda:0 or auto")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def has_native_bf16(device: torch.device) -> bool:
    """CUDA with bf16 support, or a CPU whose oneDNN reports bf16 support (AVX-512 CPUs and newer)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":  # MPS: float32 unless asked
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private call: absent from some builds
        return False


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """run.amp -> none | bf16 | fp16 on this device, and why."""
    if amp == "auto":
        if has_native_bf16(device):
            return "bf16", f"{device.type} has native bf16"
        return "none", f"float32: no native bf16 on this {'GPU' if device.type == 'cuda' else device.type.upper()}"
    if amp == "fp16" and device.type != "cuda":  # fp16 needs CUDA's GradScaler
        return "none", f"fp16 applies on CUDA only; training in float32 (run.amp=bf16 works on {device.type.upper()})"
    return amp, "as configured"


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that training, validation and test.py all use for run.amp on this device."""
    return AMP_DTYPES[resolve_amp(amp, device)[0]]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python and torch; optionally make PyTorch use deterministic algorithms only."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        require_deterministic_cublas()
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call costs ~150 MB of memory
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic


def require_deterministic_cublas() -> None:
    """Deterministic cuBLAS needs this variable before the process's first cuBLAS call (PyTorch reads
    it once), so train.py sets it as soon as the config asks for determinism."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
