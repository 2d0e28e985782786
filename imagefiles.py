"""Image files for prediction, without PyTorch: finding and decoding them, and the predictions table and CSV.

test.py --predict, demo.py and predict_onnx.py (which must run where PyTorch is not installed) all
decode images and print predictions through these functions, so they agree on both.
"""
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """A file or upload that cannot be used as an image."""


def to_array(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """A PIL image as uint8 (channels, size, size): grey or RGB, resized bilinearly."""
    img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels).transpose(2, 0, 1).copy()


def decode_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size)."""
    try:
        with Image.open(path) as img:
            return to_array(img, channels, size)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise ImageError(f"{path} is not a readable image; remove it or replace it with a PNG or JPEG") from None


def image_files(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files named directly, plus every file inside named folders; and errors for missing paths."""
    files, errors = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path} not found")
    return files, errors


def read_inputs(inputs: list[str], channels: int, size: int) -> tuple[list[Path], np.ndarray, int]:
    """Decode the named images and folders: (files, uint8 images (N, C, H, W), number of failures).

    Each missing or unreadable file gets one `error:` line on stderr; the others are still returned.
    """
    files, errors = image_files(inputs)
    good, images = [], []
    for path in files:
        try:
            images.append(decode_image(path, channels, size))
            good.append(path)
        except ImageError as err:
            errors.append(str(err))
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return good, np.stack(images) if images else np.zeros((0, channels, size, size), np.uint8), len(errors)


def ranked(probs: np.ndarray, class_names: list[str], top_k: int) -> list[list[tuple[str, float]]]:
    """Per image, the top_k (class name, probability) pairs, most probable first; probs is (N, num_classes)."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    return [[(class_names[c], float(p[c])) for c in row] for p, row in zip(probs, order)]


def report_predictions(files: list[Path], predictions: list[list[tuple[str, float]]], top_k: int,
                       output: str | None) -> None:
    """Print one line per image (`file: 3 97.1%, 8 1.2%, ...`) and optionally write them to a CSV file."""
    rows = []
    for file, pairs in zip(files, predictions):
        print(f"{file}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in pairs))
        rows.append([str(file)] + [v for name, p in pairs for v in (name, f"{p:.6f}")])
    if output:
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file"] + [f"{key}_{i + 1}" for i in range(top_k) for key in ("class", "prob")])
            writer.writerows(rows)
        print(f"wrote {len(rows)} predictions to {output}")
