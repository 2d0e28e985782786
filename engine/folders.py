"""Data sources of image files: FileSet (what folders and CSV data sets share: decoding, streaming when
too big for memory, data.test_fraction's held-out split) and Folder (data.root/train/<class>/...).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.datasource import DataInfo, FileImages, Images, Source, cached, folder_size, read_image, scan
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.config import DataConfig

HELD_OUT_SEED = 0  # data.test_fraction's split hashes it with each file name: every run.seed tests the same images
Labelled = dict[str, tuple[list[Path], list[str]] | None]  # split -> (image files, label texts); test None: held out


class FileSet(Source):
    """Image files, each with a label text. A subclass gives labelled(), folder() and class_names()."""
    reads = ("root", "image_size", "channels", "max_memory_mb", "max_pixels", "num_workers", "cache_dir",
             "test_fraction")

    def labelled(self, cfg: DataConfig) -> Labelled:
        """Each split's image files and label texts; 'test' None when data.test_fraction holds it out of 'train'."""
        raise NotImplementedError

    def folder(self, cfg: DataConfig, split: str) -> Path:
        """The folder the split's files are named relative to."""
        raise NotImplementedError

    def class_names(self, cfg: DataConfig) -> list[str]:
        """The classes, in the order of the model's outputs; at least two."""
        raise NotImplementedError

    def describe(self, cfg: DataConfig) -> DataInfo:
        return DataInfo(cfg.channels, folder_size(cfg), self.class_names(cfg), multilabel=cfg.multilabel)

    def files(self, cfg: DataConfig, split: str) -> tuple[Path, list[Path]]:
        return self.folder(cfg, split), self.split_files(cfg, split)[0]

    def load(self, cfg: DataConfig, split: str) -> tuple[Images, torch.Tensor]:
        """The split decoded into memory, or as files read per batch when bigger than data.max_memory_mb decoded."""
        files, labels = self.split_files(cfg, split)
        if len(files) * cfg.channels * folder_size(cfg) ** 2 > cfg.max_memory_mb * 2 ** 20:
            print(f"data: {split} is over data.max_memory_mb decoded; streaming {len(files)} files from disk")
            return FileImages(files, cfg), labels

        def decode() -> tuple[torch.Tensor, torch.Tensor]:
            return torch.stack([read_image(f, cfg.channels, folder_size(cfg), cfg.max_pixels) for f in files]), labels
        return cached(self, cfg, split, decode)

    def split_files(self, cfg: DataConfig, split: str) -> tuple[list[Path], torch.Tensor]:
        """The split's image files and labels: class indices (N,), or (N, K) rows of 0/1 when multilabel."""
        found = self.labelled(cfg)
        index = {name: i for i, name in enumerate(self.class_names(cfg))}
        if found["test"] is not None:
            files, texts = found[split]
            return files, self.label_tensor(cfg, texts, index)
        files, texts = found["train"]
        labels = torch.tensor([index[text] for text in texts])
        folder = self.folder(cfg, split)
        keep = held_out_mask([Path(os.path.relpath(f, folder)).as_posix() for f in files], labels, cfg.test_fraction)
        keep = keep if split == "test" else ~keep
        return [f for f, k in zip(files, keep.tolist()) if k], labels[keep]

    def label_tensor(self, cfg: DataConfig, texts: list[str], index: dict[str, int]) -> torch.Tensor:
        return torch.tensor([index[text] for text in texts])

    def held_out(self, cfg: DataConfig) -> list[str]:
        if not cfg.test_fraction:
            return []
        folder = self.folder(cfg, "test")
        return [Path(os.path.relpath(f, folder)).as_posix() for f in self.split_files(cfg, "test")[0]]


class Folder(FileSet):
    """data.root/train/<class>/*.png and data.root/test/<class>/...; with data.test_fraction, one folder of
    class folders (data.root/train/ if it exists, else data.root) from which the test split is held out."""

    def folder(self, cfg: DataConfig, split: str) -> Path:
        return pool_folder(cfg) if cfg.test_fraction else Path(cfg.root) / split

    def class_names(self, cfg: DataConfig) -> list[str]:
        """The class folders' names, sorted; without data.test_fraction train/ and test/ must have the same."""
        if cfg.test_fraction:
            names = class_folders(pool_folder(cfg))
            if len(names) < 2:
                raise UserError(f"{pool_folder(cfg)} has one class ({names[0]}); a classifier needs at least two")
            return names
        names, test_names = class_folders(Path(cfg.root) / "train"), class_folders(Path(cfg.root) / "test")
        if names != test_names:
            raise UserError(f"{Path(cfg.root) / 'test'} has classes {test_names} but train has {names}; "
                            "both need the same class folders")
        if len(names) < 2:
            raise UserError(f"{Path(cfg.root) / 'train'} has one class folder ({names[0]}); a classifier needs "
                            "at least two classes, one folder each")
        return names

    def labelled(self, cfg: DataConfig) -> Labelled:
        names = self.class_names(cfg)
        if cfg.test_fraction:
            return {"train": class_files(pool_folder(cfg), names), "test": None}
        return {split: class_files(Path(cfg.root) / split, names) for split in ("train", "test")}


def class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise UserError(f"data folder {split_dir} not found; a folder data set needs "
                        "data.root/train/<class>/ and data.root/test/<class>/")
    names = [d.name for d in scan(split_dir) if d.is_dir()]
    if not names:
        raise UserError(f"{split_dir} has no class folders; put each class's images in {split_dir}/<class>/")
    return names


def class_files(folder: Path, names: list[str]) -> tuple[list[Path], list[str]]:
    """The image files of each class folder and their class names."""
    files, labels = [], []
    for name in names:
        found = [f for f in scan(folder / name) if f.is_file()]
        if not found:
            raise UserError(f"class folder {folder / name} is empty; add images or remove the folder")
        files, labels = files + found, labels + [name] * len(found)
    return files, labels


def pool_folder(cfg: DataConfig) -> Path:
    """data.test_fraction on a folder: its class folders are in data.root/train/ if that exists, else in data.root."""
    root = Path(cfg.root)
    if (root / "test").is_dir():
        raise UserError(f"data.test_fraction={cfg.test_fraction} holds out a test split, but {root / 'test'} exists; "
                        "set data.test_fraction=0 to use that one")
    return root / "train" if (root / "train").is_dir() else root


def held_out_mask(names: list[str], labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """data.test_fraction: the round(fraction * n) images of each class (leaving it one to train on) whose
    names hash lowest; True = test. Stratified, the same for every run.seed, and stable: removing or adding
    an image moves at most the one at the boundary, not the whole split (as a reshuffle would)."""
    rank = [hashlib.sha1(f"{HELD_OUT_SEED}|{name}".encode()).hexdigest() for name in names]
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique().tolist():
        idx = sorted((labels == label).nonzero().flatten().tolist(), key=lambda i: rank[i])
        is_test[idx[: min(round(fraction * len(idx)), len(idx) - 1)]] = True
    if not is_test.any():
        raise UserError(f"data.test_fraction {fraction} of {len(labels)} images leaves the test split empty; "
                        "raise it or add images")
    return is_test
