"""CSV-labelled data sets (data.name=csv): data.root holds the images, in any sub-folders, and a CSV with
a header names each image and its label, as Kaggle sets and labelling tools export them:

    file,label
    cats/001.jpg,cat
    dog_7.png,dog

Read with the standard library's csv module (a BOM and Windows line endings are fine; the columns may be
separated by , ; tab or |, whichever splits the header line into the most columns). This module reads
and checks the tables; the source Csv decodes, caches and streams the files as a folder's (engine/folders.py).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.errors import UserError
from engine.folders import FileSet, Labelled

if TYPE_CHECKING:
    from engine.config import DataConfig

IMAGE_COLUMNS = ("file", "image", "filename", "path", "image_id", "id")  # data.image_column=auto: the first found
SPLIT_COLUMN = "split"  # optional: train | test per row, when there is no data.test_labels
SHOWN = 3  # rows quoted in a message
SEPARATORS = (",", ";", "\t", "|")  # between columns: the one that splits the header most, a comma on a tie


@dataclass
class Rows:
    """The images of one CSV split: paths under data.root, label texts, and each row's line in the file."""
    files: list[Path]
    labels: list[str]
    lines: list[int]
    source: Path  # the CSV, for messages


def csv_path(cfg: DataConfig, key: str) -> Path:
    """data.labels or data.test_labels: the path as given, else relative to data.root."""
    if not getattr(cfg, key):
        raise UserError(f"data.name=csv needs data.{key}: the CSV (a header, then one row per image: path under "
                        "data.root, label); see docs/own-images.md")
    given = Path(getattr(cfg, key)).expanduser()
    if not given.is_file() and not given.is_absolute() and (Path(cfg.root) / given).is_file():
        return Path(cfg.root) / given
    if not given.is_file():
        raise UserError(f"data.{key}: {given} not found (nor {Path(cfg.root) / given}); point it at the CSV "
                        "that lists the images and their labels")
    return given


def separator_of(header_line: str) -> str:
    """The column separator of a CSV: of SEPARATORS, the one that splits its header line into the most columns
    (a spreadsheet set to a European locale saves with ;)."""
    return max(SEPARATORS, key=lambda sep: len(next(csv.reader([header_line], delimiter=sep), [])))


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]], str]:
    """The header, (line number, row) of a CSV and its separator; utf-8-sig drops a BOM, newline='' reads CRLF
    files."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            separator = separator_of(f.readline())
            f.seek(0)
            reader = csv.DictReader(f, delimiter=separator)
            rows = [(reader.line_num, row) for row in reader]
            header = [name.strip() for name in reader.fieldnames or []]
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8 CSV") from None
    except csv.Error as err:
        raise UserError(f"{path} is not a readable CSV ({err}); save it as comma-separated text") from None
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror}); check its permissions") from None
    if not header:
        raise UserError(f"{path} is empty; it needs a header line (e.g. file,label) and one row per image")
    names = {name: name.strip() for name in reader.fieldnames}  # the keys of each row, before stripping
    stripped = [(line, {names[n]: (v or "").strip() for n, v in row.items() if n in names}) for line, row in rows]
    return header, stripped, separator


def listed(header: list[str], separator: str) -> str:
    """A CSV's columns for a message, with the separator they were split at."""
    found = ", ".join(header[:10]) + (", ..." if len(header) > 10 else "")
    return f"{found} (separated by {separator!r})"


def columns(cfg: DataConfig, header: list[str], separator: str, path: Path) -> tuple[str, str]:
    """The image-path and label columns of this header, or an error naming the columns found."""
    found = listed(header, separator)
    image = cfg.image_column
    if image == "auto":
        image = next((name for name in IMAGE_COLUMNS if name in header), "")
        if not image:
            raise UserError(f"{path} has no image column ({' | '.join(IMAGE_COLUMNS)}); its columns are {found}; "
                            "set data.image_column to the one holding the image paths")
    for key, name in (("image_column", image), ("label_column", cfg.label_column)):
        if name not in header:
            raise UserError(f"{path} has no column '{name}' (data.{key}); its columns are {found}; "
                            f"set data.{key} to one of them")
    return image, cfg.label_column


def rows_of(cfg: DataConfig, path: Path, split: str | None,
            table: tuple[list[str], list, str] | None = None) -> Rows:
    """The rows of one CSV (only those whose split column is `split`, when given), checked; table: read_rows'."""
    header, rows, separator = table or read_rows(path)
    image, label = columns(cfg, header, separator, path)
    if split is not None:
        bad = [(line, row[SPLIT_COLUMN]) for line, row in rows if row[SPLIT_COLUMN].lower() not in ("train", "test")]
        if bad:
            raise UserError(f"{path}: the split column must be train or test; row {bad[0][0]} has "
                            f"{bad[0][1][:40]!r} ({len(bad)} such rows)")
        rows = [(line, row) for line, row in rows if row[SPLIT_COLUMN].lower() == split]
    if not rows:
        raise UserError(f"{path} lists no {split + ' ' if split else ''}images; add one row per image")
    empty = [] if cfg.multilabel else [line for line, row in rows if not row[label]]  # multilabel: none allowed
    if empty:
        raise UserError(f"{path}: {len(empty)} rows have an empty label in column '{label}' (rows "
                        f"{', '.join(map(str, empty[:SHOWN]))}); fill them in or remove the rows")
    root = os.path.normpath(cfg.root)
    return Rows([image_file(root, row[image], path, line) for line, row in rows], [row[label] for _, row in rows],
                [line for line, _ in rows], path)


def image_file(root: str, name: str, path: Path, line: int) -> Path:
    """root / name, refused if it is absolute or climbs out of root (../); root is normalised."""
    joined = os.path.normpath(os.path.join(root, name))
    prefix = "" if root == "." else root if root.endswith(os.sep) else root + os.sep
    inside = joined.startswith(prefix) and joined[len(prefix):].split(os.sep)[0] not in ("..", ".", "")
    if not name or os.path.isabs(name) or not inside:
        raise UserError(f"{path} row {line}: image path {name[:60]!r} is not inside data.root ({root}); "
                        "give paths relative to data.root, without ../")
    return Path(joined)


def check_rows(rows: Rows) -> None:
    """Every file exists, and no image is listed twice."""
    missing = [(line, f) for line, f in zip(rows.lines, rows.files) if not f.is_file()]
    if missing:
        shown = "; ".join(f"row {line}: {f}" for line, f in missing[:SHOWN])
        raise UserError(f"{rows.source}: {len(missing)} of {len(rows.files)} listed images do not exist ({shown}"
                        f"{'; ...' if len(missing) > SHOWN else ''}); fix the paths (relative to data.root) "
                        "or remove the rows")
    first: dict[Path, int] = {}
    for line, f in zip(rows.lines, rows.files):
        if f in first:
            raise UserError(f"{rows.source}: {f} is listed twice (rows {first[f]} and {line}); "
                            "list each image once")
        first[f] = line


_last: dict = {}  # the last splits() result and what it was read from: a run asks for it several times


def splits(cfg: DataConfig) -> dict[str, Rows | None]:
    """{'train': Rows, 'test': Rows or None (no test split: data.test_fraction holds one out)}, checked."""
    paths = [csv_path(cfg, key) for key in ("labels", "test_labels") if key == "labels" or getattr(cfg, key)]
    key = (repr(cfg), [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths])
    if _last.get("key") != key:
        _last.update(key=key, found=read_splits(cfg, paths[0]))
    return _last["found"]


def read_splits(cfg: DataConfig, train_path: Path) -> dict[str, Rows | None]:
    """splits(), read from the files and checked."""
    table = read_rows(train_path)
    if cfg.test_labels:
        found = {"train": rows_of(cfg, train_path, None, table),
                 "test": rows_of(cfg, csv_path(cfg, "test_labels"), None)}
    elif SPLIT_COLUMN in table[0]:
        found = {"train": rows_of(cfg, train_path, "train", table), "test": rows_of(cfg, train_path, "test", table)}
    elif cfg.test_fraction:
        found = {"train": rows_of(cfg, train_path, None, table), "test": None}
    else:
        raise UserError(f"data.labels: {train_path} has no test split (its columns: {listed(table[0], table[2])}); "
                        f"set data.test_labels to a second CSV, add a '{SPLIT_COLUMN}' column (train | test), or hold "
                        "some out with data.test_fraction=0.2")
    if found["test"] is not None and cfg.test_fraction:
        raise UserError("data.test_fraction holds out a test split, but the CSV data set has one already; "
                        "set data.test_fraction=0")
    for rows in filter(None, found.values()):
        check_rows(rows)
    check_across(found, cfg)
    return found


def label_set(text: str, cfg: DataConfig) -> list[str]:
    """The labels of one cell: itself, or with data.multilabel its parts between data.label_separator."""
    if not cfg.multilabel:
        return [text]
    return [part.strip() for part in text.split(cfg.label_separator or " ") if part.strip()]


def check_across(found: dict[str, Rows | None], cfg: DataConfig) -> None:
    """Test images must not also be training images, and the test labels must be training classes."""
    train, test = found["train"], found["test"]
    if test is None:
        return
    in_train = dict(zip(train.files, train.lines))
    both = [(line, f) for line, f in zip(test.lines, test.files) if f in in_train]
    if both:
        line, f = both[0]
        raise UserError(f"{f} is listed for training ({train.source} row {in_train[f]}) and for testing "
                        f"({test.source} row {line}), {len(both)} images in all; list each image in one split")
    names = [{name for text in rows.labels for name in label_set(text, cfg)} for rows in (train, test)]
    unseen = sorted(names[1] - names[0])
    if unseen:
        raise UserError(f"{test.source}: labels {', '.join(unseen[:5])} appear only in the test split; the model "
                        "can only predict classes it was trained on: add training images of them or drop the rows")


def class_names(labels: list[str]) -> list[str]:
    """The distinct labels, sorted (as numbers when every label is an integer, so 10 follows 9)."""
    distinct = set(labels)
    numeric = all(name.lstrip("-").isdigit() for name in distinct)
    return sorted(distinct, key=lambda name: (int(name), name) if numeric else (0, name))


def fingerprint(cfg: DataConfig) -> bytes:
    """What the cached labels depend on besides the image files: the CSVs' bytes and the columns read."""
    texts = [csv_path(cfg, key).read_bytes() for key in ("labels", "test_labels") if getattr(cfg, key)]
    read = f"{cfg.image_column}|{cfg.label_column}" + (f"|multilabel|{cfg.label_separator}" if cfg.multilabel else "")
    return b"|".join(texts + [read.encode()])


class Csv(FileSet):
    """data.name=csv: the images under data.root that data.labels (and data.test_labels) list."""
    reads = FileSet.reads + ("labels", "test_labels", "image_column", "label_column", "multilabel", "label_separator")

    def folder(self, cfg: DataConfig, split: str) -> Path:
        return Path(os.path.normpath(cfg.root))

    def labelled(self, cfg: DataConfig) -> Labelled:
        return {split: rows and (list(rows.files), list(rows.labels)) for split, rows in splits(cfg).items()}

    def class_names(self, cfg: DataConfig) -> list[str]:
        """The labels, sorted (as numbers if all are integers); each part of a cell when multilabel."""
        names = class_names([name for text in splits(cfg)["train"].labels for name in label_set(text, cfg)])
        if len(names) < 2:
            raise UserError(f"{csv_path(cfg, 'labels')} has one class ({names[0]}); a classifier needs at least two")
        return names

    def label_tensor(self, cfg: DataConfig, texts: list[str], index: dict[str, int]) -> torch.Tensor:
        """Class indices (N,), or with data.multilabel (N, K) rows of 0/1."""
        if not cfg.multilabel:
            return super().label_tensor(cfg, texts, index)
        labels = torch.zeros(len(texts), len(index))
        for i, text in enumerate(texts):
            labels[i, [index[name] for name in label_set(text, cfg)]] = 1.0
        return labels

    def fingerprint(self, cfg: DataConfig) -> bytes:
        return fingerprint(cfg)
