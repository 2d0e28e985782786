"""What every script shares: --config and overrides, the checkpoint argument, one-line errors and exit codes."""
import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, NoReturn

import torch

from engine.checkpoint import resolve
from engine.config import Config, key_help, load_config
from engine.errors import UserError
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


# Exit statuses, also listed in docs/troubleshooting.md.
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


# The only settings test.py and the tools that read a checkpoint take from the config; the model and data
# come from the checkpoint.
CHECKPOINT_CONFIG_KEYS = ("run.output_dir", "run.device", "data.max_pixels")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """[CHECKPOINT_OR_RUN_FOLDER] [key=value ...] and --config, the same in test.py, export.py and demo.py."""
    keys = ", ".join(CHECKPOINT_CONFIG_KEYS)
    parser.add_argument("inputs", nargs="*", metavar="[CHECKPOINT_OR_RUN_FOLDER] [key=value]",
                        help=f"a .pt file or a run folder (default: the most recent run under run.output_dir); "
                             f"overrides of {keys}")
    parser.add_argument("--config", metavar="FILE", help=f"config file for {keys} (default: config.yaml)")


def checkpoint_and_config(args: argparse.Namespace, filename: str = "best.pt") -> tuple[Path, Config]:
    """The checkpoint the arguments name (a run folder gives its filename; none, the latest run's) and the
    config that its output folder, device and pixel limit come from."""
    checkpoint, overrides = split_inputs(args.inputs)
    cfg = load_config(args.config, overrides)
    return resolve(checkpoint, cfg.run.output_dir, filename), cfg


def split_inputs(inputs: list[str]) -> tuple[str | None, list[str]]:
    """[CHECKPOINT] [key=value ...] -> (checkpoint or None, overrides of CHECKPOINT_CONFIG_KEYS)."""
    overrides = [text for text in inputs if re.match(r"^\w+(\.\w+)+=", text)]
    paths = [text for text in inputs if text not in overrides]
    for text in overrides:
        if text.partition("=")[0] not in CHECKPOINT_CONFIG_KEYS:
            raise UserError(f"override {text!r}: only {', '.join(CHECKPOINT_CONFIG_KEYS)} are read from the "
                            "config; the model and data come from the checkpoint")
    if len(paths) > 1:
        raise UserError(f"give at most one checkpoint or run folder, got {len(paths)}: {' '.join(paths)}")
    return (paths[0] if paths else None), overrides
