"""Write a data set as WebDataset tar shards, which data.name=shards reads as a stream: any data.name, chosen with
--config and overrides as for train.py. Each split (train, val, test) becomes shards of --shard-size images (or
megabytes: 100MB), and index.json records what the loader needs (docs/data.md#shards).

    python tools/make_shards.py --out data/shards/digits                        # the embedded digits
    python tools/make_shards.py --out data/shards/mnist --shard-size 10000 data.name=mnist data.root=../shared/datasets
    python tools/make_shards.py --out data/shards/photos --shard-size 100MB --config configs/photos.yaml

then python train.py data.name=shards data.root=data/shards/mnist. val is data.val_fraction of train, held out as
train.py holds it out (stratified, seeded by run.seed), so a run on the shards validates and tests on the images a
run on the source would; train is written in an order shuffled by run.seed. The PNG and JPEG files of folder, csv
and hf sources are kept as they are, other images written as PNG. Each shard is written under a temporary name and
renamed when complete, and index.json lists the finished ones: an interrupted command (Ctrl-C, kill) leaves no
half shard, and the same command again continues where it stopped (other settings are refused).
"""
import argparse
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from engine.cli import make_parser, run_cli  # noqa: E402
from engine.config import Config, load_config  # noqa: E402
from engine.datasets import describe, load_split  # noqa: E402
from engine.datasource import Images  # noqa: E402
from engine.errors import UserError, shown  # noqa: E402
from engine.loaders import label_counts, normalisation, train_val_split  # noqa: E402
from engine.shards import (INDEX_NAME, Index, ShardEntry, image_file, label_file, read_index_file,  # noqa: E402
                           shard_name, webdataset, write_shard)
from engine.storage import make_folder, remove_stale_temporaries, write_text  # noqa: E402

# The data.* keys that decide what the shards hold; a second run must have the same (and run.seed, --shard-size).
CONTENT_KEYS = ("name", "root", "image_size", "channels", "val_fraction", "folds", "fold", "test_fraction",
                "multilabel", "labels", "test_labels", "image_column", "label_column", "label_separator")
TAR_OVERHEAD = 1024  # bytes a sample adds to a shard besides its files: two 512-byte tar headers


@dataclass(frozen=True)
class ShardSize:
    """--shard-size: images per shard, or bytes per shard."""
    text: str  # as given, stored in index.json's settings
    limit: int
    is_bytes: bool


def shard_size(text: str) -> ShardSize:
    """argparse type: N images, or N MB (2^20 bytes each)."""
    number = text[:-2] if text.upper().endswith("MB") else text
    if not number.strip().isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of images (1000) or megabytes (100MB), got {shown(text)}")
    return ShardSize(text, int(number) * (2 ** 20 if number != text else 1), number != text)


def settings_of(cfg: Config, size: ShardSize) -> dict:
    """What the shards depend on, as index.json stores it: a second command must ask for the same."""
    return {"data": {k: v for k, v in asdict(cfg.data).items() if k in CONTENT_KEYS}, "seed": cfg.run.seed,
            "shard_size": size.text}


def existing_index(cfg: Config, out: Path, size: ShardSize) -> Index | None:
    """out's index.json, to continue or keep: it must be of the same settings; None for a new folder."""
    settings = settings_of(cfg, size)
    found = read_index_file(out / INDEX_NAME)
    if found is None:
        if any(out.glob("*.tar")):
            raise UserError(f"{out} holds .tar files but no {INDEX_NAME}: not shards this tool started; give an "
                            "empty or new folder as --out")
        return None
    differ = [key for key in settings if found.settings.get(key) != settings[key]]
    if differ:
        raise UserError(f"{out} holds shards written with other settings ({differ[0]}: "
                        f"{shown(found.settings.get(differ[0]))}, now {shown(settings[differ[0]])}); give another "
                        "--out, or the same settings to continue them")
    done = sum(map(len, found.splits.values()))
    print(f"{out}: {'complete, nothing to do' if found.complete else f'continuing after {done} shards'}")
    return found


def new_index(cfg: Config, out: Path, train: tuple[Images, torch.Tensor, torch.Tensor], size: ShardSize) -> Index:
    """index.json of no shards yet, with the train split's statistics as train.py computes them from the source."""
    images, _, order = train
    info = describe(cfg.data)
    stats = normalisation(cfg, images, order.sort().values)  # train_val_split's train_idx, ascending
    index = Index(info.class_names, info.in_channels, info.image_size, info.multilabel, stats["mean"], stats["std"],
                  settings_of(cfg, size))
    write_text(out / INDEX_NAME, index.to_json())
    return index


def split_parts(cfg: Config) -> dict[str, tuple[Images, torch.Tensor, torch.Tensor]]:
    """split -> (the source split's images and labels, the positions that go into the shards, in order): train in
    an order shuffled by run.seed, val held out of train as train.py holds it out, test as it is."""
    images, labels = load_split(cfg.data, "train")
    train_idx, val_idx = train_val_split(labels, cfg.data.val_fraction, cfg.run.seed, cfg.data.folds, cfg.data.fold)
    order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(cfg.run.seed))]
    test_images, test_labels = load_split(cfg.data, "test")
    return {"train": (images, labels, order), "val": (images, labels, val_idx),
            "test": (test_images, test_labels, torch.arange(len(test_labels)))}


def contents(part: tuple[Images, torch.Tensor, torch.Tensor], size: ShardSize,
             multilabel: bool) -> Iterator[tuple[list[dict], list[int]]]:
    """Each shard's samples ({'__key__': position in the source split, 'png': ..., 'cls': ...}) and positions."""
    images, labels, order = part
    samples, positions, used = [], [], 0
    for i in order.tolist():
        ext, data = image_file(images, i)
        label_ext, label_data = label_file(labels[i], multilabel)
        weight = len(data) + len(label_data) + TAR_OVERHEAD if size.is_bytes else 1
        if samples and used + weight > size.limit:
            yield samples, positions
            samples, positions, used = [], [], 0
        samples.append({"__key__": f"{i:08d}", ext: data, label_ext: label_data})
        positions.append(i)
        used += weight
    if samples:
        yield samples, positions


def write_split(out: Path, index: Index, split: str, part: tuple, size: ShardSize) -> None:
    """The split's shards after those index.json lists, each listed there once it is renamed into place."""
    images, labels, order = part
    done = index.splits[split]
    start = sum(entry.count for entry in done)
    bar = tqdm(total=len(order), initial=start, desc=split, unit="img", leave=False, disable=None)
    for samples, positions in contents((images, labels, order[start:]), size, index.multilabel):
        name = shard_name(split, len(done))
        write_shard(out / name, samples)
        counts = label_counts(labels[positions], len(index.class_names)).tolist()
        done.append(ShardEntry(name, len(samples), counts))
        write_text(out / INDEX_NAME, index.to_json())
        bar.update(len(samples))
    bar.close()
    print(f"{split}: {index.count(split)} images in {len(done)} shards")


def make_shards(cfg: Config, out: Path, size: ShardSize) -> Index:
    """Write (or finish) the shards of cfg's data set in out; returns their index."""
    if cfg.data.name == "shards":
        raise UserError("data.name=shards: make_shards.py writes shards from another source (digits, mnist, folder, "
                        "csv, hf, ...); train.py reads these with data.name=shards")
    webdataset()
    out = make_folder(out, "--out")
    remove_stale_temporaries(out, only_dead=True)  # shards a killed command left half written
    cfg = replace(cfg, data=replace(cfg.data, max_memory_mb=0))  # file sources give their files, kept as they are
    index = existing_index(cfg, out, size)
    if index is None or not index.complete:
        parts = split_parts(cfg)
        index = index or new_index(cfg, out, parts["train"], size)
        try:
            for split, part in parts.items():
                write_split(out, index, split, part, size)
        except KeyboardInterrupt:
            print(f"interrupted: the {sum(map(len, index.splits.values()))} finished shards are kept; run the same "
                  "command again to continue")
            raise
        index.complete = True
        write_text(out / INDEX_NAME, index.to_json())
    print(f"wrote {out}: train with data.name=shards data.root={out}")
    return index


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--out", required=True, metavar="FOLDER",
                        help="the folder for index.json and the shards: data.root for data.name=shards")
    parser.add_argument("--shard-size", type=shard_size, default=shard_size("1000"), metavar="N|NMB",
                        help="images per shard (default 1000), or megabytes per shard: 100MB")
    args = parser.parse_args(argv)
    make_shards(load_config(args.config, args.overrides), Path(args.out), args.shard_size)


if __name__ == "__main__":
    run_cli(main)
