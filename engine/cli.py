"""What every script shares: --config and overrides, the checkpoint argument, one-line errors and exit codes."""
import argparse
import gc
import re
from pathlib import Path
from typing import Callable

from engine import entry
from engine.checkpoint import resolve, run_checkpoints
from engine.config import Config, key_help, load_config
from engine.entry import Parser, check_interrupted  # noqa: F401 (the scripts import them from here)
from engine.errors import UserError, shown
from engine.escape import printable
from model import ShapeError


def positive_int(text: str) -> int:
    """argparse type for sizes and counts: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {shown(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def make_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every script shares: --config FILE and key=value overrides."""
    parser = Parser(description=doc, epilog=key_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="config file (default: config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=0.01")
    return parser


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """engine/entry.py's run_cli, with model.py's ShapeError (a config the image is too small for) a user error."""
    if argv is None:  # a script's own process: what its imports made lives until it exits
        gc.freeze()  # so the collector never scans it: torch's imports leave ~a million objects that every full
        # collection, and the several at exit, would traverse (the quickstart spent 1.8 s exiting)
    entry.run_cli(main, argv, (ShapeError,))


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
            raise UserError(f"override {shown(text)}: only {', '.join(CHECKPOINT_CONFIG_KEYS)} are read from the "
                            "config; the model and data come from the checkpoint")
    if len(paths) > 1:
        raise UserError(f"give at most one checkpoint or run folder, got {len(paths)}: "
                        f"{', '.join(printable(shown(path, 60)) for path in paths[:3])}{', ...' if len(paths) > 3 else ''}")
    return (paths[0] if paths else None), overrides


def is_checkpoint_argument(text: str) -> bool:
    """A .pt file or a folder that holds a run: what the checkpoint argument names, never an image."""
    return Path(text).suffix == ".pt" or bool(run_checkpoints(text))


def checkpoint_among(images: list[str], inputs: list[str]) -> tuple[list[str], list[str]]:
    """(images, inputs) with any checkpoint or run folder among images moved to inputs, where it is taken as
    the checkpoint (`--predict photos/ checkpoints/<run>`, as `--cam IMG checkpoints/<run>`)."""
    found = [text for text in images if is_checkpoint_argument(text)]
    return [text for text in images if text not in found], inputs + found
