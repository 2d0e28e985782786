"""The built-in data sources: the embedded digits, MNIST and Fashion-MNIST (IDX files) and CIFAR-10
(torchvision's files), decoded once into (N, C, H, W) uint8 images and (N,) int64 labels and cached.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from engine.datasource import DataInfo, Source, cached, read_cache, scan
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.config import DataConfig

DIGITS_PATH = Path(__file__).resolve().parents[1] / "data" / "digits.pt"
DIGITS = [str(d) for d in range(10)]


class Digits(Source):
    """UCI's 8x8 handwritten digits, embedded in data/digits.pt: offline, no folder, no cache."""
    mirrors = False  # a mirrored digit is another glyph or none

    def describe(self, cfg: DataConfig) -> DataInfo:
        return DataInfo(1, 8, DIGITS)

    def load(self, cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_digits(split)

    def files(self, cfg: DataConfig, split: str) -> tuple[Path, list[Path]]:
        return DIGITS_PATH.parent, [DIGITS_PATH] if DIGITS_PATH.is_file() else []

    def where(self, cfg: DataConfig) -> str:
        return "embedded in data/digits.pt"


def load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not DIGITS_PATH.is_file():
        raise UserError(f"{DIGITS_PATH} is missing; restore it with git checkout or run data/make_digits.py")
    digits = read_cache(DIGITS_PATH, lambda c: c["images"].shape[1:] == (8, 8) and c["images"].dtype == torch.uint8
                        and len(c["labels"]) == len(c["images"]) and len(c["train_idx"]) and len(c["test_idx"]))
    if digits is None:
        lfs = DIGITS_PATH.read_bytes()[:100].startswith(b"version https://git-lfs")
        raise UserError(f"{DIGITS_PATH} is {'a Git LFS pointer, not the data' if lfs else 'damaged'}; "
                        f"{'run git lfs pull, or ' if lfs else ''}restore it with git checkout or run "
                        "data/make_digits.py")
    idx = digits[f"{split}_idx"]
    return digits["images"][idx].unsqueeze(1), digits["labels"][idx]  # (N, 1, 8, 8), (N,)


class TorchvisionSet(Source):
    """A torchvision data set in data.root: read from its files, downloaded there when missing and online."""
    reads = ("root", "cache_dir")

    def __init__(self, dataset: Callable, folder: str, channels: int, size: int, class_names: list[str],
                 mirrors: bool = True):
        self.dataset, self.folder, self.channels, self.size = dataset, folder, channels, size
        self.class_names, self.mirrors = class_names, mirrors

    def describe(self, cfg: DataConfig) -> DataInfo:
        return DataInfo(self.channels, self.size, self.class_names)

    def location(self, cfg: DataConfig) -> Path:
        """The folder its files are in."""
        return Path(cfg.root) / self.folder

    def files(self, cfg: DataConfig, split: str) -> tuple[Path, list[Path]]:
        return self.location(cfg), [f for f in scan(self.location(cfg)) if f.is_file()]

    def load(self, cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return cached(self, cfg, split, lambda: self.decode(cfg, split))

    def decode(self, cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = self.torchvision_dataset(cfg, split)
        images = torch.as_tensor(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
        return images, torch.as_tensor(dataset.targets, dtype=torch.int64)

    def torchvision_dataset(self, cfg: DataConfig, split: str):
        """torchvision's data set object, downloading into data.root when the files are missing."""
        from torchvision import datasets  # imported only here: it costs ~150 MB of memory

        cls = self.dataset(datasets)
        try:
            return cls(cfg.root, train=split == "train", download=False)
        except RuntimeError:
            pass
        try:
            return cls(cfg.root, train=split == "train", download=True)
        except Exception as err:  # urllib, socket and checksum errors all mean the same to the user
            raise UserError(f"{cfg.name} files not found in {self.location(cfg)} and the download "
                            f"failed ({type(err).__name__}); put the files there or point data.root at them") from None


class IdxSet(TorchvisionSet):
    """MNIST and Fashion-MNIST: their four IDX files in data.root/<folder>/raw/, read and checked here."""

    def location(self, cfg: DataConfig) -> Path:
        return Path(cfg.root) / self.folder / "raw"

    def decode(self, cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.location(cfg) / ("train" if split == "train" else "t10k")
        files = [Path(f"{prefix}-images-idx3-ubyte"), Path(f"{prefix}-labels-idx1-ubyte")]
        if not all(f.is_file() for f in files):
            self.torchvision_dataset(cfg, split)
        images, labels = read_idx(files[0], 3), read_idx(files[1], 1)
        self.check_pair(images, labels, files)
        return images.unsqueeze(1), labels.long()  # (N, 1, 28, 28), (N,)

    def check_pair(self, images: torch.Tensor, labels: torch.Tensor, files: list[Path]) -> None:
        """Images and labels of one split must agree in count, and fit the data set's image size and classes."""
        if len(images) != len(labels):
            raise UserError(f"{files[0]} holds {len(images)} images but {files[1]} holds {len(labels)} labels; "
                            "the two files must come from the same release")
        if images.shape[1:] != (self.size, self.size) or len(labels) == 0:
            raise UserError(f"{files[0]} holds {len(images)} images of {tuple(images.shape[1:])} pixels; "
                            f"this data set has {self.size}x{self.size} images; replace it with the original file")
        if int(labels.max()) >= len(self.class_names):
            raise UserError(f"{files[1]} has label {int(labels.max())}, but the data set has "
                            f"{len(self.class_names)} classes; replace it with the original file")


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An uncompressed IDX file of uint8 (MNIST's format): 0, 0, type 0x08, the dimension count, the sizes
    as big-endian uint32, then the data. Every part is checked, so a damaged file is named, not misread."""
    data = path.read_bytes()
    again = "delete it to download it again, or replace it with the original"
    if data[:2] == b"\x1f\x8b":
        raise UserError(f"{path} is still gzip-compressed; decompress it (gunzip) or {again}")
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 8, ndim]):
        raise UserError(f"{path} is not an IDX file of {ndim}-dimensional uint8 data (its header is wrong); {again}")
    dims = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    size = 4 + 4 * ndim + math.prod(dims)
    if len(data) != size:
        raise UserError(f"{path} has {len(data):,} bytes but its header {dims} needs {size:,} "
                        f"({'truncated' if len(data) < size else 'extra data'}); {again}")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)


MNIST = IdxSet(lambda datasets: datasets.MNIST, "MNIST", 1, 28, DIGITS, mirrors=False)
FASHION_MNIST = IdxSet(lambda datasets: datasets.FashionMNIST, "FashionMNIST", 1, 28, [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])
CIFAR10 = TorchvisionSet(lambda datasets: datasets.CIFAR10, "cifar-10-batches-py", 3, 32, [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
