"""The data sets data.name names, read from disk: the embedded digits, MNIST and Fashion-MNIST (IDX files),
CIFAR-10 and folders of class folders, decoded once into (N, C, H, W) uint8 images and (N,) int64 labels
and cached; engine/loaders.py batches them.
"""
import hashlib
import math
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import csvdata
from engine.config import FILE_SETS, DataConfig
from engine.distributed import local_main_first
from engine.errors import UserError
from engine.imagefiles import ImageError, decode_image
from engine.storage import StorageError, atomic_save, make_folder, remove_stale_temporaries

DIGITS_PATH = Path(__file__).resolve().parents[1] / "data" / "digits.pt"
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# name -> (channels, image size); folder data sets take both from the config.
BUILTIN = {"digits": (1, 8), "mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32)}
CLASS_NAMES = {
    "digits": [str(d) for d in range(10)],
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
DEFAULT_SIZE = 32  # folder images' side for data.image_size=auto without pretrained weights
HELD_OUT_SEED = 0  # data.test_fraction's split hashes it with each file name: every run.seed tests the same images


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


def folder_size(cfg: DataConfig) -> int:
    """data.image_size; auto is 32 unless train.py resolved it to the pretrained weights' size."""
    return DEFAULT_SIZE if cfg.image_size == "auto" else cfg.image_size


def describe(cfg: DataConfig) -> DataInfo:
    """Channels, image size and class names of the configured data set, without loading it."""
    if cfg.test_fraction and cfg.name not in FILE_SETS:
        raise UserError(f"data.test_fraction: {cfg.name} has a test split of its own; it is for folder and csv "
                        "data sets without one; set data.test_fraction=0")
    if cfg.multilabel and (cfg.name != "csv" or cfg.test_fraction or cfg.sampler == "balanced"):
        raise UserError("data.multilabel needs data.name=csv (labels in one cell, separated by "
                        "data.label_separator), a test split of its own and data.sampler=shuffle")
    if cfg.name == "csv" or cfg.test_fraction:
        return DataInfo(cfg.channels, folder_size(cfg), class_names_of(cfg, labelled(cfg)["train"][1]),
                        multilabel=cfg.multilabel)
    if cfg.name == "folder":
        names, test_names = class_folders(Path(cfg.root) / "train"), class_folders(Path(cfg.root) / "test")
        if names != test_names:
            raise UserError(f"{Path(cfg.root) / 'test'} has classes {test_names} but train has {names}; "
                            "both need the same class folders")
        if len(names) < 2:
            raise UserError(f"{Path(cfg.root) / 'train'} has one class folder ({names[0]}); a classifier needs "
                            "at least two classes, one folder each")
        return DataInfo(cfg.channels, folder_size(cfg), names)
    channels, size = BUILTIN[cfg.name]
    return DataInfo(channels, size, CLASS_NAMES[cfg.name])


def load_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The 'train' or 'test' split as uint8 images (N, C, H, W) and int64 labels (N,).

    Decoded images are cached under data.cache_dir, keyed by the source folder's resolved path and
    its files' names, sizes and modification times, so a second run skips decoding. Under torchrun
    the first process on each machine downloads, decodes and caches; the others then read its cache.
    """
    if cfg.name == "digits":
        return load_digits(split)
    with local_main_first():
        return read_or_decode(cfg, split)


def read_or_decode(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split from the cache, or decoded (downloaded first if missing) and cached."""
    start = time.perf_counter()
    cache = cache_path(cfg, split)
    if cache is not None and cache.is_file():
        cached = read_cache(cache, lambda c: valid_split(c, cfg))
        if cached is not None:
            print(f"data: {cfg.name} {split} read from {cache} in {time.perf_counter() - start:.1f}s")
            return cached["images"], cached["labels"]
    images, labels = load_folder(cfg, split) if cfg.name in FILE_SETS else load_torchvision(cfg, split)
    message = f"data: {cfg.name} {split} decoded in {time.perf_counter() - start:.1f}s"
    cache = cache or cache_path(cfg, split)  # the files exist now, even if they were just downloaded
    print(message + (write_cache({"images": images, "labels": labels}, cache) if cache else ""))
    return images, labels


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


def valid_split(content: dict, cfg: DataConfig) -> bool:
    """A decoded split's layout: uint8 images (N, C, H, W) of the configured channels and size, N int64 labels."""
    images, labels = content["images"], content["labels"]
    return (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor) and images.dtype == torch.uint8
            and images.ndim == 4 and labels.dtype == torch.int64 and labels.shape == (len(images),)
            and len(images) > 0 and (cfg.name not in FILE_SETS or images.shape[1:] == (cfg.channels, folder_size(cfg),
                                                                                folder_size(cfg)))
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


def source_folder(cfg: DataConfig, split: str) -> Path:
    """The folder whose files make up the split."""
    if cfg.name == "csv" or cfg.test_fraction:
        return Path(os.path.normpath(cfg.root)) if cfg.name == "csv" else pool_folder(cfg)
    if cfg.name == "folder":
        return Path(cfg.root) / split
    if cfg.name == "cifar10":
        return Path(cfg.root) / "cifar-10-batches-py"
    return Path(cfg.root) / TORCHVISION_FOLDER[cfg.name] / "raw"


def cache_path(cfg: DataConfig, split: str) -> Path | None:
    """cache_dir/<name>-<split>-<hash of the source files and decode settings>.pt; None if no files or no cache.

    The hash covers the resolved folder and, relative to it, every source file's name, size and
    modification time: two spellings of one path share a cache file, and a changed file gets a new one.
    """
    folder = source_folder(cfg, split)
    if not cfg.cache_dir or not folder.is_dir():
        return None
    files = folder_files(cfg, split)[0] if cfg.name in FILE_SETS else [f for f in scan(folder) if f.is_file()]
    digest = hashlib.sha1(f"{folder.resolve()}|{folder_size(cfg)}|{cfg.channels}".encode())
    for path in files:
        stat = path.stat()  # of the target, for a symlink
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update(csvdata.fingerprint(cfg) if cfg.name == "csv" else b"")  # the labels come from the CSVs
    return Path(cfg.cache_dir) / f"{cfg.name}-{split}-{digest.hexdigest()[:16]}.pt"


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


def check_idx_pair(images: torch.Tensor, labels: torch.Tensor, files: list[Path], cfg: DataConfig) -> None:
    """Images and labels of one split must agree in count, and fit the data set's image size and classes."""
    size = BUILTIN[cfg.name][1]
    if len(images) != len(labels):
        raise UserError(f"{files[0]} holds {len(images)} images but {files[1]} holds {len(labels)} labels; "
                        "the two files must come from the same release")
    if images.shape[1:] != (size, size) or len(labels) == 0:
        raise UserError(f"{files[0]} holds {len(images)} images of {tuple(images.shape[1:])} pixels; "
                        f"{cfg.name} has {size}x{size} images; replace it with the original file")
    if int(labels.max()) >= len(CLASS_NAMES[cfg.name]):
        raise UserError(f"{files[1]} has label {int(labels.max())}, but {cfg.name} has "
                        f"{len(CLASS_NAMES[cfg.name])} classes; replace it with the original file")


def load_torchvision(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST and Fashion-MNIST from their IDX files, CIFAR-10 via torchvision; downloads when missing."""
    if cfg.name == "cifar10":
        dataset = torchvision_dataset(cfg, split)
        images = torch.as_tensor(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
        return images, torch.as_tensor(dataset.targets, dtype=torch.int64)
    prefix = source_folder(cfg, split) / ("train" if split == "train" else "t10k")
    files = [Path(f"{prefix}-images-idx3-ubyte"), Path(f"{prefix}-labels-idx1-ubyte")]
    if not all(f.is_file() for f in files):
        torchvision_dataset(cfg, split)
    images, labels = read_idx(files[0], 3), read_idx(files[1], 1)
    check_idx_pair(images, labels, files, cfg)
    return images.unsqueeze(1), labels.long()  # (N, 1, 28, 28), (N,)


def torchvision_dataset(cfg: DataConfig, split: str):
    """torchvision's data set object, downloading into data.root when the files are missing."""
    from torchvision import datasets  # imported only here: it costs ~150 MB of memory

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[cfg.name]
    try:
        return cls(cfg.root, train=split == "train", download=False)
    except RuntimeError:
        pass
    try:
        return cls(cfg.root, train=split == "train", download=True)
    except Exception as err:  # urllib, socket and checksum errors all mean the same to the user
        raise UserError(f"{cfg.name} files not found in {source_folder(cfg, split)} and the download failed "
                        f"({type(err).__name__}); put the files there or point data.root at them") from None


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


def class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise UserError(f"data folder {split_dir} not found; a folder data set needs "
                        "data.root/train/<class>/ and data.root/test/<class>/")
    names = [d.name for d in scan(split_dir) if d.is_dir()]
    if not names:
        raise UserError(f"{split_dir} has no class folders; put each class's images in {split_dir}/<class>/")
    return names


def folder_files(cfg: DataConfig, split: str) -> tuple[list[Path], torch.Tensor]:
    """The image files under data.root/<split>/<class>/ (or as the CSV lists them) and their labels;
    checks classes match train's."""
    if cfg.name == "csv" or cfg.test_fraction:
        return pooled_files(cfg, split)
    split_dir = Path(cfg.root) / split
    names = describe(cfg).class_names
    files, labels = [], []
    for label, name in enumerate(names):
        found = [f for f in scan(split_dir / name) if f.is_file()]
        if not found:
            raise UserError(f"class folder {split_dir / name} is empty; add images or remove the folder")
        files += found
        labels += [label] * len(found)
    return files, torch.tensor(labels)


def load_folder(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A folder split decoded into memory: resized to image_size, grey or colour as configured."""
    files, labels = folder_files(cfg, split)
    return torch.stack([read_image(f, cfg.channels, folder_size(cfg), cfg.max_pixels) for f in files]), labels


def read_image(path: Path, channels: int, size: int, max_pixels: int) -> torch.Tensor:
    """One image file as uint8 (channels, size, size); transparent pixels are shown over white."""
    try:
        return torch.from_numpy(decode_image(path, channels, size, max_pixels))
    except ImageError as err:
        raise UserError(str(err)) from None




def pool_folder(cfg: DataConfig) -> Path:
    """data.test_fraction on a folder: its class folders are in data.root/train/ if that exists, else in data.root."""
    root = Path(cfg.root)
    if (root / "test").is_dir():
        raise UserError(f"data.test_fraction={cfg.test_fraction} holds out a test split, but {root / 'test'} exists; "
                        "set data.test_fraction=0 to use that one")
    return root / "train" if (root / "train").is_dir() else root


def labelled(cfg: DataConfig) -> dict[str, tuple[list[Path], list[str]] | None]:
    """Each split's image files and label texts as listed: the CSVs' rows, or for data.test_fraction on a
    folder all its images ('test' is then None: held_out_mask takes it from 'train')."""
    if cfg.name == "csv":
        return {split: rows and (list(rows.files), list(rows.labels)) for split, rows in csvdata.splits(cfg).items()}
    folder, files, labels = pool_folder(cfg), [], []
    for name in class_folders(folder):
        found = [f for f in scan(folder / name) if f.is_file()]
        if not found:
            raise UserError(f"class folder {folder / name} is empty; add images or remove the folder")
        files, labels = files + found, labels + [name] * len(found)
    return {"train": (files, labels), "test": None}


def class_names_of(cfg: DataConfig, labels: list[str]) -> list[str]:
    """The classes, sorted: a folder's as its class folders are, a CSV's labels as numbers if all are integers."""
    names = (csvdata.class_names([name for text in labels for name in csvdata.label_set(text, cfg)])
             if cfg.name == "csv" else sorted(set(labels)))
    if len(names) < 2:
        where = csvdata.csv_path(cfg, "labels") if cfg.name == "csv" else pool_folder(cfg)
        raise UserError(f"{where} has one class ({names[0]}); a classifier needs at least two")
    return names


def pooled_files(cfg: DataConfig, split: str) -> tuple[list[Path], torch.Tensor]:
    """folder_files for CSV data sets and data.test_fraction: the split's files and label indices."""
    found = labelled(cfg)
    names = class_names_of(cfg, found["train"][1])
    index = {name: i for i, name in enumerate(names)}
    if found["test"] is not None:
        files, texts = found[split]
        if cfg.multilabel:  # (N, K) rows of 0/1
            rows = [[index[name] for name in csvdata.label_set(text, cfg)] for text in texts]
            return files, torch.zeros(len(rows), len(names)).index_put_(
                (torch.tensor([i for i, row in enumerate(rows) for _ in row], dtype=torch.long),
                 torch.tensor([k for row in rows for k in row], dtype=torch.long)), torch.tensor(1.0))
        return files, torch.tensor([index[text] for text in texts])
    files, texts = found["train"]
    labels = torch.tensor([index[text] for text in texts])
    folder = source_folder(cfg, split)
    keep = held_out_mask([Path(os.path.relpath(f, folder)).as_posix() for f in files], labels, cfg.test_fraction)
    keep = keep if split == "test" else ~keep
    return [f for f, k in zip(files, keep.tolist()) if k], labels[keep]


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


def held_out_names(cfg: DataConfig) -> list[str]:
    """The images data.test_fraction holds out, relative to the data set's folder; [] without it."""
    if not cfg.test_fraction:
        return []
    folder = source_folder(cfg, "test")
    return [Path(os.path.relpath(f, folder)).as_posix() for f in folder_files(cfg, "test")[0]]


def check_held_out(cfg: DataConfig, stored: list[str]) -> None:
    """The test images held out now must be those the run held out (stored in its checkpoint)."""
    now = held_out_names(cfg)
    if stored and now != stored:
        gone, new = sorted(set(stored) - set(now)), sorted(set(now) - set(stored))
        detail = "; ".join(part for part in (gone and f"{len(gone)} no longer held out, e.g. {gone[0]}",
                                             new and f"{len(new)} new, e.g. {new[0]}") if part)
        raise UserError(f"data.test_fraction: the images of {cfg.root} changed since this model was trained, so "
                        f"its held-out test split is no longer the same ({detail}); restore them or train again")
