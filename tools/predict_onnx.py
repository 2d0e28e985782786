"""Predict the classes of image files with a model.onnx from export.py, without PyTorch.

Needs only onnxruntime, numpy and Pillow (pip install onnxruntime numpy pillow), reads the class
names and image size from the file's metadata, and prints the same table and CSV as
`python test.py --predict`.

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
from engine.imagefiles import min_confidence, ranked, read_inputs, report_predictions  # noqa: E402

BATCH = 256  # images per onnxruntime call
REQUIRED = ("class_names", "image_size", "channels")  # metadata keys written by export.py


class ModelError(Exception):
    """A model file that cannot be used; printed as one line."""


def open_model(path: Path):
    """An onnxruntime session for path, and the class names, channels and image size from its metadata."""
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
    return session, json.loads(meta["class_names"]), int(meta["channels"]), int(meta["image_size"])


def write_csv(path: Path, text: str) -> None:
    """Through a temporary file beside it (like storage.replacing, which needs torch): never half a CSV."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{path}: {err.strerror}; choose an --output in a writable folder with free space") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL.onnx", help="a model.onnx written by export.py")
    parser.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR", help="image files or folders of images")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    parser.add_argument("--output", metavar="CSV", help="also write the predictions to this CSV file")
    parser.add_argument("--min-confidence", metavar="P",
                        help="answer unknown when the top probability is below P, in (0, 1]")
    args = parser.parse_args()
    if args.top_k < 1:
        raise ModelError(f"--top-k must be at least 1, got {args.top_k}")
    try:
        threshold = None if args.min_confidence is None else min_confidence(args.min_confidence)
    except argparse.ArgumentTypeError as err:
        raise ModelError(f"--min-confidence {err}") from None
    session, names, channels, size = open_model(Path(args.model))
    top_k = min(args.top_k, len(names))
    files, images, failures = read_inputs(args.inputs, channels, size)  # uint8 (N, C, H, W)
    probs = [session.run(None, {"images": images[i: i + BATCH]})[0] for i in range(0, len(images), BATCH)]
    predictions = ranked(np.concatenate(probs), names, top_k) if probs else []
    table = report_predictions(files, predictions, top_k, threshold)
    if args.output:
        write_csv(Path(args.output), table)
        print(f"wrote {len(files)} predictions to {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
