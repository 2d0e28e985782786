"""Data sets as uint8 tensors in memory, and the loader that batches, normalises and augments them.

Every data set is decoded once into (N, C, H, W) uint8 images and (N,) int64 labels; the loader
moves them to the device once and does all per-image work on whole batches there.
"""
import hashlib
import math
import os
import pickle
import struct
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from augment import Augmentation, augment_images, augment_normalised, generator_for
from config import Config, DataConfig, TrainConfig, UserError
from distributed import local_main_first, rank_and_world
from imagefiles import ImageError, decode_image
from storage import StorageError, atomic_save, make_folder, remove_stale_temporaries

DIGITS_PATH = Path(__file__).with_name("data") / "digits.pt"
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
STATS_SAMPLE = 20_000  # images used for the per-channel mean and std
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


@dataclass
class DataInfo:
    """What a model needs to know about its data; stored in checkpoints as a plain dict."""
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: list[float] = field(default_factory=list)  # per channel, on the 0..1 scale: the train split's, or
    std: list[float] = field(default_factory=list)  # those the pretrained weights were trained with
    class_counts: list[int] = field(default_factory=list)  # training images per class (train.class_weights)


def folder_size(cfg: DataConfig) -> int:
    """data.image_size; auto is 32 unless train.py resolved it to the pretrained weights' size."""
    return DEFAULT_SIZE if cfg.image_size == "auto" else cfg.image_size


def describe(cfg: DataConfig) -> DataInfo:
    """Channels, image size and class names of the configured data set, without loading it."""
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
        try:
            cached = torch.load(cache, weights_only=True)
            print(f"data: {cfg.name} {split} read from {cache} in {time.perf_counter() - start:.1f}s")
            return cached["images"], cached["labels"]
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, KeyError):
            pass  # a damaged cache is rebuilt below
    images, labels = load_folder(cfg, split) if cfg.name == "folder" else load_torchvision(cfg, split)
    message = f"data: {cfg.name} {split} decoded in {time.perf_counter() - start:.1f}s"
    cache = cache or cache_path(cfg, split)  # the files exist now, even if they were just downloaded
    print(message + (write_cache({"images": images, "labels": labels}, cache) if cache else ""))
    return images, labels


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
    files = folder_files(cfg, split)[0] if cfg.name == "folder" else [f for f in scan(folder) if f.is_file()]
    digest = hashlib.sha1(f"{folder.resolve()}|{folder_size(cfg)}|{cfg.channels}".encode())
    for path in files:
        stat = path.stat()  # of the target, for a symlink
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return Path(cfg.cache_dir) / f"{cfg.name}-{split}-{digest.hexdigest()[:16]}.pt"


def load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not DIGITS_PATH.is_file():
        raise UserError(f"{DIGITS_PATH} is missing; restore it with git checkout or run data/make_digits.py")
    digits = torch.load(DIGITS_PATH, weights_only=True)
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
    """The image files under data.root/<split>/<class>/ and their labels; checks classes match train's."""
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


def train_val_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seeded indices (train, val) carved from the training split only."""
    generator = torch.Generator().manual_seed(seed)
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        idx = (labels == label).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        is_val[idx[: round(fraction * len(idx))]] = True
    if is_val.all() or not is_val.any():
        raise UserError(f"data.val_fraction {fraction} of {len(labels)} training images leaves the "
                        f"{'training' if is_val.all() else 'validation'} split empty; change it or add images")
    return (~is_val).nonzero().flatten(), is_val.nonzero().flatten()


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the 0..1 scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(1024):  # chunks keep the float copy small
        chunk = chunk.double() / 255
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.pow(2).sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


class FileImages(torch.utils.data.Dataset):
    """Image files decoded on demand in DataLoader workers: folder data sets too big for memory."""

    def __init__(self, files: list[Path], cfg: DataConfig):
        self.files, self.cfg = files, cfg

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_image(self.files[i], self.cfg.channels, folder_size(self.cfg), self.cfg.max_pixels)  # (C, H, W)

    def select(self, idx: torch.Tensor) -> "FileImages":
        return FileImages([self.files[i] for i in idx.tolist()], self.cfg)


Images = torch.Tensor | FileImages  # uint8 (N, C, H, W) in memory, or files read per batch


def subset(images: Images, idx: torch.Tensor) -> Images:
    return images[idx] if isinstance(images, torch.Tensor) else images.select(idx)


def decoded(images: Images) -> torch.Tensor:
    """The images as one uint8 tensor (N, C, H, W), decoding files if need be."""
    return images if isinstance(images, torch.Tensor) else torch.stack([images[i] for i in range(len(images))])


class Normalise(nn.Module):
    """uint8 images (B, C, H, W) -> float, with the training split's per-channel mean and std (0..1 scale).

    A module so that exported models (export.py) carry the same normalisation as the loader.
    """

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        # On the 0..255 scale: (x/255 - mean)/std == (x - 255 mean)/(255 std).
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


class EpochBatches:
    """The current epoch's index batches; lets DataLoader workers persist across epochs."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class Batching:
    """How a Loader cuts its split into batches."""
    size: int
    shuffle_seed: int | None = None  # None: the same order every epoch (evaluation)
    augmentation: Augmentation | None = None  # applied to shuffled batches only
    num_workers: int = 0  # DataLoader worker processes, for images streamed from files
    drop_last: bool = False  # drop the short last batch: torch.compile then sees a single batch shape
    balanced: bool = False  # with a seed: draw every class equally often (balanced_order) instead of shuffling


class Loader:
    """Batches of normalised float images and targets on the device, from memory or from files.

    In-memory images live on the device as uint8; files are decoded by DataLoader workers.
    Either way normalisation and augmentation run on whole batches on the device. With a seed it
    shuffles: each epoch's order is a randperm seeded by (seed, epoch) (balanced batching draws it with
    balanced_order instead), and augmentation draws come from a generator on the device seeded by
    (seed, epoch, rank), so a resumed run sees the same batches as an uninterrupted one. Without a
    seed the order is fixed and nothing is augmented. Under torchrun each process takes every world-th
    image of that order: disjoint shares that together cover the split (or the epoch's draws). Targets
    are the labels (B,), or class probabilities (B, num_classes) under MixUp/CutMix.
    """

    def __init__(self, images: Images, labels: torch.Tensor, batching: Batching, info: DataInfo,
                 device: torch.device):
        self.rank, self.world = rank_and_world()
        self.device, self.labels, self.batching = device, labels.to(device), batching
        self.normalise = Normalise(info.mean, info.std).to(device)
        self.epoch = 0
        self.images, self.stream = images, None
        if isinstance(images, torch.Tensor):
            self.images = images.to(device)
        else:
            self.epoch_batches = EpochBatches()
            self.stream = torch.utils.data.DataLoader(
                images, batch_sampler=self.epoch_batches, num_workers=batching.num_workers,
                pin_memory=device.type == "cuda", persistent_workers=batching.num_workers > 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def raw_images(self, idx: torch.Tensor) -> torch.Tensor:
        """The stored uint8 images (len(idx), C, H, W) at positions idx, on the CPU."""
        return decoded(subset(self.images, idx.to(self.device) if self.stream is None else idx)).cpu()

    def __len__(self) -> int:
        share, size = math.ceil(len(self.labels) / self.world), self.batching.size
        if self.batching.drop_last:  # the smallest share's full batches, so every process takes as many steps
            return len(self.labels) // self.world // size
        steps = math.ceil(share / size)
        if self.batching.shuffle_seed is None:
            return steps
        if self.world > 1:  # nearly equal batches of the smaller share: at least two images each (unless size 1)
            return steps if size == 1 else min(steps, max(1, len(self.labels) // self.world // 2))
        return share // size if share > size and share % size == 1 else steps  # a lone last image joins

    def batches(self, order: torch.Tensor) -> list[torch.Tensor]:
        """This process's share of the order, as index batches.

        With several processes every one must take the same number of steps, so each share is cut
        into len(self) nearly equal batches rather than full ones and a short remainder. A training
        batch of one image would stop batch norm (one value per channel at a 1x1 feature map), so
        in one process a lone last image joins the batch before it, and under torchrun len(self) is
        capped so that every batch of the smaller share has two images.
        """
        share = order[self.rank::self.world]
        if self.batching.drop_last:
            return [share[i * self.batching.size: (i + 1) * self.batching.size] for i in range(len(self))]
        if self.world > 1:
            return list(share.tensor_split(len(self)))
        batches = list(share.split(self.batching.size))
        return batches[:len(self) - 1] + [torch.cat(batches[len(self) - 1:])]

    def __iter__(self):
        order = torch.arange(len(self.labels))
        if self.batching.shuffle_seed is not None:
            seed = (self.batching.shuffle_seed * 100_003 + self.epoch) % 2 ** 64  # torch seeds are 64-bit
            shuffle = torch.Generator().manual_seed(seed)
            order = (balanced_order(self.labels.cpu(), shuffle) if self.batching.balanced
                     else torch.randperm(len(self.labels), generator=shuffle))  # the same on every process
        index_batches = self.batches(order)
        batches = [batch.to(self.device) for batch in index_batches]
        if self.stream is None:
            raw = (self.images[batch] for batch in batches)
        else:
            self.epoch_batches.batches = [batch.tolist() for batch in index_batches]
            raw = (images.to(self.device, non_blocking=True) for images in self.stream)
        aug = self.batching.augmentation if self.batching.shuffle_seed is not None else None
        generator = None if aug is None else generator_for(self.batching.shuffle_seed, self.epoch, self.rank,
                                                           self.device)
        for batch, images in zip(batches, raw):
            images, labels = images.float(), self.labels[batch]  # (B, C, H, W) on the 0..255 scale
            if aug is not None:
                images = augment_images(images, aug, generator)
            images = self.normalise(images)
            if aug is not None:
                images, labels = augment_normalised(images, labels, aug, generator)
            yield images, labels


def balanced_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """len(labels) positions in random order, with every class drawn equally often (the remainder of
    len(labels) / classes goes to randomly chosen classes); a class with few images repeats them."""
    classes = labels.unique()
    per_class = torch.full((len(classes),), len(labels) // len(classes))
    per_class[torch.randperm(len(classes), generator=generator)[: len(labels) % len(classes)]] += 1
    draws = []
    for label, count in zip(classes.tolist(), per_class.tolist()):
        members = (labels == label).nonzero().flatten()
        draws.append(members[torch.randint(len(members), (count,), generator=generator)])
    order = torch.cat(draws)
    return order[torch.randperm(len(order), generator=generator)]


def load_images(cfg: DataConfig, split: str) -> tuple[Images, torch.Tensor]:
    """A split in memory, or as files when a folder data set is bigger than data.max_memory_mb decoded."""
    if cfg.name == "folder":
        files, labels = folder_files(cfg, split)
        if len(files) * cfg.channels * folder_size(cfg) ** 2 > cfg.max_memory_mb * 2 ** 20:
            print(f"data: {split} is over data.max_memory_mb decoded; streaming {len(files)} files from disk")
            return FileImages(files, cfg), labels
    return load_split(cfg, split)


def num_workers(cfg: DataConfig) -> int:
    return min(4, os.cpu_count() or 1) if cfg.num_workers == "auto" else cfg.num_workers


def eval_batch_size(cfg: TrainConfig, device: torch.device) -> int:
    """auto: without gradients a GPU fits 4x the training batch; a CPU keeps the training batch, since
    bigger batches fall out of its caches (default CNN: 41k images/s at 128, 13k at 500, measured)."""
    if cfg.eval_batch_size != "auto":
        return cfg.eval_batch_size
    return cfg.batch_size * (4 if device.type == "cuda" else 1)


def make_eval_loader(cfg: Config, info: DataInfo, split: str, batch_size: int, device: torch.device) -> Loader:
    """The 'val' or 'test' split in a fixed order, normalised with the training statistics in info."""
    if split == "val":
        images, labels = load_images(cfg.data, "train")
        _, idx = train_val_split(labels, cfg.data.val_fraction, cfg.run.seed)
        images, labels = subset(images, idx), labels[idx]
    else:
        images, labels = load_images(cfg.data, "test")
    check_matches(images, labels, info, cfg.data)
    return Loader(images, labels, Batching(batch_size, num_workers=num_workers(cfg.data)), info, device)


def check_matches(images: Images, labels: torch.Tensor, info: DataInfo, cfg: DataConfig) -> None:
    """The test split must have the shape and classes the model was trained on."""
    expected = (info.in_channels, info.image_size, info.image_size)
    shape = tuple(images[0].shape) if len(images) else ()
    if shape != expected:
        raise UserError(f"data.{cfg.name}: test images are {shape} but the model expects "
                        f"{expected}; use the data settings the model was trained with")
    if len(labels) == 0 or int(labels.max()) >= len(info.class_names):
        raise UserError(f"data.{cfg.name}: test labels do not match the {len(info.class_names)} "
                        "training classes; use the same class folders in train/ and test/")


def normalisation(cfg: Config, images: Images, train_idx: torch.Tensor) -> dict:
    """Per-channel mean and std of (a sample of) the training split. For streamed folders they are
    cached beside the data cache: sampling decodes up to STATS_SAMPLE files (~90 s at 220 files/s)."""
    sample = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE]]
    cache = None if isinstance(images, torch.Tensor) else cache_path(cfg.data, "train")
    if cache is not None:
        cache = cache.with_name(f"{cache.stem}-stats-{cfg.run.seed}-{cfg.data.val_fraction}.pt")
    with local_main_first():
        if cache is not None and cache.is_file():
            return torch.load(cache, weights_only=True)
        mean, std = channel_stats(decoded(subset(images, sample.sort().values)))
        if cache is not None:
            write_cache({"mean": mean, "std": std}, cache)
        return {"mean": mean, "std": std}


def augmentation(cfg: Config, num_classes: int) -> Augmentation:
    return Augmentation(cfg.data.augment, cfg.data.crop_padding, cfg.data.random_erasing, cfg.train.mixup_alpha,
                        cfg.train.cutmix_alpha, num_classes)


def make_train_loaders(cfg: Config, device: torch.device,
                       stats: tuple[list[float], list[float]] | None = None) -> tuple[Loader, Loader, DataInfo]:
    """Shuffled training and fixed-order validation loaders, and the data info stored in checkpoints.

    stats: the (mean, std) to normalise with, e.g. the pretrained weights' (averaged over channels when
    their channel count differs, e.g. ImageNet's for grey images); None = the train split's."""
    info = describe(cfg.data)
    images, labels = load_images(cfg.data, "train")
    train_idx, val_idx = train_val_split(labels, cfg.data.val_fraction, cfg.run.seed)
    if stats is None:
        norm = normalisation(cfg, images, train_idx)
        stats = norm["mean"], norm["std"]
    if len(stats[0]) != info.in_channels:
        stats = tuple([sum(values) / len(values)] * info.in_channels for values in stats)
    counts = torch.bincount(labels[train_idx], minlength=len(info.class_names)).tolist()
    info = replace(info, mean=stats[0], std=stats[1], class_counts=counts)
    workers = num_workers(cfg.data)
    shuffled = Batching(cfg.train.batch_size, cfg.run.seed, augmentation(cfg, len(info.class_names)), workers,
                        drop_last=cfg.run.compile, balanced=cfg.data.sampler == "balanced")
    train_loader = Loader(subset(images, train_idx), labels[train_idx], shuffled, info, device)
    if len(train_loader) == 0:
        raise UserError(f"train.batch_size {cfg.train.batch_size} is more than the {len(train_idx)} training images "
                        "(per process) and run.compile drops the short last batch; lower train.batch_size")
    fixed = Batching(eval_batch_size(cfg.train, device), num_workers=workers)
    val_loader = Loader(subset(images, val_idx), labels[val_idx], fixed, info, device)
    return train_loader, val_loader, info
