"""The loader: batches of (N, C, H, W) images on the device, normalised and augmented there, and the
train/validation/test loaders a run uses.

Small data sets are decoded once into uint8 tensors and moved to the device once; folders too large for
memory (data.max_memory_mb) are read per batch by DataLoader workers; streams (shards) are read front to back
by DataLoader workers (StreamLoader). All look the same to the loop.
"""
import atexit
import math
import os
import signal
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from engine.augment import Augmentation, augment_images, augment_normalised, generator_for
from engine.config import Config, DataConfig, TrainConfig
from engine.datasets import cache_path, check_held_out, describe, held_out_names, load_split
from engine.datasource import DataInfo, Images, Share, Stream, read_cache, write_cache
from engine.distributed import is_main, local_main_first, rank_and_world
from engine.entry import STOP_SIGNALS, raise_deferred, stops_deferred
from engine.errors import UserError
from engine.escape import printable

STATS_SAMPLE = 20_000  # images used for the per-channel mean and std


def train_val_split(labels: torch.Tensor, fraction: float, seed: int, folds: int = 0,
                    fold: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seeded indices (train, val) carved from the training split only (multi-label rows (N, K):
    seeded, not stratified): the first `fraction` of each class in a seeded order, or with folds K every K-th
    image of that order from the fold-th on (data.folds, data.fold: K disjoint validation splits covering all)."""
    generator = torch.Generator().manual_seed(seed)
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique() if labels.ndim == 1 else [None]:
        idx = (labels == label).nonzero().flatten() if label is not None else torch.arange(len(labels))
        idx = idx[torch.randperm(len(idx), generator=generator)]
        is_val[idx[fold::folds] if folds else idx[: round(fraction * len(idx))]] = True
    if is_val.all() or not is_val.any():
        raise UserError(f"data.val_fraction {fraction} of {len(labels)} training images leaves the "
                        f"{'training' if is_val.all() else 'validation'} split empty; change it or add images")
    return (~is_val).nonzero().flatten(), is_val.nonzero().flatten()


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the 0..1 scale. The sums are of integers, so exact:
    the same images give the same bits whatever the thread count or chunking."""
    total = torch.zeros(images.shape[1], dtype=torch.int64)
    squares = torch.zeros_like(total)
    for chunk in images.split(1024):  # chunks keep the int64 copy small
        chunk = chunk.long()
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.pow(2).sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total.double() / count / 255
    std = (squares.double() / count / 255**2 - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def subset(images: Images, idx: torch.Tensor) -> Images:
    return images[idx] if isinstance(images, torch.Tensor) else images.select(idx)


def decoded(images: Images) -> torch.Tensor:
    """The images as one uint8 tensor (N, C, H, W), decoding files (or reading a stream) if need be."""
    if isinstance(images, torch.Tensor):
        return images
    return torch.stack(list(images) if isinstance(images, Stream) else [images[i] for i in range(len(images))])


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


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's first act: ignore the stop signals (Ctrl-C, SIGTERM, SIGHUP, SIGUSR1), which a
    terminal, scancel or Kubernetes sends to the whole process group. The main process stops (and then shuts
    down) its workers; a worker that died of the signal first would turn the stop into its traceback."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def received_whole(stream: torch.utils.data.DataLoader) -> Iterator[torch.Tensor]:
    """The DataLoader's batches, each received whole: a stop signal that comes while the main process takes a batch
    from a worker (a hand-over of file descriptors) is raised once it has it; interrupted in the middle, the worker's
    side of the hand-over printed a ConnectionResetError traceback."""
    batches = iter(stream)
    while True:
        with stops_deferred():
            images = next(batches, None)
        raise_deferred()
        if images is None:
            return
        yield images


STREAMS = weakref.WeakSet()  # every DataLoader with workers, shut down at exit (stop_workers)


def stop_workers() -> None:
    """Shut down the workers of every DataLoader still alive, before multiprocessing's exit handler (atexit runs
    last-registered first) would send them SIGTERM, which they ignore, and wait for them forever."""
    for stream in list(STREAMS):
        iterator = getattr(stream, "_iterator", None)  # persistent workers live in the DataLoader's iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


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
                pin_memory=device.type == "cuda", persistent_workers=batching.num_workers > 0,
                worker_init_fn=ignore_stop_signals if batching.num_workers else None)
            if batching.num_workers:
                STREAMS.add(self.stream)
                atexit.unregister(stop_workers)  # registered once, and after multiprocessing's handler
                atexit.register(stop_workers)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_images(self) -> int:
        """Images in the split (all processes' shares together)."""
        return len(self.labels)

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
            raw = (images.to(self.device, non_blocking=True) for images in received_whole(self.stream))
        aug = self.batching.augmentation if self.batching.shuffle_seed is not None else None
        generator = None if aug is None else generator_for(self.batching.shuffle_seed, self.epoch, self.rank,
                                                           self.device)
        flips = self.alternate_flips(aug)
        for batch, images in zip(batches, raw):
            yield prepared(images, self.labels[batch], self.normalise, (aug, generator),
                           None if flips is None else flips[batch])

    def alternate_flips(self, aug: Augmentation | None) -> torch.Tensor | None:
        """With data.flip=alternate, which images this epoch mirrors (N,): a random half fixed by the seed in odd
        epochs, the other half in even ones (airbench's alternating flip); None otherwise."""
        if aug is None or aug.flip != "alternate":
            return None
        first = torch.rand(len(self.labels), generator=torch.Generator().manual_seed(self.batching.shuffle_seed))
        first = first < 0.5
        return (first if self.epoch % 2 == 1 else ~first).to(self.device)


def prepared(images: torch.Tensor, labels: torch.Tensor, normalise: Normalise,
             augmenting: tuple[Augmentation | None, torch.Generator | None],
             flips: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of uint8 images (B, C, H, W) on the device, normalised and (with an augmentation) augmented:
    (images, targets). flips: data.flip=alternate's choice of images to mirror."""
    aug, generator = augmenting
    images = images.float()  # (B, C, H, W) on the 0..255 scale
    if aug is not None:
        images = augment_images(images, aug, generator, flips)
    images = normalise(images)
    if aug is not None:
        images, labels = augment_normalised(images, labels, aug, generator)
    return images, labels


class StreamLoader:
    """A Loader of a Stream (data.name=shards): batches read front to back by DataLoader workers, a fresh pass
    each epoch, normalised and augmented on the device as Loader's are.

    With a seed it trains: the stream's shards come in an order seeded by (seed, epoch), each process reads
    shards of its own and the same number of full batches (len(self)), shuffled in a buffer seeded by (seed,
    epoch, rank, worker), so an epoch is the same whenever it is read: a run repeats bitwise, and --resume,
    which starts at an epoch boundary, continues as the uninterrupted run would. Without a seed it reads each
    image once, in a fixed order (under torchrun, each process its shards)."""

    def __init__(self, stream: Stream, batching: Batching, info: DataInfo, device: torch.device):
        self.rank, self.world = rank_and_world()
        self.stream, self.batching, self.device = stream, batching, device
        self.normalise = Normalise(info.mean, info.std).to(device)
        self.epoch = 0
        self.length: tuple[Share, int] | None = None  # len(self) for a share: the loop asks every batch

    def set_epoch(self, epoch: int) -> None:
        if self.epoch == 0 and epoch > 1 and self.batching.shuffle_seed is not None and is_main():
            print(f"data: the stream starts at the beginning of epoch {epoch}, which reads as in an uninterrupted "
                  "run (a stream resumes at epoch boundaries only)")
        self.epoch = epoch

    @property
    def num_images(self) -> int:
        return len(self.stream)

    def share(self, is_ordered: bool = False) -> Share:
        """What this process reads this epoch; is_ordered: all of the split in its fixed order, as one process."""
        rank, world, seed = (0, 1, None) if is_ordered else (self.rank, self.world, self.batching.shuffle_seed)
        return Share(self.batching.size, seed, self.epoch, rank, world, self.batching.num_workers,
                     self.device.type == "cuda")

    def __len__(self) -> int:
        share = self.share()
        if self.length is None or self.length[0] != share:
            self.length = share, self.stream.num_batches(share)
        return self.length[1]

    def __iter__(self):
        share = self.share()
        aug = self.batching.augmentation if share.seed is not None else None
        generator = None if aug is None else generator_for(share.seed, self.epoch, self.rank, self.device)
        for images, labels in self.stream.batches(share):
            yield prepared(images.to(self.device, non_blocking=True), labels.to(self.device), self.normalise,
                           (aug, generator))

    def raw_images(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images (len(idx), C, H, W) at positions idx of the order one process evaluates the split in
        (what evaluate() returns per image), on the CPU; read up to the last of them."""
        wanted, found, start = idx.tolist(), {}, 0
        needed = set(wanted)
        for images, _ in self.stream.batches(self.share(is_ordered=True)):
            found.update({k: images[k - start] for k in range(start, start + len(images)) if k in needed})
            start += len(images)
            if start > max(wanted, default=-1):
                break
        return torch.stack([found[k] for k in wanted]) if wanted else torch.zeros(0, *self.stream.image_shape,
                                                                                 dtype=torch.uint8)


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


def num_workers(cfg: DataConfig) -> int:
    return min(4, os.cpu_count() or 1) if cfg.num_workers == "auto" else cfg.num_workers


def eval_batch_size(cfg: TrainConfig, device: torch.device) -> int:
    """auto: without gradients a GPU fits 4x the training batch; a CPU keeps the training batch, since
    bigger batches fall out of its caches (default CNN: 41k images/s at 128, 13k at 500, measured)."""
    if cfg.eval_batch_size != "auto":
        return cfg.eval_batch_size
    return cfg.batch_size * (4 if device.type == "cuda" else 1)


def make_eval_loader(cfg: Config, info: DataInfo, split: str, batch_size: int,
                     device: torch.device) -> Loader | StreamLoader:
    """The 'val' or 'test' split in a fixed order, normalised with the training statistics in info."""
    if split == "val":
        images, labels = load_split(cfg.data, "train")
        if isinstance(images, Stream):  # a stream's source holds its validation split (shards: make_shards.py's)
            images, labels = load_split(cfg.data, "val")
        else:
            _, idx = train_val_split(labels, cfg.data.val_fraction, cfg.run.seed, cfg.data.folds, cfg.data.fold)
            images, labels = subset(images, idx), labels[idx]
    else:
        check_held_out(cfg.data, info.held_out)
        images, labels = load_split(cfg.data, "test")
    check_matches(images, labels, info, cfg.data)
    batching = Batching(batch_size, num_workers=num_workers(cfg.data))
    return StreamLoader(images, batching, info, device) if isinstance(images, Stream) else Loader(
        images, labels, batching, info, device)


def check_matches(images: Images, labels: torch.Tensor | None, info: DataInfo, cfg: DataConfig) -> None:
    """The test split must have the shape and classes the model was trained on (a stream's labels are checked
    as they are read)."""
    expected = (info.in_channels, info.image_size, info.image_size)
    shape = tuple(images.image_shape) if isinstance(images, Stream) else tuple(images[0].shape) if len(images) else ()
    if shape != expected:
        raise UserError(f"data.{cfg.name}: test images are {shape} but the model expects "
                        f"{expected}; use the data settings the model was trained with")
    if labels is None:
        return
    if len(labels) == 0 or (labels.ndim == 1 and int(labels.max()) >= len(info.class_names)):
        raise UserError(f"data.{cfg.name}: test labels do not match the {len(info.class_names)} "
                        "training classes; use the same class folders in train/ and test/")


def normalisation(cfg: Config, images: Images, train_idx: torch.Tensor) -> dict:
    """Per-channel mean and std of (a sample of) the training split. For streamed folders they are
    cached beside the data cache: sampling decodes up to STATS_SAMPLE files (~90 s at 220 files/s)."""
    sample = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE]]
    cache = None if isinstance(images, torch.Tensor) else cache_path(cfg.data, "train")
    if cache is not None:
        split = f"{cfg.data.folds}-{cfg.data.fold}" if cfg.data.folds else cfg.data.val_fraction  # the train part's
        cache = cache.with_name(f"{cache.stem}-stats-{cfg.run.seed}-{split}.pt")
    with local_main_first():
        cached = read_cache(cache, lambda c: valid_stats(c, images)) if cache is not None and cache.is_file() else None
        if cached is not None:
            return cached
        mean, std = channel_stats(decoded(subset(images, sample.sort().values)))
        if cache is not None:
            write_cache({"mean": mean, "std": std}, cache)
        return {"mean": mean, "std": std}


def valid_stats(content: dict, images: Images) -> bool:
    """Cached normalisation statistics: a finite, positive std and a mean per channel of the images."""
    channels = images[0].shape[0]
    mean, std = content["mean"], content["std"]
    return (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == channels
            and all(isinstance(v, float) and math.isfinite(v) for v in mean + std) and min(std) > 0)


def check_crop(cfg: DataConfig, image_size: int) -> None:
    """A crop shifted by up to data.crop_padding pixels: at the image's size or more most crops would be blank."""
    if cfg.augment != "none" and cfg.crop_padding >= image_size:
        raise UserError(f"data.crop_padding={cfg.crop_padding} is at least the {image_size}x{image_size} image, so "
                        f"most random crops would be blank; use at most {max(0, image_size // 2)} "
                        "(4 is usual for 32x32)")


def augmentation(cfg: Config, num_classes: int) -> Augmentation:
    return Augmentation(cfg.data.augment, cfg.data.crop_padding, cfg.data.random_erasing, cfg.train.mixup_alpha,
                        cfg.train.cutmix_alpha, num_classes, cfg.data.flip)


def make_train_loaders(cfg: Config, device: torch.device,
                       stats: tuple[list[float], list[float]] | None = None
                       ) -> tuple[Loader | StreamLoader, Loader | StreamLoader, DataInfo]:
    """Shuffled training and fixed-order validation loaders, and the data info stored in checkpoints.

    stats: the (mean, std) to normalise with, e.g. the pretrained weights' (averaged over channels when
    their channel count differs, e.g. ImageNet's for grey images); None = the train split's."""
    info = describe(cfg.data)
    images, labels = load_split(cfg.data, "train")
    if isinstance(images, Stream):
        return stream_loaders(cfg, images, info, stats, device)
    train_idx, val_idx = train_val_split(labels, cfg.data.val_fraction, cfg.run.seed, cfg.data.folds, cfg.data.fold)
    if stats is None:
        norm = normalisation(cfg, images, train_idx)
        stats = norm["mean"], norm["std"]
    stats = per_channel(stats, info.in_channels)
    counts = label_counts(labels[train_idx], len(info.class_names)).tolist()
    info = replace(info, mean=stats[0], std=stats[1], class_counts=counts, held_out=held_out_names(cfg.data))
    note_small_val(labels[val_idx], info.class_names, cfg.data.val_fraction)
    check_crop(cfg.data, info.image_size)
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


def per_channel(stats: tuple[list[float], list[float]], channels: int) -> tuple[list[float], list[float]]:
    """(mean, std) for the data's channels: averaged over theirs when the count differs (ImageNet's for grey)."""
    if len(stats[0]) == channels:
        return stats
    return tuple([sum(values) / len(values)] * channels for values in stats)


def stream_loaders(cfg: Config, train: Stream, info: DataInfo, stats: tuple[list[float], list[float]] | None,
                   device: torch.device) -> tuple[StreamLoader, StreamLoader, DataInfo]:
    """make_train_loaders for a stream (shards): its source describes the train split's statistics and class
    counts and holds the validation split."""
    mean, std = per_channel(stats or (info.mean, info.std), info.in_channels)
    info = replace(info, mean=mean, std=std)
    check_crop(cfg.data, info.image_size)
    val, _ = load_split(cfg.data, "val")
    workers = num_workers(cfg.data)
    shuffled = Batching(cfg.train.batch_size, cfg.run.seed, augmentation(cfg, len(info.class_names)), workers)
    train_loader = StreamLoader(train, shuffled, info, device)
    len(train_loader)  # a batch size over the split, or fewer shards than processes: refused before any work
    val_loader = StreamLoader(val, Batching(eval_batch_size(cfg.train, device), num_workers=workers), info, device)
    return train_loader, val_loader, info


FEW_VAL_IMAGES = 5  # per class: below this, validation accuracy moves in steps too coarse to pick best.pt by


def note_small_val(val_labels: torch.Tensor, class_names: list[str], fraction: float) -> None:
    """A note when the validation split has fewer than a handful of images of some class."""
    counts = label_counts(val_labels, len(class_names))
    if int(counts.min()) < FEW_VAL_IMAGES:
        fewest, name = int(counts.min()), printable(class_names[int(counts.argmin())])
        print(f"note: the validation split has only {fewest} image{'' if fewest == 1 else 's'} of class {name} "
              f"({len(val_labels)} in all), too few to pick best.pt reliably; raise data.val_fraction (now {fraction})")


def label_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class (K,): of labels (N,), or of multi-label rows (N, K)."""
    return labels.sum(0).long() if labels.ndim == 2 else torch.bincount(labels, minlength=num_classes)
