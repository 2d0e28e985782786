"""The data sources data.name names (SOURCES), and what the rest of the engine asks of the configured one:
its description, a split's images and labels, its files for the model card, the held-out test split.

A source is a Source (engine/datasource.py) in a module of its own; nothing outside the sources asks which
data set it is. A new one is its module and its line below (docs/extend.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.builtin_sets import CIFAR10, FASHION_MNIST, MNIST, Digits
from engine.csvdata import Csv
from engine.datasource import DataInfo, Images, Source, cache_file, missing_methods
from engine.distributed import local_main_first
from engine.errors import UserError
from engine.folders import Folder
from engine.hfdata import Hf
from engine.shards import Shards

if TYPE_CHECKING:
    from engine.config import DataConfig

SOURCES: dict[str, Source] = {
    "digits": Digits(),
    "mnist": MNIST,
    "fashion_mnist": FASHION_MNIST,
    "cifar10": CIFAR10,
    "folder": Folder(),
    "csv": Csv(),
    "hf": Hf(),
    "shards": Shards(),
}


def check_source(name: str) -> None:
    """A source that lacks a required method is refused at start-up, not after training."""
    missing = missing_methods(SOURCES[name])
    if missing:
        raise UserError(f"data source '{name}' ({type(SOURCES[name]).__name__}) lacks {', '.join(missing)}; implement "
                        "every method Source marks required (engine/datasource.py, docs/extend.md)")


def source_of(cfg: DataConfig) -> Source:
    return SOURCES[cfg.name]


def describe(cfg: DataConfig) -> DataInfo:
    """Channels, image size and class names of the configured data set, without loading it."""
    source = source_of(cfg)
    if cfg.test_fraction and "test_fraction" not in source.reads:
        raise UserError(f"data.test_fraction: {cfg.name} has a test split of its own; it is for data sets without "
                        "one (folder, csv); set data.test_fraction=0")
    return source.describe(cfg)


def load_split(cfg: DataConfig, split: str) -> tuple[Images, torch.Tensor | None]:
    """The 'train' or 'test' split: uint8 images (N, C, H, W) (or files read per batch) and labels; or a Stream
    and None (shards, which also hold a 'val' split).

    Under torchrun the first process on each machine downloads, decodes and caches; the others then read
    its cache."""
    with local_main_first():
        return source_of(cfg).load(cfg, split)


def cache_path(cfg: DataConfig, split: str) -> Path | None:
    return cache_file(source_of(cfg), cfg, split)


def file_list(cfg: DataConfig) -> dict[str, Path] | None:
    """The data set's files by name: split/path relative to the split's folder, or the path alone for files that
    hold both splits (digits.pt, MNIST's raw/ folder: counted once); None when they are not on this machine."""
    try:
        splits = {split: source_of(cfg).files(cfg, split) for split in ("train", "test")}
    except (UserError, OSError):
        return None
    is_shared = splits["train"] == splits["test"]
    return {("" if is_shared else f"{split}/") + f.relative_to(folder).as_posix(): f
            for split, (folder, files) in splits.items() for f in files} or None


def held_out_names(cfg: DataConfig) -> list[str]:
    """The images data.test_fraction holds out, relative to the data set's folder; [] without it."""
    return source_of(cfg).held_out(cfg)


def check_held_out(cfg: DataConfig, stored: list[str]) -> None:
    """The test images held out now must be those the run held out (stored in its checkpoint)."""
    if not stored:
        return
    now = held_out_names(cfg)
    if now != stored:
        gone, new = sorted(set(stored) - set(now)), sorted(set(now) - set(stored))
        detail = "; ".join(part for part in (gone and f"{len(gone)} no longer held out, e.g. {gone[0]}",
                                             new and f"{len(new)} new, e.g. {new[0]}") if part)
        raise UserError(f"data.test_fraction: the images of {cfg.root} changed since this model was trained, so "
                        f"its held-out test split is no longer the same ({detail}); restore them or train again")
