"""What a data source is (Source), and what every source shares: DataInfo, image files decoded on
demand, streams read front to back (Stream), and the cache of decoded splits. The sources themselves are in
engine/builtin_sets.py, engine/folders.py, engine/csvdata.py, engine/hfdata.py and engine/shards.py; their
registry SOURCES is in engine/datasets.py.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch

from engine.errors import UserError
from engine.imagefiles import ImageError, decode_image
from engine.storage import StorageError, atomic_save, make_folder, remove_stale_temporaries

if TYPE_CHECKING:
    from engine.config import DataConfig

DEFAULT_SIZE = 32  # image files' side for data.image_size=auto without pretrained weights


@dataclass
class DataInfo:
    """What a model needs to know about its data; stored in checkpoints as a plain dict."""
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: list[float] = field(default_factory=list)  # per channel, on the 0..1 scale: the train split's, or
    std: list[float] = field(default_factory=list)  # those the pretrained weights were trained with
    class_counts: list[int] = field(default_factory=list)  # training images per class (train.class_weights)
    held_out: list[str] = field(default_factory=list)  # data.test_fraction: the test images, relative to the data
    multilabel: bool = False  # data.multilabel: labels are (N, K) 0/1 rows, the outputs K sigmoids
    thresholds: list[float] = field(default_factory=list)  # multilabel: per-label thresholds chosen on validation


class Source:
    """A data set that data.name names. A new one subclasses this, implements the three methods marked
    required, and adds an instance to SOURCES in engine/datasets.py (docs/extend.md). A source that lacks a
    required method is refused when the config is loaded, before any work."""
    REQUIRED = ("describe", "load", "files")
    reads: tuple[str, ...] = ()  # data.* keys it reads besides those every source gets: the others get a note
    mirrors: bool = True  # a mirrored image keeps its class (photos); False (digits): train.tta flips get a note
    holds_val: bool = False  # True (shards): load(cfg, 'val') is a validation split of its own; data.val_fraction
    # has no effect

    def describe(self, cfg: DataConfig) -> DataInfo:
        """Required: channels, image size and class names (and multilabel); cheaply, as a run asks several times."""
        raise NotImplementedError

    def load(self, cfg: DataConfig, split: str) -> tuple[Images, torch.Tensor | None]:
        """Required: the 'train' or 'test' split as uint8 images (N, C, H, W) in memory (or a Dataset read per
        batch: FileImages, hfdata's RowImages) and labels: int64 (N,) class indices, or (N, K) rows of 0/1 when
        multilabel. Or a Stream, whose labels come with its images (labels None): shards, which also have 'val'."""
        raise NotImplementedError

    def files(self, cfg: DataConfig, split: str) -> tuple[Path, list[Path]]:
        """Required: the folder the split is read from and its files (the model card's hash and the cache key
        come from their names and sizes); a UserError or OSError when they are not on this machine."""
        raise NotImplementedError

    def where(self, cfg: DataConfig) -> str:
        """Where the data comes from, for the model card."""
        return f"from data.root {cfg.root}"

    def fingerprint(self, cfg: DataConfig) -> bytes:
        """What the decoded split depends on besides its files' names and sizes (e.g. a CSV's labels)."""
        return b""

    def held_out(self, cfg: DataConfig) -> list[str]:
        """data.test_fraction's test images, relative to the data's folder; [] for a test split of its own."""
        return []


def missing_methods(source: Source) -> list[str]:
    """The required methods a source does not implement."""
    return [name for name in Source.REQUIRED if getattr(type(source), name, None) is getattr(Source, name)]


def read_image(path: Path | BinaryIO, channels: int, size: int, max_pixels: int, name: str = "") -> torch.Tensor:
    """One image file (or its bytes, in a file object, called name in messages) as uint8 (channels, size, size);
    transparent pixels are shown over white."""
    try:
        return torch.from_numpy(decode_image(path, channels, size, max_pixels, name))
    except ImageError as err:
        raise UserError(str(err)) from None


def folder_size(cfg: DataConfig) -> int:
    """data.image_size; auto is 32 unless train.py resolved it to the pretrained weights' size."""
    return DEFAULT_SIZE if cfg.image_size == "auto" else cfg.image_size


class FileImages(torch.utils.data.Dataset):
    """Image files decoded on demand in DataLoader workers: data sets too big for memory."""

    def __init__(self, files: list[Path], cfg: DataConfig):
        self.files, self.cfg = files, cfg

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_image(self.files[i], self.cfg.channels, folder_size(self.cfg), self.cfg.max_pixels)  # (C, H, W)

    def select(self, idx: torch.Tensor) -> FileImages:
        return FileImages([self.files[i] for i in idx.tolist()], self.cfg)

    def encoded(self, i: int) -> bytes | None:
        """The i-th image's file as stored (tools/make_shards.py keeps PNG and JPEG files as they are)."""
        return Path(self.files[i]).read_bytes()


@dataclass(frozen=True)
class Share:
    """What one process reads of a Stream in one pass."""
    batch_size: int
    seed: int | None = None  # None: its share once, in a fixed order (evaluation); else shuffled, fixed batch count
    epoch: int = 0
    rank: int = 0
    world: int = 1
    num_workers: int = 0  # DataLoader worker processes; 0: the calling process reads
    pin_memory: bool = False


class Stream:
    """A split read front to back rather than by index (engine/shards.py): too big for one machine's memory or
    disk, or on another machine. Its labels come with its images, a batch at a time; the loaders read it through
    batches() (engine/loaders.py StreamLoader)."""
    image_shape: tuple[int, int, int]  # (C, H, W) of every image it yields

    def __len__(self) -> int:
        """Images in the split."""
        raise NotImplementedError

    def __iter__(self):
        """The uint8 images (C, H, W), in the stored order."""
        raise NotImplementedError

    def select(self, idx: torch.Tensor) -> Stream:
        """The images at positions idx (ascending) of the stored order."""
        raise NotImplementedError

    def batches(self, share: Share):
        """An iterable of (uint8 images (B, C, H, W), labels) for one pass of one process."""
        raise NotImplementedError

    def num_batches(self, share: Share) -> int:
        """How many batches batches(share) yields: the same on every process when training."""
        raise NotImplementedError


Images = torch.Tensor | FileImages | Stream  # uint8 (N, C, H, W) in memory, files read per batch, or a stream


def scan(folder: Path) -> list[Path]:
    """The entries of folder, hidden ones left out. A symbolic link counts as what it points to; a broken
    one (its target missing, or a loop) is an error rather than a silently missing file."""
    entries = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not entry.exists():  # exists() follows the link: False if dangling or looping
            raise UserError(f"{entry} is a broken symbolic link (its target is missing or it points back to "
                            "itself); remove it or fix its target")
        entries.append(entry)
    return entries


def cached(source: Source, cfg: DataConfig, split: str, decode) -> tuple[torch.Tensor, torch.Tensor]:
    """decode() -> (images, labels) of the split, kept under data.cache_dir for the next run.

    The cache file is keyed by the resolved folder and, relative to it, every source file's name, size
    and modification time (two spellings of one path share a cache file, and a changed file gets a new
    one), the image size and channels, and the source's fingerprint."""
    start = time.perf_counter()
    cache = cache_file(source, cfg, split)
    if cache is not None and cache.is_file():
        content = read_cache(cache, lambda c: valid_split(c, source.describe(cfg)))
        if content is not None:
            print(f"data: {cfg.name} {split} read from {cache} in {time.perf_counter() - start:.1f}s")
            return content["images"], content["labels"]
    images, labels = decode()
    message = f"data: {cfg.name} {split} decoded in {time.perf_counter() - start:.1f}s"
    cache = cache or cache_file(source, cfg, split)  # the files exist now, even if they were just downloaded
    print(message + (write_cache({"images": images, "labels": labels}, cache) if cache else ""))
    return images, labels


def cache_file(source: Source, cfg: DataConfig, split: str) -> Path | None:
    """cache_dir/<name>-<split>-<hash of the source files and decode settings>.pt; None if no files or no cache."""
    if not cfg.cache_dir:
        return None
    try:
        folder, files = source.files(cfg, split)
    except OSError:  # not there yet: to be downloaded
        return None
    info = source.describe(cfg)
    digest = hashlib.sha1(f"{folder.resolve()}|{info.image_size}|{info.in_channels}".encode())
    for path in files:
        stat = path.stat()  # of the target, for a symlink
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update(source.fingerprint(cfg))
    return Path(cfg.cache_dir) / f"{cfg.name}-{split}-{digest.hexdigest()[:16]}.pt"


def read_cache(cache: Path, is_valid) -> dict | None:
    """A cache file's content if it loads and is_valid(content) holds; None (rebuild it) for anything else."""
    try:
        content = torch.load(cache, weights_only=True)
    except Exception:  # truncated, damaged or foreign: the unpickler raises almost any type
        return None
    try:
        return content if isinstance(content, dict) and is_valid(content) else None
    except (KeyError, TypeError, AttributeError, ValueError):
        return None


def valid_split(content: dict, info: DataInfo) -> bool:
    """A decoded split's layout: uint8 images (N, C, H, W) of the source's channels and size, and N labels: int64
    class indices (N,), or (N, K) float rows of 0/1 when multilabel."""
    images, labels = content["images"], content["labels"]
    label_shape = (len(images), len(info.class_names)) if info.multilabel else (len(images),)
    return (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor) and images.dtype == torch.uint8
            and images.shape[1:] == (info.in_channels, info.image_size, info.image_size) and len(images) > 0
            and labels.dtype == (torch.float32 if info.multilabel else torch.int64) and labels.shape == label_shape
            and int(labels.min()) >= 0)


def write_cache(content: dict, cache: Path) -> str:
    """Save a decoded split (or its statistics) for the next run; returns how it went, for the log line."""
    try:
        make_folder(cache.parent, "data.cache_dir")
        remove_stale_temporaries(cache.parent, only_dead=True)
        atomic_save(content, cache)
        return f", cached in {cache}"
    except (StorageError, UserError) as err:
        return f" (not cached: {err})"
