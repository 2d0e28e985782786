"""Inference speed on this CPU: PyTorch eager vs onnxruntime, float32 and int8, for the exported graph
tools/export.py writes.

All run the same thing: uint8 images in, normalisation, the model, softmax out; the int8 rows are
export.py --int8's static quantization (engine/quantize.py), calibrated here on random images.
Weights are random (speed does not depend on them). Prints batch-1 latency (median) and batch-64
throughput.

    python benchmarks/inference.py
    python benchmarks/inference.py --threads 1    # one thread each: steadier on a machine others are using
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.config import load_config  # noqa: E402
from engine.datasets import DataInfo  # noqa: E402
from engine.entry import Parser, run_cli  # noqa: E402
from engine.quantize import latency_ms, quantize, require_quantization  # noqa: E402
from model import build_model  # noqa: E402
from tools.export import deployable, export_program, require_extras, write_onnx  # noqa: E402

# name -> (config overrides, channels, image size)
MODELS = {
    "default CNN, digits 1x8x8": ([], 1, 8),
    "default CNN, MNIST 1x28x28": (["data.name=mnist"], 1, 28),
    "CNN 64/128/256 + fc 256, CIFAR 3x32x32": (["model.conv_blocks.0.out_channels=64",
                                                 "model.conv_blocks.1.out_channels=128",
                                                 "model.conv_blocks.2.out_channels=256", "model.hidden=[256]"], 3, 32),
}


def measure(name: str, overrides: list[str], channels: int, size: int, args: argparse.Namespace,
            folder: Path) -> None:
    cfg = load_config(None, overrides)
    model = build_model(cfg.model, channels, 10, size)
    params = sum(p.numel() for p in model.parameters())
    info = DataInfo(channels, size, [str(i) for i in range(10)], mean=[0.5] * channels, std=[0.25] * channels)
    module = deployable(model, info)
    example = torch.zeros(2, channels, size, size, dtype=torch.uint8)
    path = folder / "model.onnx"
    write_onnx(export_program(module, example), example, {}, path)

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads  # 0: onnxruntime's default, one per core
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    int8_path = folder / "model.int8.onnx"
    quantize(path, int8_path, np.random.default_rng(2).integers(0, 256, (256, channels, size, size), np.uint8), {})
    int8 = onnxruntime.InferenceSession(int8_path, options, providers=["CPUExecutionProvider"])

    def eager(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).numpy()

    for runtime, run in (("PyTorch eager", eager), ("onnxruntime", lambda b: session.run(None, {"images": b})[0]),
                         ("onnxruntime int8", lambda b: int8.run(None, {"images": b})[0])):
        one = np.random.default_rng(0).integers(0, 256, (1, channels, size, size), dtype=np.uint8)
        many = np.random.default_rng(1).integers(0, 256, (64, channels, size, size), dtype=np.uint8)
        ms_one, ms_many = latency_ms(run, one, args.seconds), latency_ms(run, many, args.seconds)
        print(f"| {name} | {params:,} | {runtime} | {ms_one:.3f} | {64 / ms_many * 1000:,.0f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=0, help="threads for both runtimes; 0: their defaults")
    args = parser.parse_args(argv)
    require_extras()
    require_quantization()
    import onnxruntime

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
    print("| model | parameters | runtime | batch 1: ms | batch 64: images/s |\n| --- | ---: | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name, (overrides, channels, size) in MODELS.items():
            measure(name, overrides, channels, size, args, Path(folder))


if __name__ == "__main__":
    run_cli(main)
