"""Hugging Face data sets (data.name=hf), read with pyarrow alone: the datasets library is not needed to train.
data.root is a folder in one of the two layouts the Hub's tools write, or hf://NAME (engine/hfdata.py downloads
it once with the datasets library, when that is installed and online):

    a snapshot of the Hub repository                      a folder save_to_disk wrote
    (huggingface-cli download --repo-type dataset ...)    (load_dataset(NAME).save_to_disk(DIR))
    DIR/data/train-00000-of-00002.parquet                 DIR/dataset_dict.json   {"splits": ["train", "test"]}
    DIR/data/test-00000-of-00001.parquet                  DIR/train/data-00000-of-00001.arrow  (Arrow IPC stream)
    (or DIR/train-*.parquet, DIR/train/*.parquet,         DIR/train/dataset_info.json, state.json
     DIR/<config>/... when there is one config)           (or one split: DIR/state.json, DIR/data-*.arrow)

A row holds an image (the Image feature: struct<bytes, path>, a PNG or JPEG file's bytes) and a label: a
ClassLabel's index, or a list of them (multi-label). The class names are in the features the datasets library
keeps in each file's schema metadata (key b"huggingface") and in dataset_info.json. The test split is the first
labelled one of TEST_SPLITS; validation is a seeded share of train (data.val_fraction), as for every source.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from engine.csvdata import class_names as sorted_names
from engine.datasource import DataInfo, Images, Source, cached, folder_size, read_image, scan
from engine.errors import UserError, printable, shown
from engine.folders import held_out_mask
from engine.storage import make_folder, replacing

if TYPE_CHECKING:
    from engine.config import DataConfig

HF_PREFIX = "hf://"
DOWNLOADS = Path("data") / "hf"  # where data.root=hf://NAME is saved, relative to the working folder
TEST_SPLITS = ("test", "validation", "valid", "val")  # the test split: the first of these with labels
SPLIT_FOLDERS = ("train",) + TEST_SPLITS  # sub-folders of parquet files taken as splits (others are configs)
IMAGE_COLUMNS = ("image", "img")  # data.image_column=auto: the first found, else the column of the Image feature
METADATA_KEY = b"huggingface"  # the datasets library's features, in each file's schema metadata
UNLABELLED = -1  # the datasets library's label of an image without one (the Hub's unlabelled test splits)
BATCH_ROWS = 256  # rows read from a parquet file at a time


def pyarrow():
    """pyarrow with its parquet module, or a one-line error saying what to install."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 (pyarrow.parquet is used as an attribute)
    except ImportError:
        raise UserError("data.name=hf reads parquet and Arrow files with pyarrow, which is not installed; "
                        "pip install 'pyarrow>=15' (it is in requirements-extras.txt)") from None
    return pyarrow


# --- where the files are -------------------------------------------------------------------------------------

def local_root(cfg: DataConfig, fetch: bool = True) -> Path:
    """data.root as a folder: itself, or for hf://NAME the folder it is saved in (downloaded first if fetch)."""
    if not cfg.root.startswith(HF_PREFIX):
        return Path(cfg.root)
    name = cfg.root[len(HF_PREFIX):].removeprefix("datasets/").strip("/")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name):
        raise UserError(f"data.root: {shown(cfg.root)} is not hf://NAME or hf://OWNER/NAME of a Hub data set")
    target = DOWNLOADS / name.replace("/", "--")
    if not target.is_dir():
        if not fetch:
            raise FileNotFoundError(target)  # not on this machine (yet): callers treat it as absent
        download(name, target)
    return target


def download(name: str, target: Path) -> None:
    """hf://NAME: load_dataset(NAME).save_to_disk(target) with the datasets library, when installed and online."""
    by_hand = (f"download it once where datasets is installed and online: python -c \"from datasets import "
               f"load_dataset; load_dataset('{name}').save_to_disk('{target}')\" (or huggingface-cli download "
               f"--repo-type dataset {name} --local-dir {target}), then set data.root={target}")
    try:
        import datasets
    except ImportError:
        raise UserError(f"data.root=hf://{name} downloads with the datasets package, which is not installed; "
                        f"pip install datasets, or {by_hand}") from None
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        make_folder(target.parent, "data.root")
        datasets.load_dataset(name).save_to_disk(str(partial))
    except Exception as err:  # offline, a wrong name, a gated set, a full disk: the library raises many types
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"data.root=hf://{name}: the download failed ({type(err).__name__}: "
                        f"{shown(first_line(err), 80)}); check the name and the connection, or {by_hand}") from None
    try:
        partial.replace(target)
    except OSError:  # another process saved it first
        shutil.rmtree(partial, ignore_errors=True)


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


@dataclass
class Layout:
    """The splits found in a folder: each one's files in row order."""
    root: Path
    kind: str  # parquet | arrow (save_to_disk)
    splits: dict[str, list[Path]]


def layout(root: Path) -> Layout:
    """The splits of data.root: a save_to_disk folder (dataset_dict.json, or state.json for one split, which is
    train) or parquet files."""
    if not root.is_dir():
        raise UserError(f"data.root: {root} is not a folder; point it at a Hugging Face data set (its parquet "
                        "files as the Hub holds them, or a save_to_disk folder), or use hf://NAME")
    if (root / "dataset_dict.json").is_file():
        names = read_json(root / "dataset_dict.json").get("splits")
        if not isinstance(names, list) or not names or not all(is_split_name(n) for n in names):
            raise UserError(f"{root / 'dataset_dict.json'} lists no splits (expected {{\"splits\": [\"train\", "
                            "\"test\"]}}); save the data set again with save_to_disk")
        return Layout(root, "arrow", {name: arrow_files(root / name) for name in names})
    if (root / "state.json").is_file():
        return Layout(root, "arrow", {"train": arrow_files(root)})
    return Layout(root, "parquet", parquet_splits(root))


def is_split_name(name: object) -> bool:
    return isinstance(name, str) and re.fullmatch(r"\w+(\.\w+)*", name) is not None  # the datasets library's rule


def read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON ({type(err).__name__}); save the data set again") from None
    if not isinstance(found, dict):
        raise UserError(f"{path} is not a JSON object; save the data set again")
    return found


def arrow_files(folder: Path) -> list[Path]:
    """A save_to_disk split's Arrow files (data-00000-of-00002.arrow, ...), in order."""
    files = sorted(f for f in scan(folder) if f.is_file() and f.suffix == ".arrow") if folder.is_dir() else []
    if not files:
        raise UserError(f"{folder} holds no .arrow files; a save_to_disk folder has <split>/data-00000-of-00001.arrow "
                        "for each split dataset_dict.json lists: save the data set again")
    return files


def parquet_splits(root: Path) -> dict[str, list[Path]]:
    """Parquet files by split, in data.root/data/ (the Hub's layout) or data.root; in its one config folder if
    those hold none."""
    folder = root / "data" if (root / "data").is_dir() else root
    found = split_files(folder)
    configs = [d for d in scan(folder) if d.is_dir() and split_files(d)] if not found else []
    if len(configs) == 1:
        return split_files(configs[0])
    if not found:
        hint = (f"it has configs {', '.join(d.name for d in configs[:5])}: set data.root={configs[0]} (or another)"
                if configs else "download the data set there (docs/data.md#hugging-face-data)")
        raise UserError(f"data.root: {root} holds no parquet files (data/train-00000-of-00001.parquet, ...) and no "
                        f"dataset_dict.json; {hint}")
    return found


def split_files(folder: Path) -> dict[str, list[Path]]:
    """folder's parquet files by split: a file's split is its name up to the first - or . (train-00000-of-00002,
    test.parquet); a sub-folder named for a split (train/, test/, ...) holds that split's files."""
    splits: dict[str, list[Path]] = {}
    for entry in scan(folder):
        if entry.is_file() and entry.suffix == ".parquet":
            splits.setdefault(re.split(r"[-.]", entry.name)[0], []).append(entry)
        elif entry.is_dir() and entry.name in SPLIT_FOLDERS:
            files = [f for f in scan(entry) if f.is_file() and f.suffix == ".parquet"]
            splits.setdefault(entry.name, []).extend(files)
    return {name: sorted(files) for name, files in splits.items() if files}


# --- reading files -------------------------------------------------------------------------------------------

def unreadable(path: Path, kind: str, err: BaseException) -> UserError:
    what = "a parquet file" if kind == "parquet" else "an Arrow file (IPC stream)"
    return UserError(f"{path} is not readable as {what} ({type(err).__name__}: {printable(first_line(err))[:80]}); "
                     "download it again or remove it")


def open_arrow(path: Path):
    """An Arrow file (the IPC stream save_to_disk writes, or the file format) as a table mapped into memory:
    its columns are read from disk when used."""
    pa = pyarrow()
    try:
        return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def schema_of(path: Path, kind: str):
    pa = pyarrow()
    try:
        return pa.parquet.read_schema(path) if kind == "parquet" else open_arrow(path).schema
    except (pa.ArrowException, OSError) as err:
        raise unreadable(path, kind, err) from None


def column_values(path: Path, kind: str, column: str) -> list:
    """One column of one file as Python values (a label column: small)."""
    pa = pyarrow()
    try:
        table = pa.parquet.read_table(path, columns=[column]) if kind == "parquet" else open_arrow(path)
        return table.column(column).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise unreadable(path, kind, err) from None


def image_cells(path: Path, kind: str, column: str) -> Iterator:
    """The cells of a file's image column, in order, a batch of rows at a time (never the whole file at once)."""
    pa = pyarrow()
    try:
        if kind == "parquet":
            batches = (b.column(0) for b in pa.parquet.ParquetFile(path).iter_batches(BATCH_ROWS, columns=[column]))
        else:
            batches = iter(open_arrow(path).column(column).chunks)
        for batch in batches:
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise unreadable(path, kind, err) from None


def features(found: Layout) -> dict:
    """The datasets library's features ({column: {"_type": ...}}) stored with the train split's first file (its
    schema metadata, or a save_to_disk split's dataset_info.json); {} when it stores none."""
    path = found.splits["train"][0]
    text = (schema_of(path, found.kind).metadata or {}).get(METADATA_KEY)
    try:
        if text is not None:
            stored = json.loads(text).get("info", {}).get("features")
        elif (path.parent / "dataset_info.json").is_file():
            stored = read_json(path.parent / "dataset_info.json").get("features")
        else:
            stored = {}
    except (ValueError, AttributeError):
        raise UserError(f"{path}: its Hugging Face metadata (schema key 'huggingface') is not the datasets "
                        "library's JSON; download the file again") from None
    return stored if isinstance(stored, dict) else {}


def stored_names(feature: object) -> list[str] | None:
    """The class names of a ClassLabel feature, or of the one inside a Sequence or List of them; None if none."""
    if isinstance(feature, list) and len(feature) == 1:  # [ClassLabel]: the older spelling of a list of labels
        feature = feature[0]
    if isinstance(feature, dict) and feature.get("_type") in ("Sequence", "List", "LargeList"):
        feature = feature.get("feature")
    names = feature.get("names") if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


# --- the data set a run reads ---------------------------------------------------------------------------------

@dataclass
class HfSet:
    """What a run reads of data.root: the splits' files, the columns, the classes, and the labels of train and test."""
    root: Path
    kind: str  # parquet | arrow
    files: dict[str, list[Path]]  # split -> its files, in row order
    rows: dict[str, list[int]]  # split -> each file's row count
    image: str  # the image column
    class_names: list[str]
    labels: dict[str, torch.Tensor]  # train and the test split: class indices (N,), or rows of 0/1 (N, K)
    test: str  # the split tested on; "train" when data.test_fraction holds it out of train

    def take(self, split: str, fraction: float) -> tuple[str, torch.Tensor]:
        """The data set's split that an engine split ('train' | 'test') reads, and which of its rows."""
        name = "train" if split == "train" else self.test
        every = torch.arange(len(self.labels[name]))
        if self.test != "train":
            return name, every
        is_test = held_out_mask(self.row_names("train"), self.labels["train"], fraction)
        return name, every[is_test if split == "test" else ~is_test]

    def row_names(self, split: str) -> list[str]:
        """Each row as <file relative to data.root>:<row in the file>, which data.test_fraction hashes."""
        return [f"{path.relative_to(self.root).as_posix()}:{row}"
                for path, count in zip(self.files[split], self.rows[split]) for row in range(count)]


_last: dict = {}  # the last open_set() result and what it was read from: a run asks for it several times


def open_set(cfg: DataConfig, fetch: bool = True) -> HfSet:
    """The data set in data.root, read and checked once per config and state of its files."""
    found = layout(local_root(cfg, fetch))
    key = (repr(cfg), [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for fs in found.splits.values() for f in fs])
    if _last.get("key") != key:
        _last.update(key=key, found=read_set(cfg, found))
    return _last["found"]


def read_set(cfg: DataConfig, found: Layout) -> HfSet:
    """open_set(), read from the files and checked."""
    if "train" not in found.splits:
        raise UserError(f"data.root: {found.root} has the splits {', '.join(found.splits)} but no train split; "
                        "a data set to train on needs one (train-*.parquet, or train/ in a save_to_disk folder)")
    image, label = columns(cfg, found, "train")
    values = {"train": split_values(found, "train", label, cfg.multilabel)}
    test = test_split(cfg, found, label, values)
    names = stored_names(features(found).get(label))
    index = {k: k for k in range(len(names))} if names else distinct(values["train"], found, label)
    if len(index) < 2:
        raise UserError(f"{found.root}: column '{printable(label)}' has one class ({shown(list(index))}); a "
                        "classifier needs at least two")
    used = list(dict.fromkeys(["train", check_test_split(cfg, found, test)]))  # in this order: the first error
    for name in used:
        check_labels(values[name], index, names is not None, name, label)
    labels = {name: label_tensor(values[name], index, cfg.multilabel) for name in used}
    counts = {name: [len(column) for _, column in values[name]] for name in used}
    names = names or [str(value) for value in index]
    return HfSet(found.root, found.kind, found.splits, counts, image, names, labels, used[-1])


def test_split(cfg: DataConfig, found: Layout, label: str, values: dict) -> str | None:
    """The first of TEST_SPLITS with labels (one without the label column has none), its values added to values."""
    for name in TEST_SPLITS:
        if name in found.splits and label in schema_of(found.splits[name][0], found.kind).names:
            columns(cfg, found, name)
            values[name] = split_values(found, name, label, cfg.multilabel)
            if is_labelled(values[name]):
                return name
    return None


def columns(cfg: DataConfig, found: Layout, split: str) -> tuple[str, str]:
    """The image and label columns of the split's files, checked, or an error naming the columns there are."""
    path = found.splits[split][0]
    schema = schema_of(path, found.kind)
    listed = ", ".join(printable(n) for n in schema.names[:10]) + (", ..." if len(schema.names) > 10 else "")
    image = cfg.image_column
    if image == "auto":
        is_image = [name for name, f in features(found).items() if isinstance(f, dict) and f.get("_type") == "Image"]
        image = next((name for name in [*IMAGE_COLUMNS, *is_image] if name in schema.names), "")
        if not image:
            raise UserError(f"{path} has no image column ({' | '.join(IMAGE_COLUMNS)}, or one of the Image feature); "
                            f"its columns are {listed}; set data.image_column to the one holding the images")
    for key, name in (("image_column", image), ("label_column", cfg.label_column)):
        if name not in schema.names:
            raise UserError(f"{path} has no column '{printable(name)}' (data.{key}); its columns are {listed}; "
                            f"set data.{key} to one of them")
    check_types(cfg, schema, (image, cfg.label_column), path)
    return image, cfg.label_column


def check_types(cfg: DataConfig, schema, names: tuple[str, str], path: Path) -> None:
    """The image column holds files' bytes (the Image feature's struct<bytes, path>, or binary), the label column
    integers or texts, or lists of them exactly when data.multilabel is set."""
    types = pyarrow().types
    image, label = (schema.field(name).type for name in names)
    if not (types.is_binary(image) or types.is_large_binary(image)
            or (types.is_struct(image) and image.get_field_index("bytes") >= 0)):
        raise UserError(f"{path}: column '{printable(names[0])}' (data.image_column) holds {image}, not images "
                        "(struct<bytes, path> or binary); set data.image_column to the column of images")
    is_list = types.is_list(label) or types.is_large_list(label)
    scalar = label.value_type if is_list else label
    if not (types.is_integer(scalar) or types.is_string(scalar) or types.is_large_string(scalar)):
        raise UserError(f"{path}: column '{printable(names[1])}' (data.label_column) holds {label}, not labels "
                        "(integers or texts, or lists of them); set data.label_column to the column of labels")
    if is_list != cfg.multilabel:
        raise UserError(f"{path}: column '{printable(names[1])}' (data.label_column) holds "
                        + ("lists of labels; set data.multilabel=true to train each as a yes/no of its own" if is_list
                           else "one label per image; set data.multilabel=false, or data.label_column to a column "
                                "of lists"))


def split_values(found: Layout, split: str, label: str, multilabel: bool) -> list[tuple[Path, list]]:
    """Each file of the split with its label column's values (lists of labels when multilabel)."""
    values = []
    for path in found.splits[split]:
        column = column_values(path, found.kind, label)
        values.append((path, [v or [] for v in column] if multilabel else column))  # multilabel: none is no label
    return values


def is_labelled(values: list[tuple[Path, list]]) -> bool:
    """Whether a split has any label (the Hub's test splits are often all -1: no labels)."""
    return any(v not in (None, UNLABELLED, []) for _, column in values for v in column)


def distinct(values: list[tuple[Path, list]], found: Layout, label: str) -> dict:
    """Without stored class names (no ClassLabel feature): the training labels' distinct values, sorted (as
    numbers when they are), each mapped to its position."""
    cells = [cell for _, column in values for cell in column]
    seen = {v for cell in cells for v in (cell if isinstance(cell, list) else [cell]) if v is not None}
    by_text = {str(v): v for v in seen}
    ordered = [by_text[text] for text in sorted_names(list(by_text))]
    key = (str(found.root), label)
    if _noted.get("key") != key:
        _noted["key"] = key
        print(f"note: {found.splits['train'][0]} stores no class names for column '{printable(label)}' (a ClassLabel "
              f"feature); the classes are its distinct values, sorted: {shown([str(v) for v in ordered])}")
    return {value: k for k, value in enumerate(ordered)}


_noted: dict = {}  # the data set whose missing class names were last noted: once, not on every open_set


def check_labels(values: list[tuple[Path, list]], index: dict, is_stored: bool, split: str, label: str) -> None:
    """Every label of a split is a class (is_stored: index is a ClassLabel's 0 .. K-1); an error names the first
    row whose label is not."""
    bad = [(path, row, v) for path, column in values for row, cell in enumerate(column)
           for v in (cell if isinstance(cell, list) else [cell]) if v not in index]
    if not bad:
        return
    path, row, value = bad[0]
    if value is None:
        why = "no label"
    elif is_stored:
        why = f"label {shown(value)}, outside the {len(index)} classes (0 to {len(index) - 1}) of its ClassLabel"
    else:
        why = f"label {shown(value)}, which no training image has"
    unlabelled = "; -1 marks an image without a label" if value == UNLABELLED else ""
    raise UserError(f"{path} row {row}: column '{printable(label)}' has {why}{unlabelled} ({len(bad)} such labels "
                    f"in split {split}); fix them or remove the rows")


def label_tensor(values: list[tuple[Path, list]], index: dict, multilabel: bool) -> torch.Tensor:
    """A split's labels, checked: class indices (N,), or with multilabel (N, K) rows of 0/1."""
    cells = [cell for _, column in values for cell in column]
    if not multilabel:
        return torch.tensor([index[cell] for cell in cells], dtype=torch.int64)
    rows = torch.zeros(len(cells), len(index))
    for i, cell in enumerate(cells):
        rows[i, [index[v] for v in cell]] = 1.0
    return rows


def check_test_split(cfg: DataConfig, found: Layout, test: str | None) -> str:
    """The split tested on, or "train" when data.test_fraction holds one out of it; an error when neither or both."""
    if test is not None and cfg.test_fraction:
        raise UserError(f"data.test_fraction holds out a test split, but {found.root} has one ({test}); set "
                        "data.test_fraction=0")
    if test is None and not cfg.test_fraction:
        raise UserError(f"{found.root} has no labelled test split ({', '.join(TEST_SPLITS)}; its splits: "
                        f"{', '.join(found.splits)}); hold some of train out with data.test_fraction=0.2")
    return test or "train"


# --- images --------------------------------------------------------------------------------------------------

def decode_cell(cell: object, name: str, cfg: DataConfig, root: Path) -> torch.Tensor:
    """One image cell (the Image feature's {'bytes', 'path'}, or bytes) as uint8 (C, H, W); a cell without bytes
    is read from its path (absolute, or relative to data.root), as save_to_disk keeps local files."""
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if data is not None:
        return read_image(io.BytesIO(data), cfg.channels, folder_size(cfg), cfg.max_pixels, name)
    path = cell.get("path") if isinstance(cell, dict) else None
    file = root / path if path else None  # an absolute path stays itself
    if file is None or not file.is_file():
        raise UserError(f"{name} has no image bytes{f' and its path {shown(path)} is not a file here' if path else ''};"
                        " embed the images (the Hub's parquet files hold them) or remove the row")
    return read_image(file, cfg.channels, folder_size(cfg), cfg.max_pixels, f"{name} ({file})")


def decode_rows(cfg: DataConfig, found: HfSet, split: str, rows: torch.Tensor) -> torch.Tensor:
    """The split's images at rows (ascending) as uint8 (N, C, H, W), read a batch of rows at a time."""
    wanted = torch.zeros(sum(found.rows[split]), dtype=torch.bool)
    wanted[rows] = True
    wanted, images, start = wanted.tolist(), [], 0  # a list: per-row indexing ~100x faster than a tensor
    for path, count in zip(found.files[split], found.rows[split]):
        for row, cell in enumerate(image_cells(path, found.kind, found.image)):
            if wanted[start + row]:
                images.append(decode_cell(cell, f"{path} row {row}", cfg, found.root))
        start += count
    return torch.stack(images)


class RowImages(torch.utils.data.Dataset):
    """A split's images decoded on demand in DataLoader workers, from Arrow files mapped into memory (a
    save_to_disk folder's own, or copies of parquet files in data.cache_dir): too big to decode whole."""

    def __init__(self, files: list[tuple[Path, Path, int]], found: HfSet, rows: torch.Tensor, cfg: DataConfig):
        self.files, self.found, self.rows, self.cfg = files, found, rows, cfg  # files: (Arrow file, named, rows)
        self.starts = list(itertools.accumulate([count for *_, count in files], initial=0))
        self.columns = None  # the image columns, mapped in each process when first read

    def __getstate__(self) -> dict:
        return {**self.__dict__, "columns": None}  # a worker maps the files itself

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode_cell(*self.cell(i), self.cfg, self.found.root)

    def cell(self, i: int) -> tuple[object, str]:
        """The i-th image's cell and its name for messages (file and row)."""
        if self.columns is None:
            self.columns = [open_arrow(path).column(self.found.image) for path, *_ in self.files]
        index = int(self.rows[i])
        k = bisect.bisect_right(self.starts, index) - 1
        return self.columns[k][index - self.starts[k]].as_py(), f"{self.files[k][1]} row {index - self.starts[k]}"

    def encoded(self, i: int) -> bytes | None:
        """The i-th image's file bytes as the row holds them; None for a cell that only names a file."""
        cell = self.cell(i)[0]
        return cell.get("bytes") if isinstance(cell, dict) else cell

    def select(self, idx: torch.Tensor) -> RowImages:
        return RowImages(self.files, self.found, self.rows[idx], self.cfg)


def mapped_files(cfg: DataConfig, found: HfSet, split: str) -> list[tuple[Path, Path, int]]:
    """(Arrow file to map, the file messages name, its rows) for each file of the split."""
    files = zip(found.files[split], found.rows[split])
    if found.kind == "arrow":
        return [(path, path, count) for path, count in files]
    return [(arrow_copy(cfg, path, found.image), path, count) for path, count in files]


def arrow_copy(cfg: DataConfig, path: Path, column: str) -> Path:
    """The image column of a parquet file as an Arrow stream file in data.cache_dir (written once): parquet is
    compressed, so its rows cannot be read one by one from disk, an Arrow file's can."""
    if not cfg.cache_dir:
        raise UserError("data.cache_dir: a parquet split over data.max_memory_mb decoded is read per batch from an "
                        "Arrow copy of its images in data.cache_dir; set data.cache_dir to a folder (or raise "
                        "data.max_memory_mb to decode it into memory)")
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{column}".encode()).hexdigest()[:16]
    copy = make_folder(cfg.cache_dir, "data.cache_dir") / f"hf-{path.stem}-{digest}.arrow"
    if copy.is_file():
        return copy
    pa = pyarrow()
    with replacing(copy) as f:
        try:
            source = pa.parquet.ParquetFile(path)
            with pa.ipc.new_stream(f, pa.schema([source.schema_arrow.field(column)])) as writer:
                for batch in source.iter_batches(BATCH_ROWS, columns=[column]):
                    writer.write_batch(batch)
        except pa.ArrowInvalid as err:  # a damaged file (an OSError would be the copy's: the disk)
            raise unreadable(path, "parquet", err) from None
    return copy


class Hf(Source):
    """data.name=hf: a Hugging Face image classification set, as parquet files or a save_to_disk folder."""
    reads = ("root", "image_size", "channels", "max_memory_mb", "max_pixels", "num_workers", "cache_dir",
             "test_fraction", "image_column", "label_column", "multilabel")

    def describe(self, cfg: DataConfig) -> DataInfo:
        return DataInfo(cfg.channels, folder_size(cfg), open_set(cfg).class_names, multilabel=cfg.multilabel)

    def load(self, cfg: DataConfig, split: str) -> tuple[Images, torch.Tensor]:
        """The split decoded into memory, or decoded per batch when bigger than data.max_memory_mb decoded."""
        found = open_set(cfg)
        name, rows = found.take(split, cfg.test_fraction)
        labels = found.labels[name][rows]
        if len(rows) * cfg.channels * folder_size(cfg) ** 2 > cfg.max_memory_mb * 2 ** 20:
            print(f"data: {split} is over data.max_memory_mb decoded; decoding its {len(rows)} images per batch")
            return RowImages(mapped_files(cfg, found, name), found, rows, cfg), labels
        return cached(self, cfg, split, lambda: (decode_rows(cfg, found, name, rows), labels))

    def files(self, cfg: DataConfig, split: str) -> tuple[Path, list[Path]]:
        found = open_set(cfg, fetch=False)
        return found.root, list(found.files["train" if split == "train" else found.test])

    def where(self, cfg: DataConfig) -> str:
        try:
            found = open_set(cfg, fetch=False)
        except (UserError, OSError):  # not on this machine
            return super().where(cfg)
        test = "data.test_fraction of train" if found.test == "train" else found.test
        return f"from data.root {cfg.root}: Hugging Face {found.kind} files, tested on {test}"

    def fingerprint(self, cfg: DataConfig) -> bytes:
        found = open_set(cfg, fetch=False)
        return f"{found.image}|{cfg.label_column}|{cfg.multilabel}|{cfg.test_fraction}|{found.test}".encode()

    def held_out(self, cfg: DataConfig) -> list[str]:
        if not cfg.test_fraction:
            return []
        found = open_set(cfg)
        names = found.row_names("train")
        return [names[i] for i in found.take("test", cfg.test_fraction)[1].tolist()]
