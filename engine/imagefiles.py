"""Image files for prediction, without PyTorch: finding and decoding them, and the predictions table and CSV
(multi-label: every label at or above its threshold).

test.py --predict, demo.py and predict_onnx.py (which must run where PyTorch is not installed) all
decode images and print predictions through these functions, so they agree on both.
"""
import argparse
import io
import struct
import sys
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.entry import one_line
from engine.errors import refusal
from engine.escape import CsvWriter, printable


class ImageError(ValueError):
    """A file or upload that cannot be used as an image."""


MAX_PIXELS = 50_000_000  # config.yaml's data.max_pixels, for predict_onnx.py and the demo, which have no config


def eight_bit(img: Image.Image) -> Image.Image:
    """Any PIL mode as L, RGB or RGBA with 8 bits per channel: 16- and 32-bit grey are scaled, not clipped
    (a 16-bit PNG would otherwise turn white), float grey is read as 0..1, palettes become colours."""
    if img.mode in ("1", "L", "RGB", "RGBA"):
        return img
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img).astype(np.float64)  # (H, W)
        if img.mode == "F":
            scale = 255 if values.max(initial=0) <= 1 else 1
        else:
            top = values.max(initial=0)
            scale = 1 if top <= 255 else 255 / 65535 if top <= 65535 else 255 / top
        return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info
    return img.convert("RGBA" if has_alpha else "RGB")


# what Pillow's plugins raise on damaged files
DAMAGED = (UnidentifiedImageError, OSError, SyntaxError, EOFError, IndexError, ValueError, struct.error)


def to_array(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """A PIL image as uint8 (channels, size, size): grey or RGB, resized bilinearly; transparency over white."""
    img = eight_bit(img)
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img)
    img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels).transpose(2, 0, 1).copy()


def decode_image(path: Path | BinaryIO, channels: int, size: int, max_pixels: int = MAX_PIXELS,
                 name: str = "") -> np.ndarray:
    """One image file (or its bytes, in a file object) as uint8 (channels, size, size); files over max_pixels are
    refused before decoding. name: what messages call it (default: the path)."""
    name = name or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides, below
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise ImageError(f"{name} is {img.width}x{img.height} = {img.width * img.height:,} pixels, "
                                     f"over data.max_pixels ({max_pixels:,}); shrink it, or raise data.max_pixels "
                                     "if the image is genuine")
                return to_array(img, channels, size)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name} has more pixels than Pillow opens (a decompression bomb?); it is over "
                         f"data.max_pixels ({max_pixels:,}) too; shrink it or remove it") from None
    except DAMAGED as err:
        if isinstance(err, OSError) and refusal(err):  # the system's, not Pillow's over a damaged file
            raise ImageError(f"{name} cannot be read ({refusal(err)}); check that it is readable") from None
        raise ImageError(f"{name} is not a readable image; remove it or replace it with a PNG or JPEG") from None


def image_files(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files named directly, plus every file inside named folders; and errors for missing paths."""
    files, errors = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
            files += found
            if not found:
                errors.append(f"{path} holds no files to predict")
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path} not found")
    return files, errors


def read_inputs(inputs: list[str], channels: int, size: int,
                max_pixels: int = MAX_PIXELS) -> tuple[list[Path], np.ndarray, int]:
    """Decode the named images and folders: (files, uint8 images (N, C, H, W), number of failures).

    Each missing or unreadable file gets one `error:` line on stderr; the others are still returned.
    """
    files, errors = image_files(inputs)
    good, images = [], []
    for path in files:
        try:
            images.append(decode_image(path, channels, size, max_pixels))
            good.append(path)
        except ImageError as err:
            errors.append(str(err))
    for message in errors:
        print(f"error: {one_line(message)}", file=sys.stderr)
    return good, np.stack(images) if images else np.zeros((0, channels, size, size), np.uint8), len(errors)


def ranked(probs: np.ndarray, class_names: list[str], top_k: int) -> list[list[tuple[str, float]]]:
    """Per image, the top_k (class name, probability) pairs, most probable first; probs is (N, num_classes)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    return [[(class_names[c], float(p[c])) for c in row] for p, row in zip(probs, order)]


UNKNOWN = "unknown"  # the answer when the top probability is below --min-confidence


def min_confidence(text: str) -> float:
    """argparse type of --min-confidence: a probability P in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a probability above 0 and at most 1, e.g. 0.9; got {text[:40]!r}")
    return value


def answer(pairs: list[tuple[str, float]], min_confidence: float | None) -> str:
    """The top class, or UNKNOWN when its probability is below min_confidence."""
    return UNKNOWN if min_confidence is not None and pairs[0][1] < min_confidence else pairs[0][0]


NO_LABEL = "no label at or above its threshold"  # a multi-label image with none
NO_MIN_CONFIDENCE = ("--min-confidence does not apply to a multi-label model: each label has its own threshold "
                     "(chosen on the validation split, stored with the model); leave it out")


def above_thresholds(probs: np.ndarray, thresholds: list[float], class_names: list[str]) -> list[list[tuple]]:
    """Per image, every (label, probability) at or above its threshold, most probable first; probs (N, K) is a
    numpy array or a tensor (anything with tolist)."""
    return [sorted(((name, p) for name, p, t in zip(class_names, row, thresholds) if p >= t),
                   key=lambda pair: -pair[1]) for row in probs.tolist()]


def report_labels(files: list[Path], probs: np.ndarray, thresholds: list[float], class_names: list[str],
                  model: str = "") -> str:
    """Multi-label: report_predictions of every label at or above its threshold, as many CSV columns as the
    image with the most labels has."""
    predictions = above_thresholds(probs, thresholds, class_names)
    return report_predictions(files, predictions, max([len(labels) for labels in predictions] + [1]), model)


def report_predictions(files: list[Path], predictions: list[list[tuple[str, float]]], top_k: int,
                       model: str = "", min_confidence: float | None = None) -> str:
    """Print one line per image (`file: 3 97.1%, 8 1.2%, ...`) after a line naming the model that answered;
    returns the same predictions as CSV text, with the model in its last column.

    With min_confidence an image whose top probability is below it is answered UNKNOWN, its classes and
    probabilities still listed (`file: unknown (below 90%): 3 62.1%, ...`), and the CSV gains an answer column.
    A multi-label image may have fewer than top_k pairs (NO_LABEL when none): its CSV row is padded."""
    buffer = io.StringIO()
    writer = CsvWriter(buffer, lineterminator="\n")
    chosen = [] if min_confidence is None else ["answer"]
    writer.writerow(["file", *chosen] + [f"{key}_{i + 1}" for i in range(top_k) for key in ("class", "prob")]
                    + ["model"])
    if files:
        print(f"predictions of {printable(model)}:")
    for file, pairs in zip(files, predictions):
        said = answer(pairs, min_confidence) if pairs else ""
        doubtful = min_confidence is not None and pairs[0][1] < min_confidence
        unknown = f"{UNKNOWN} (below {100 * min_confidence:g}%): " if doubtful else ""
        listed = ", ".join(f"{printable(name)} {100 * p:.1f}%" for name, p in pairs) or NO_LABEL
        print(f"{printable(file)}: {unknown}{listed}")
        row = [str(file), *([said] if chosen else [])] + [v for name, p in pairs for v in (name, f"{p:.6f}")]
        writer.writerow(row + [""] * 2 * (top_k - len(pairs)) + [model])
    return buffer.getvalue()
