"""Predict the classes of image files with a model.onnx from export.py, without PyTorch.

Needs only onnxruntime, numpy and Pillow (pip install onnxruntime numpy pillow), reads the class
names and image size from the file's metadata, and prints the same table and CSV as
`python test.py --predict`; for a multi-label model (its metadata says multilabel), every label
at or above its threshold, with its probability.

    python tools/predict_onnx.py checkpoints/<run>/model.onnx my_digit.png more_images/
    python tools/predict_onnx.py checkpoints/<run>/model.onnx more_images/ --top-k 3 \
        --output checkpoints/predictions.csv
    python tools/predict_onnx.py checkpoints/<run>/model.int8.onnx more_images/ --min-confidence 0.9

The probabilities already carry the checkpoint's temperature (export.py puts it in the graph).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
from engine.entry import Parser, run_cli  # noqa: E402
from engine.errors import UserError, shown  # noqa: E402
from engine.imagefiles import (NO_MIN_CONFIDENCE, min_confidence, ranked, read_inputs, report_labels,  # noqa: E402
                               report_predictions)

BATCH = 256  # images per onnxruntime call
REQUIRED = ("class_names", "image_size", "channels")  # metadata keys written by export.py


class ModelError(UserError):
    """A model file that cannot be used; printed as one line."""


def open_model(path: Path):
    """An onnxruntime session for path, and the class names, channels, image size and (multi-label models only)
    thresholds from its metadata."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("predict_onnx.py needs onnxruntime; pip install onnxruntime") from None
    if not path.is_file():
        raise ModelError(f"{path} not found; export a checkpoint with python tools/export.py")
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types, not exported by name
        raise ModelError(f"{path} is not a readable ONNX model ({type(err).__name__}); export it again") from None
    meta = session.get_modelmeta().custom_metadata_map
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise ModelError(f"{path} has no {', '.join(missing)} in its metadata; it was not written by export.py")
    names, channels, size = read_metadata(path, meta)
    check_input(session, path, channels, size)
    return session, names, channels, size, read_thresholds(path, meta, len(names))


def read_metadata(path: Path, meta: dict[str, str]) -> tuple[list[str], int, int]:
    """class_names (a JSON list of strings), channels (1 or 3) and image_size (a positive integer)."""
    try:
        names, channels, size = (json.loads(meta[key]) for key in ("class_names", "channels", "image_size"))
    except ValueError:
        names = channels = size = None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and type(channels) is int and channels in (1, 3) and type(size) is int and 0 < size <= 65535):
        raise ModelError(f"{path}: its metadata class_names, channels, image_size are not a list of names, 1 or 3 and "
                         f"a size (got {shown(meta['class_names'])}, {shown(meta['channels'])}, "
                         f"{shown(meta['image_size'])}); export it again with python tools/export.py")
    return names, channels, size


def read_thresholds(path: Path, meta: dict[str, str], num_classes: int) -> list[float] | None:
    """A multi-label model's thresholds (a JSON list of one probability per class); None for a softmax model."""
    if meta.get("multilabel") != "true":
        return None
    try:
        thresholds = json.loads(meta.get("thresholds", ""))
    except ValueError:
        thresholds = None
    if not (isinstance(thresholds, list) and len(thresholds) == num_classes
            and all(type(t) in (int, float) and 0 <= t <= 1 for t in thresholds)):
        raise ModelError(f"{path}: its metadata marks it multi-label but its thresholds "
                         f"{shown(meta.get('thresholds'))} are not {num_classes} probabilities; export it again "
                         "with python tools/export.py")
    return thresholds


def check_input(session, path: Path, channels: int, size: int) -> None:
    """The graph's one input must be export.py's: uint8 'images' (N, channels, size, size), as the metadata says."""
    inputs = session.get_inputs()
    found = [(i.name, i.type, list(i.shape)) for i in inputs]
    expected_shape = [channels, size, size]
    if (len(inputs) != 1 or inputs[0].name != "images" or inputs[0].type != "tensor(uint8)"
            or len(inputs[0].shape) != 4 or list(inputs[0].shape[1:]) != expected_shape):
        raise ModelError(f"{path}: its input {shown(found)} disagrees with its metadata (export.py writes one uint8 "
                         f"input 'images' of shape (N, {channels}, {size}, {size})); export it again")
    outputs = session.get_outputs()
    if len(outputs) != 1 or outputs[0].type != "tensor(float)":
        raise ModelError(f"{path}: its outputs {shown([(o.name, o.type) for o in outputs])} are not one float "
                         "tensor of probabilities; export it again with python tools/export.py")


def predict(session, path: Path, images: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities (N, num_classes) in batches; a graph that fails or returns another shape is named."""
    try:
        probs = [session.run(None, {"images": images[i: i + BATCH]})[0] for i in range(0, len(images), BATCH)]
    except Exception as err:  # onnxruntime's own exception types
        raise ModelError(f"{path} failed on the images ({type(err).__name__}); export it again with "
                         "python tools/export.py") from None
    probs = np.concatenate(probs) if probs else np.zeros((0, num_classes), np.float32)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ModelError(f"{path} returns shape {probs.shape} for {len(images)} images but its metadata names "
                         f"{num_classes} classes; export it again with python tools/export.py")
    return probs


def model_name(path: Path, session) -> str:
    """The file and, from its metadata, the checkpoint it was exported from."""
    meta = session.get_modelmeta().custom_metadata_map
    about = [meta.get("model"), meta.get("data") and f"on {meta['data']}", meta.get("checkpoint") and
             f"from {meta['checkpoint']}", meta.get("epoch") and f"epoch {meta['epoch']}"]
    return f"{path} ({' '.join(part for part in about if part)[:200]})" if any(about) else str(path)


def write_csv(path: Path, text: str) -> None:
    """Through a temporary file beside it (like storage.replacing, which needs torch): never half a CSV."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{path}: {err.strerror}; choose an --output in a writable folder with free space") from None


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL.onnx", help="a model.onnx written by export.py")
    parser.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR", help="image files or folders of images")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    parser.add_argument("--output", metavar="CSV", help="also write the predictions to this CSV file")
    parser.add_argument("--min-confidence", metavar="P",
                        help="answer unknown when the top probability is below P, in (0, 1]")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise ModelError(f"--top-k must be at least 1, got {args.top_k}")
    try:
        threshold = None if args.min_confidence is None else min_confidence(args.min_confidence)
    except argparse.ArgumentTypeError as err:
        raise ModelError(f"--min-confidence {err}") from None
    session, names, channels, size, thresholds = open_model(Path(args.model))
    if thresholds is not None and threshold is not None:
        raise ModelError(NO_MIN_CONFIDENCE)
    top_k = min(args.top_k, len(names))
    files, images, failures = read_inputs(args.inputs, channels, size)  # uint8 (N, C, H, W)
    probs = predict(session, Path(args.model), images, len(names))
    if thresholds is not None:  # multi-label: every label at or above its threshold, as test.py --predict
        table = report_labels(files, probs, thresholds, names, model_name(Path(args.model), session))
    else:
        predictions = ranked(probs, names, top_k) if len(probs) else []
        table = report_predictions(files, predictions, top_k, model_name(Path(args.model), session), threshold)
    if args.output and files:  # nothing predicted: an earlier CSV stays as it was
        write_csv(Path(args.output), table)
        print(f"wrote {len(files)} predictions of {args.model} to {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    run_cli(main)
