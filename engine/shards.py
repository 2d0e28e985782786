"""WebDataset tar shards (data.name=shards): a data set as the world shares it, read front to back as a stream,
so it may be bigger than one machine's memory or disk. tools/make_shards.py writes them from any other source:

    DIR/index.json          class names, channels, image size, multilabel, the train split's mean and std, and each
                            split's shards with their image and class counts: the loader reads it, never scans
    DIR/train-000000.tar    per image <key>.png or <key>.jpg (the source's PNG or JPEG file as it was) and
    DIR/val-000000.tar      <key>.cls, its class index as text (multi-label: <key>.json, a list of class indices)
    DIR/test-000000.tar

data.root is DIR (a folder, or the http(s) URL of one), or a brace pattern of train shards with index.json beside
them: DIR/train-{000000..000009}.tar, https://host/DIR/train-{000000..000009}.tar, or a command that writes a
shard to its stdout, pipe:curl -s https://host/DIR/train-{000000..000009}.tar. The val and test shards are the
index's, each addressed as the pattern with its file name replaced.

Training reads the same number of full batches on every process in every epoch, train images // (processes x
batch size): each epoch the train shards are put in an order seeded by (run.seed, epoch), process r takes every
world-th from the r-th, its DataLoader workers split those (webdataset's split_by_worker) and yield batches in
proportion to their images, and each worker shuffles its samples in a buffer of data.shuffle_buffer seeded by
(run.seed, epoch, rank, worker). A worker whose shards run out before its batches do reads them again. An epoch
is the same whenever it is read, so --resume continues exactly at an epoch boundary. Evaluation reads each image
once.
"""
from __future__ import annotations

import bisect
import functools
import io
import itertools
import json
import math
import random
import re
import tarfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from engine.datasource import DataInfo, Images, Share, Source, Stream, read_image
from engine.errors import UserError, printable, shown
from engine.storage import replacing

if TYPE_CHECKING:
    from engine.config import DataConfig

INDEX_NAME = "index.json"
INDEX_FORMAT = 1  # index.json's "format"; another is refused
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")  # a sample's image: the first of these files it has
SHARD_NAME = re.compile(r"[\w-]+(\.[\w-]+)*\.tar")  # a plain file name: no folder, no brace left
TAR_MTIME = 946_684_800  # every file's time in a shard (2000-01-01): the same command writes the same bytes
SCHEME = re.compile(r"^[A-Za-z][\w+.-]*:")  # http:, https:, pipe:, file: ... (a local path has none)


def webdataset():
    """The webdataset package, or a one-line error saying what to install."""
    try:
        import webdataset
    except ImportError:
        raise UserError("data.name=shards reads WebDataset tar shards with the webdataset package, which is not "
                        "installed; pip install 'webdataset>=0.2.100' (it is in requirements-extras.txt)") from None
    return webdataset


# --- index.json ----------------------------------------------------------------------------------------------

@dataclass
class ShardEntry:
    """One shard of a split, as index.json lists it."""
    name: str  # its file name, beside index.json
    count: int  # images in it
    class_counts: list[int]  # images of each class in it (multi-label: with each label)


@dataclass
class Index:
    """index.json: what the loader needs to read the shards without scanning them."""
    class_names: list[str]
    channels: int
    image_size: int  # the side images are decoded to (the source's data.image_size)
    multilabel: bool
    mean: list[float]  # the train split's, per channel, on the 0..1 scale (as train.py computes them)
    std: list[float]
    settings: dict  # what tools/make_shards.py was asked (source keys, seed, shard size): a rerun must match
    splits: dict[str, list[ShardEntry]] = field(default_factory=lambda: {split: [] for split in SPLITS})
    complete: bool = False  # False while tools/make_shards.py writes: the shards finished so far

    def to_json(self) -> str:
        return json.dumps({"format": INDEX_FORMAT, **asdict(self)}, indent=1) + "\n"

    def count(self, split: str) -> int:
        return sum(entry.count for entry in self.splits[split])

    def class_counts(self, split: str) -> list[int]:
        return [sum(column) for column in zip(*(entry.class_counts for entry in self.splits[split]))]


def parse_index(text: str, where: str) -> Index:
    """index.json's text, checked: a UserError naming the first thing wrong."""
    def bad(why: str) -> UserError:
        return UserError(f"{where} is not an index of shards tools/make_shards.py wrote ({why}); write the shards "
                         "again with tools/make_shards.py")
    try:
        raw = json.loads(text)
    except ValueError:
        raise bad("not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
        raise bad(f"format {shown(raw.get('format') if isinstance(raw, dict) else None)}, not {INDEX_FORMAT}")
    names, channels = raw.get("class_names"), raw.get("channels")
    checks = [
        (lambda: is_list_of(names, str) and len(names) >= 2, "class_names: two or more names"),
        (lambda: channels in (1, 3) and type(channels) is int, "channels: 1 or 3"),
        (lambda: type(raw.get("image_size")) is int and raw["image_size"] >= 1, "image_size: a positive integer"),
        (lambda: isinstance(raw.get("multilabel"), bool) and isinstance(raw.get("complete"), bool),
         "multilabel and complete: true or false"),
        (lambda: all(is_list_of(raw.get(k), (int, float)) and len(raw[k]) == channels for k in ("mean", "std"))
         and min(raw["std"]) > 0, "mean and std: a number per channel, std above 0"),
        (lambda: isinstance(raw.get("settings"), dict), "settings: an object"),
        (lambda: isinstance(raw.get("splits"), dict) and set(raw["splits"]) == set(SPLITS)
         and all(isinstance(v, list) for v in raw["splits"].values()), "splits: train, val and test, lists of shards"),
        (lambda: all(is_entry(e, len(names)) for v in raw["splits"].values() for e in v),
         "each shard: a file name, its image count (1 or more) and a count per class"),
    ]
    for check, why in checks:
        if not check():
            raise bad(why)
    splits = {split: [ShardEntry(**e) for e in raw["splits"][split]] for split in SPLITS}
    return Index(names, channels, raw["image_size"], raw["multilabel"], [float(v) for v in raw["mean"]],
                 [float(v) for v in raw["std"]], raw["settings"], splits, raw["complete"])


def is_list_of(value: object, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


def is_entry(entry: object, num_classes: int) -> bool:
    return (isinstance(entry, dict) and set(entry) == {"name", "count", "class_counts"}
            and isinstance(entry["name"], str) and SHARD_NAME.fullmatch(entry["name"]) is not None
            and type(entry["count"]) is int and entry["count"] >= 1 and is_list_of(entry["class_counts"], int)
            and len(entry["class_counts"]) == num_classes and min(entry["class_counts"]) >= 0)


# --- where the shards are ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Address:
    """Where data.root's shards are: the text around a file name, and the train shards a pattern names."""
    before: str
    after: str
    train: tuple[str, ...] | None  # a brace pattern's file names; None: the index's train shards

    def of(self, name: str) -> str:
        """The path, URL or pipe: command that reads the file `name` beside the shards."""
        return f"{self.before}{name}{self.after}"

    @property
    def is_local(self) -> bool:
        return SCHEME.match(self.before) is None


def address(root: str) -> Address:
    """data.root as an Address: a folder (or the URL of one), or a brace pattern of train shards (its first word
    with braces or ending in .tar; the braces in the file name)."""
    word = next((m for m in re.finditer(r"\S+", root) if "{" in m.group() or m.group().endswith(".tar")), None)
    if word is None:
        if root.startswith("pipe:"):
            raise UserError(f"data.root: {shown(root)} names no shards; a pipe: command names the train shards, e.g. "
                            "pipe:curl -s https://host/DIR/train-{000000..000009}.tar")
        return Address(root.rstrip("/") + "/", "", None)
    brace = word.group().find("{")
    start = root.rfind("/", word.start(), word.start() + brace if brace >= 0 else word.end()) + 1 or word.start()
    from braceexpand import braceexpand  # installed with webdataset

    names = tuple(braceexpand(root[start:word.end()]))
    odd = next((name for name in names if not SHARD_NAME.fullmatch(name)), None)
    if odd is not None:
        raise UserError(f"data.root: the pattern {shown(root)} gives {shown(odd)}, not a shard's file name; put the "
                        "braces in the file name only: DIR/train-{000000..000009}.tar")
    return Address(root[:start], root[word.end():], names)


_last: dict = {}  # the last open_index() result and what it was read from: a run asks for it several times


def open_index(cfg: DataConfig) -> tuple[Address, Index]:
    """data.root's address and its finished index.json, read once per state of the file."""
    where = address(cfg.root)
    url = where.of(INDEX_NAME)
    key = (cfg.root, (stamp(Path(url)) if where.is_local else "remote"))
    if key[1] is not None and _last.get("key") == key:
        return _last["value"]
    index = parse_index(index_text(where), url)
    if not index.complete:
        done = sum(map(len, index.splits.values()))
        raise UserError(f"{url}: tools/make_shards.py has not finished these shards ({done} written so far); run the "
                        "same command again to finish them")
    empty = [split for split in SPLITS if not index.splits[split]]
    if empty:
        raise UserError(f"{url} lists no {empty[0]} shards; write the shards again with tools/make_shards.py")
    _last.update(key=key, value=(where, index))
    return where, index


def stamp(path: Path) -> tuple[int, int] | None:
    """A local file's modification time and size; None when it is not there."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def index_text(where: Address) -> str:
    """index.json's text: from the local folder, or through webdataset's gopen (http, pipe: commands)."""
    url = where.of(INDEX_NAME)
    if where.is_local:
        if not Path(url).is_file():
            raise no_index(where)
        try:
            return Path(url).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{url} is not readable ({type(err).__name__}); write the shards again") from None
    try:
        with webdataset().gopen(url) as f:
            return f.read().decode("utf-8")
    except Exception as err:  # curl, a pipe's command, the network: each raises its own types
        raise UserError(f"{named(url)} could not be read ({type(err).__name__}: {first_line(err)}); check the "
                        "address and the connection (the shards need the index.json make_shards.py wrote beside "
                        "them)") from None


def no_index(where: Address) -> UserError:
    """The error for a local data.root without index.json, saying what is there instead."""
    folder = Path(where.of(INDEX_NAME)).parent
    if where.train is not None:
        return UserError(f"data.root: no {INDEX_NAME} beside the shards of the pattern (looked for "
                         f"{where.of(INDEX_NAME)}); it holds what the loader needs: the class names, channels, image "
                         "size and each shard's image count: write the shards with tools/make_shards.py, which "
                         "writes it")
    if not folder.is_dir():
        return UserError(f"data.root: {folder} is not a folder; point it at shards written by tools/make_shards.py "
                         "(a folder with index.json) or at a brace pattern of them")
    tars = list(folder.glob("*.tar"))
    if tars:
        return UserError(f"data.root: {folder} holds {len(tars)} .tar files but no {INDEX_NAME}, which the loader "
                         "reads instead of scanning them (class names, channels, image size, each shard's image "
                         "count); write the shards with tools/make_shards.py, which writes both")
    return UserError(f"data.root: {folder} holds no {INDEX_NAME} and no shards; write them there with "
                     f"python tools/make_shards.py --out {folder}")


def first_line(err: BaseException) -> str:
    """An exception's message (webdataset appends the file object and URL to its args), its first line, short."""
    text = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
    return printable((text.strip().splitlines() or [""])[0].split(" @ ")[0])[:80]


def named(url: str) -> str:
    """A shard's address for a message: on one line, and not a screenful."""
    text = printable(url)
    return text if len(text) <= 200 else f"{text[:200]}..."


def split_entries(where: Address, index: Index, split: str) -> list[ShardEntry]:
    """The split's shards: the index's, or for train those a pattern names (each must be one of the index's)."""
    if split != "train" or where.train is None:
        return index.splits[split]
    known = {entry.name: entry for entry in index.splits["train"]}
    unknown = [name for name in where.train if name not in known]
    if unknown:
        listed = index.splits["train"]
        matched = f"{len(unknown)} of its {len(where.train)} names are not" if len(unknown) < len(where.train) else (
            "it matches none of them")
        raise UserError(f"data.root: the pattern names {shown(unknown[0])}, which is not a train shard of "
                        f"{where.of(INDEX_NAME)} ({matched}; they are {listed[0].name} to {listed[-1].name})")
    return [known[name] for name in where.train]


def check_present(urls: list[str], split: str) -> None:
    """Every local shard of the split is there."""
    missing = [url for url in urls if not Path(url).is_file()]
    if missing:
        how_many = "none" if len(missing) == len(urls) else f"{len(urls) - len(missing)}"
        raise UserError(f"{missing[0]} is missing: {how_many} of the {len(urls)} {split} shards index.json lists "
                        "are there; copy them back or write the shards again with tools/make_shards.py")


# --- reading -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decoder:
    """A sample of a shard (its files' bytes by extension) -> (uint8 image (C, H, W), label)."""
    channels: int
    size: int
    num_classes: int
    multilabel: bool
    max_pixels: int

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int | torch.Tensor]:
        name = f"{sample.get('__url__')} sample {printable(sample['__key__'])}"
        ext = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if ext is None:
            files = ", ".join(sorted(k for k in sample if not k.startswith("__")))
            raise UserError(f"{name} has no image (.{', .'.join(IMAGE_EXTENSIONS)}; it has {shown(files)}); write the "
                            "shards with tools/make_shards.py")
        image = read_image(io.BytesIO(sample[ext]), self.channels, self.size, self.max_pixels, f"{name}.{ext}")
        return image, self.label(sample, name)

    def label(self, sample: dict, name: str) -> int | torch.Tensor:
        """.cls: a class index as text; multi-label .json: a list of them, as a (K,) row of 0/1."""
        ext = "json" if self.multilabel else "cls"
        try:
            value = json.loads(sample[ext]) if ext in sample else None
        except (ValueError, UnicodeDecodeError):
            value = None
        indices = value if self.multilabel else [value]
        if not is_list_of(indices, int) or not all(0 <= k < self.num_classes for k in indices):
            kind = "a list of class indices" if self.multilabel else "a class index"
            raise UserError(f"{name}: its .{ext} is not {kind} from 0 to {self.num_classes - 1} (found "
                            f"{shown(sample.get(ext))}); write the shards again with tools/make_shards.py")
        if not self.multilabel:
            return indices[0]
        row = torch.zeros(self.num_classes)
        row[indices] = 1.0
        return row


def collate(samples: list[tuple[torch.Tensor, int | torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*samples)
    return torch.stack(images), torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)


def shard_samples(url: str, expected: int) -> Iterator[dict]:
    """One shard's samples ({'__key__', 'png': bytes, 'cls': bytes, ...}), read by webdataset; a damaged or
    missing shard, or one whose image count is not the index's, is a UserError naming it."""
    wds, found = webdataset(), 0
    try:
        for sample in wds.tarfile_samples([{"url": url}]):
            found += 1
            yield sample
    except (tarfile.TarError, OSError, ValueError, EOFError) as err:  # damaged, cut short, missing, a failed pipe
        raise UserError(f"{named(url)} is not a readable tar shard ({type(err).__name__}: {first_line(err)}); "
                        "write it again with tools/make_shards.py") from None
    if found != expected:
        raise UserError(f"{named(url)} holds {found} images but index.json counts {expected}; it was cut short "
                        "or replaced: write the shards again with tools/make_shards.py")


def worker_of() -> tuple[int, int]:
    """This DataLoader worker's id and their number ((0, 1) in the process itself)."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def read_shards(src: Iterable[dict], counts: dict[str, int], is_cycled: bool) -> Iterator[dict]:
    """Pipeline stage: the samples of the shards in src ({'url': ...}); cycled: again and again (training)."""
    urls = [item["url"] for item in src]
    while urls:
        for url in urls:
            yield from shard_samples(url, counts[url])
        if not is_cycled:
            return


def shuffled(src: Iterator[dict], buffer: int, seed: tuple[int, int, int]) -> Iterator[dict]:
    """Pipeline stage: webdataset's shuffle buffer, seeded by (run.seed, epoch, rank) and the worker."""
    rng = random.Random("|".join(map(str, (*seed, worker_of()[0]))))  # a str seed: the same in every process
    yield from webdataset().shuffle(buffer, initial=buffer, rng=rng)(src)


def first(src: Iterator[dict], quotas: list[int]) -> Iterator[dict]:
    """Pipeline stage: this worker's share of the epoch's images."""
    yield from itertools.islice(src, quotas[worker_of()[0]])


def by_key(src: Iterator[dict], rank: int, world: int) -> Iterator[dict]:
    """Pipeline stage: the samples whose key hashes to this process (evaluation with fewer shards than processes)."""
    return (sample for sample in src if zlib.crc32(sample["__key__"].encode()) % world == rank)


@dataclass
class Plan:
    """What one process reads in one pass: its shards (positions in the split's list, in reading order), the
    DataLoader workers that share them (worker w reads shards[w::workers], as split_by_worker deals them), the
    images each worker yields (training; None: every image of its shards once), and whether processes split the
    images by key (evaluation with fewer shards than processes)."""
    shards: list[int]
    workers: int  # DataLoader worker processes; 0: the process itself reads
    quotas: list[int] | None = None
    is_by_key: bool = False

    def groups(self) -> list[list[int]]:
        return [self.shards[w::max(1, self.workers)] for w in range(max(1, self.workers))]


def reading_plan(counts: list[int], share: Share) -> Plan:
    """The Plan of one process: for training, a seeded order of the shards dealt out to the processes and a fixed
    number of full batches, train images // (processes x batch size), for each; for evaluation the shards in order."""
    if share.seed is None:
        is_by_key = len(counts) < share.world  # too few shards to give each process its own
        shards = list(range(len(counts))) if is_by_key else list(range(share.rank, len(counts), share.world))
        return Plan(shards, min(share.num_workers, len(shards)), None, is_by_key)
    batches = sum(counts) // (share.world * share.batch_size)
    if batches == 0:
        raise UserError(f"train.batch_size {share.batch_size} x {share.world} process(es) is more than the "
                        f"{sum(counts)} training images; lower train.batch_size")
    if len(counts) < share.world:
        raise UserError(f"the train split has {len(counts)} shards, fewer than the {share.world} processes, each of "
                        "which reads shards of its own; write more, smaller shards (tools/make_shards.py --shard-size)")
    order = torch.randperm(len(counts), generator=torch.Generator().manual_seed(
        (share.seed * 100_003 + share.epoch) % 2 ** 64)).tolist()  # the same on every process
    mine = order[share.rank::share.world]
    plan = Plan(mine, min(share.num_workers, len(mine)))
    images = [sum(counts[i] for i in group) for group in plan.groups()]
    plan.quotas = [b * share.batch_size for b in proportional(batches, images)]
    return plan


def proportional(total: int, weights: list[int]) -> list[int]:
    """total cut into whole parts in proportion to weights, the largest remainders rounded up."""
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % whole))
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


@dataclass
class ShardSplit(Stream):
    """One split of the shards, read with webdataset: data.name=shards' images and labels."""
    urls: list[str]
    counts: list[int]  # images in each shard, from index.json
    image_shape: tuple[int, int, int]
    decoder: Decoder
    buffer: int  # data.shuffle_buffer
    positions: list[int] | None = None  # select(): only these positions of the stored order

    def __len__(self) -> int:
        return sum(self.counts) if self.positions is None else len(self.positions)

    def __iter__(self) -> Iterator[torch.Tensor]:
        wanted, chosen, start = self.positions, set(self.positions or ()), 0
        for url, count in zip(self.urls, self.counts):
            next_wanted = 0 if wanted is None else bisect.bisect_left(wanted, start)
            if wanted is None or (next_wanted < len(wanted) and wanted[next_wanted] < start + count):  # else skip it
                for offset, sample in enumerate(shard_samples(url, count)):
                    if wanted is None or start + offset in chosen:
                        yield self.decoder(sample)[0]
            start += count

    def select(self, idx: torch.Tensor) -> ShardSplit:
        chosen = idx.tolist() if self.positions is None else [self.positions[i] for i in idx.tolist()]
        return replace(self, positions=sorted(chosen))

    def num_batches(self, share: Share) -> int:
        plan = reading_plan(self.counts, share)
        if plan.quotas is not None:
            return sum(plan.quotas) // share.batch_size
        world = share.world if plan.is_by_key else 1  # by key: about 1/world of each worker's images
        return sum(math.ceil(sum(self.counts[i] for i in group) / world / share.batch_size)
                   for group in plan.groups())

    def batches(self, share: Share) -> torch.utils.data.DataLoader:
        wds = webdataset()
        plan = reading_plan(self.counts, share)
        is_training = plan.quotas is not None
        counts = {self.urls[i]: self.counts[i] for i in plan.shards}
        stages = [wds.SimpleShardList([self.urls[i] for i in plan.shards]), wds.split_by_worker,
                  functools.partial(read_shards, counts=counts, is_cycled=is_training)]
        if is_training:  # shuffled before decoding: the buffer holds the files' bytes
            stages += [functools.partial(shuffled, buffer=self.buffer, seed=(share.seed, share.epoch, share.rank)),
                       functools.partial(first, quotas=plan.quotas)]
        elif plan.is_by_key:
            stages.append(functools.partial(by_key, rank=share.rank, world=share.world))
        stages += [functools.partial(map, self.decoder),
                   wds.batched(share.batch_size, collation_fn=collate, partial=not is_training)]
        return torch.utils.data.DataLoader(wds.DataPipeline(*stages), batch_size=None, num_workers=plan.workers,
                                           pin_memory=share.pin_memory)


# --- the source ----------------------------------------------------------------------------------------------

class Shards(Source):
    """data.name=shards: WebDataset tar shards and their index.json, written by tools/make_shards.py."""
    reads = ("root", "max_pixels", "num_workers", "multilabel", "shuffle_buffer")
    holds_val = True

    def describe(self, cfg: DataConfig) -> DataInfo:
        webdataset()
        _, index = open_index(cfg)
        check_settings(cfg, index)
        return DataInfo(index.channels, index.image_size, index.class_names, mean=index.mean, std=index.std,
                        class_counts=index.class_counts("train"), multilabel=index.multilabel)

    def load(self, cfg: DataConfig, split: str) -> tuple[ShardSplit, None]:
        where, index = open_index(cfg)
        entries = split_entries(where, index, split)
        urls = [where.of(entry.name) for entry in entries]
        if where.is_local:
            check_present(urls, split)
        decoder = Decoder(index.channels, index.image_size, len(index.class_names), index.multilabel, cfg.max_pixels)
        shape = (index.channels, index.image_size, index.image_size)
        return ShardSplit(urls, [entry.count for entry in entries], shape, decoder, cfg.shuffle_buffer), None

    def files(self, cfg: DataConfig, split: str) -> tuple[Path, list[Path]]:
        where, index = open_index(cfg)
        if not where.is_local:
            raise FileNotFoundError(cfg.root)  # on another machine: the card names no files
        return Path(where.of(INDEX_NAME)).parent, [Path(where.of(entry.name)) for entry in index.splits[split]]

    def where(self, cfg: DataConfig) -> str:
        try:
            _, index = open_index(cfg)
        except (UserError, OSError):
            return super().where(cfg)
        counts = " / ".join(f"{index.count(split)} {split}" for split in SPLITS)
        source = index.settings.get("data", {}).get("name", "another source")
        return f"from data.root {cfg.root}: WebDataset shards written from data.name={source} ({counts} images)"


def check_settings(cfg: DataConfig, index: Index) -> None:
    """What a stream of shards cannot do, refused before any work."""
    if cfg.multilabel != index.multilabel:
        kind = "multi-label" if index.multilabel else "single-label"
        raise UserError(f"data.multilabel={str(cfg.multilabel).lower()}, but the shards in {shown(cfg.root)} are "
                        f"{kind}; set data.multilabel={str(index.multilabel).lower()}")
    if cfg.folds:
        raise UserError("data.folds: shards hold one validation split, the one tools/make_shards.py wrote; write a "
                        "set of shards per fold (make_shards.py data.folds=K data.fold=k), or cross-validate on the "
                        "source itself")
    if cfg.sampler == "balanced":
        raise UserError("data.sampler=balanced draws images by their position, which a stream of shards does not "
                        "have; use data.sampler=shuffle with data.name=shards (train.class_weights=balanced weighs "
                        "classes instead)")
    if cfg.flip == "alternate":
        raise UserError("data.flip=alternate mirrors each image by its position in the split, which a stream of "
                        "shards does not have; use data.flip=random with data.name=shards")


# --- writing (tools/make_shards.py) --------------------------------------------------------------------------

def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def image_file(images: Images, i: int) -> tuple[str, bytes]:
    """The i-th image as a file for a shard: (extension, bytes). A PNG or JPEG file of the source is kept as it
    is; anything else (decoded tensors, other formats) is written as a PNG of the decoded image."""
    data = None if isinstance(images, torch.Tensor) else images.encoded(i)
    if data is not None and data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", data
    if data is not None and data.startswith(b"\xff\xd8\xff"):
        return "jpg", data
    image = images[i].numpy()  # uint8 (C, H, W), decoded
    buffer = io.BytesIO()
    Image.fromarray(image[0] if len(image) == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))).save(
        buffer, "PNG")
    return "png", buffer.getvalue()


def label_file(label: torch.Tensor, multilabel: bool) -> tuple[str, bytes]:
    """A label as a shard's file: ('cls', b'3'), or multi-label ('json', b'[0, 4]')."""
    if multilabel:
        return "json", json.dumps(label.nonzero().flatten().tolist()).encode()
    return "cls", str(int(label)).encode()


def write_shard(path: Path, samples: Iterable[dict]) -> None:
    """A tar shard of samples ({'__key__': ..., ext: bytes}), written under a temporary name and renamed when
    complete: an interrupted write leaves no shard."""
    wds = webdataset()
    with replacing(path) as f:
        with wds.TarWriter(f, encoder=False, mtime=TAR_MTIME) as sink:
            for sample in samples:
                sink.write(sample)


def read_index_file(path: Path) -> Index | None:
    """A local index.json, finished or not; None when there is none."""
    if not path.is_file():
        return None
    return parse_index(path.read_text(encoding="utf-8"), str(path))
