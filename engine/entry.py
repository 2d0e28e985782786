"""The one entry point of every script (train.py, test.py, tools/, benchmarks/): run_cli turns every way a
script can end into an exit status and at most one short `error:` line, and while it runs what it prints on
stdout has its control characters escaped (EscapedOutput). Free of PyTorch, so that
tools/predict_onnx.py, which runs where PyTorch is not installed, ends the same way.

Exit statuses, also listed in docs/troubleshooting.md: 0 done, 1 (test.py --predict, predict_onnx.py) some
files could not be read, 2 a problem with the input or the machine, 3 a bug, 128 + the signal's number for a
stop: 129 SIGHUP, 130 Ctrl-C (SIGINT), 138 SIGUSR1 (Slurm's early warning), 143 SIGTERM.
"""
import argparse
import contextlib
import errno
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, NoReturn, TextIO

from engine.errors import UserError
from engine.escape import printable

EXIT_USER_ERROR = 2  # a problem with the input or the machine: one `error:` line naming it and the fix
EXIT_UNEXPECTED = 3  # a bug: one line, and the traceback in a file
# The signals that stop a script, each ending it with 128 + its number as a shell reports a death by it: Ctrl-C,
# a scheduler's stop (scancel, Kubernetes, torchrun), a closed terminal, and Slurm's early warning (sbatch --signal).
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1")
                if hasattr(signal, name)]  # Windows has the first two
LINE_MAX = 300  # characters of an error line, `error: ` included; messages abbreviate what they quote (errors.shown)
PATH_SHOWN = 90  # characters a long path (or any long word) keeps in a line over LINE_MAX, then 60, then 30
received: list[int] = []  # stop signals seen during this run_cli call
handling_pid = [0]  # the process whose run_cli installed on_signal; a forked child (a DataLoader worker) ignores it
deferring = [0]  # > 0: stop signals are only recorded, and raised at the next check_interrupted


class Terminated(KeyboardInterrupt):
    """A stop signal other than Ctrl-C (SIGTERM, SIGHUP, SIGUSR1): handled like Ctrl-C, exiting 128 + its number."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_exception(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def exit_status(signum: int) -> int:
    """128 + the signal's number, as a shell reports a process that the signal killed."""
    return 128 + signum


def on_signal(signum: int, frame) -> None:
    """A stop signal: remember it, then interrupt whatever runs now, unless stops are deferred (a second Ctrl-C
    interrupts anyway: a person insists; other signals often come twice, from a scheduler and from torchrun)."""
    if os.getpid() != handling_pid[0]:  # a forked DataLoader worker before its worker_init_fn: its parent decides
        return
    received.append(signum)
    if not deferring[0] or (signum == signal.SIGINT and received.count(signal.SIGINT) > 1):
        raise stop_exception(signum)


def check_interrupted() -> None:
    """Raise a stop signal that was deferred or swallowed (an exception raised inside a finalizer or a weakref
    callback, which matplotlib runs many of during garbage collection, is printed and dropped by Python)."""
    if received:
        raise stop_exception(received[-1])


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """Inside the block a stop signal is only recorded; check_interrupted (or a caller) raises it at a point where
    stopping leaves everything whole (a batch taken from a worker, an epoch's files written, every torchrun process
    at the same batch)."""
    deferring[0] += 1
    try:
        yield
    finally:
        deferring[0] -= 1


def raise_deferred() -> None:
    """After a deferring block: raise a stop signal that came in it, unless an enclosing block defers it further."""
    if received and not deferring[0]:
        raise stop_exception(received[-1])


def stopped() -> bool:
    """Whether a stop signal came during this run_cli call."""
    return bool(received)


def stopped_by() -> int | None:
    """The stop signal that came last, if any."""
    return received[-1] if received else None


class EscapedOutput:
    """sys.stdout while a script runs: each line written through escape.printable (newlines kept), so that a name
    a user gave (a class folder, a CSV cell, a file name) reaches the terminal escaped, whichever print shows it."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write("\n".join(map(printable, text.split("\n"))))

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding...: the stream's own
        return getattr(self.stream, name)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other error here."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see {self.prog} --help")


def one_line(message: str) -> str:
    """The message as one line that fits LINE_MAX after `error: `: control characters escaped; if too long, the
    middle of each long path shortened (paths stay as the user wrote them, only abridged), and as a last guard
    the middle of the line, so that its start (what) and its end (the cause and the fix) remain."""
    line, room = printable(message), LINE_MAX - len("error: ")
    if len(line) > room:  # any very long word, then paths ever shorter
        line = re.sub(rf"\S{{{PATH_SHOWN + 1},}}", lambda word: abridged(word[0], PATH_SHOWN), line)
    for size in (PATH_SHOWN * 2 // 3, PATH_SHOWN // 3):
        if len(line) > room:
            line = re.sub(rf"(?=\S*[/\\])\S{{{size + 1},}}", lambda word: abridged(word[0], size), line)
    return line if len(line) <= room else abridged(line, room, " ... ")


def abridged(text: str, size: int, gap: str = "...") -> str:
    """text in size characters: its first third and its end, with gap between."""
    head = (size - len(gap)) // 3
    return f"{text[:head]}{gap}{text[-(size - len(gap) - head):]}"


def fail(message: str, status: int = EXIT_USER_ERROR) -> NoReturn:
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(status)


DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG,
               errno.ENAMETOOLONG, errno.ENOENT, errno.EISDIR, errno.ENOTDIR}
FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def os_error_line(err: OSError) -> str:
    """An OSError's line: the file (and a second one, of a rename) as given, and the system's own reason."""
    reason = err.strerror or message_of(err) or type(err).__name__
    if err.filename is not None:
        files = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else f"{err.filename}"
        return (f"{files}: {reason}; check that it exists, is readable, and that its folder is writable with "
                "free space")
    if err.errno in DISK_ERRORS or isinstance(err, FILE_ERRORS):  # no file named (a write() of a library, a
        # DataLoader worker's error, which arrives as text): at least the true cause, never the network
        return (f"a file could not be written or read: {reason}; free some space, or choose a writable folder "
                "(run.output_dir, --output)")
    return f"{reason} ({type(err).__name__}); check the ports and network this command uses"


# A DataLoader worker's exception reaches the main process as its type with this text around the original.
WORKER_WRAPPING = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def message_of(err: BaseException) -> str:
    """The exception's own message; for one raised in a DataLoader worker, the original's, not the traceback."""
    text = str(err)
    if WORKER_WRAPPING.match(text):  # the traceback ends with '<module>.<type>: <message>', which may span lines
        starts = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(type(err).__name__)}: ", text, re.M))
        text = text[starts[-1].end():].rstrip() if starts else text.rstrip().splitlines()[-1]
    return text


def is_out_of_memory(err: BaseException) -> bool:
    """MemoryError, torch.OutOfMemoryError (by name: no torch here), or the CPU allocator's RuntimeError."""
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def report_unexpected(err: BaseException, script: str) -> NoReturn:
    """One line naming the exception and where it was raised; the full traceback goes to a file."""
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    text = message_of(err).splitlines()[0][:80] if message_of(err).strip() else ""  # the line keeps the file's path
    name = f"{script}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-traceback.txt"
    path = Path(tempfile.gettempdir()) / name
    try:
        path.write_text("".join(traceback.format_exception(err)))
        saved = f"the full traceback is in {path}; please report it with that file"
    except OSError:
        saved = "the traceback could not be written to the temporary folder"
    fail(f"unexpected {type(err).__name__}{where}: {text}; this is a bug in the template, not in your input; "
         f"{saved}", EXIT_UNEXPECTED)


def fail_for(err: Exception, script: str, user_errors: tuple[type, ...]) -> NoReturn:
    """The exit status and line for an exception that ended main."""
    if isinstance(err, (UserError, *user_errors)):  # a worker's UserError is re-raised as one
        fail(message_of(err))
    if is_out_of_memory(err):
        fail(f"out of memory ({message_of(err).splitlines()[0][:120] if str(err) else type(err).__name__}); lower "
             "train.batch_size or train.eval_batch_size, the model's widths, or data.image_size")
    if isinstance(err, OSError):  # a file the user named or a folder they chose, or the machine's: port, network
        fail(os_error_line(err))
    report_unexpected(err, script)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None,
            user_errors: tuple[type, ...] = ()) -> None:
    """Run a script's main on argv (default: the command line) and turn every way it can end into an exit
    status: 0 done (or main's integer result), 2 with one `error:` line for a problem the user can fix (a
    UserError or one of user_errors, also when raised in a DataLoader worker), 3 with one line and a
    traceback file for a bug, 128 + the signal's number for a stop (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP,
    138 SIGUSR1). An exception after a stop signal is the stop's, not a failure: what a stop causes (another
    torchrun process gone, a closed terminal) ends the script with the stop's status too."""
    received.clear()
    in_main_thread = threading.current_thread() is threading.main_thread()
    handling_pid[0] = os.getpid()
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS} if in_main_thread else {}
    stdout = sys.stdout
    sys.stdout = escaped = EscapedOutput(stdout)
    try:
        status = main(argv)
    except KeyboardInterrupt as err:
        sys.exit(exit_status(err.signum if isinstance(err, Terminated) else received[-1] if received
                             else signal.SIGINT))
    except BrokenPipeError:  # e.g. `python test.py | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as err:
        if received:
            sys.exit(exit_status(received[-1]))
        fail_for(err, getattr(main, "__module__", "script"), user_errors)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if sys.stdout is escaped:  # a torchrun rank other than 0 has replaced it with os.devnull
            sys.stdout = stdout
    if isinstance(status, int) and status:
        sys.exit(status)
