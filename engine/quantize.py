"""int8 for the CPU: onnxruntime's static quantization of an exported model.onnx, and its speed.

Static, not dynamic: the weights are int8 per output channel and the activations int8 with ranges
measured once on calibration images (MinMax), stored as QuantizeLinear/DequantizeLinear pairs (QDQ)
that onnxruntime fuses into int8 kernels. Dynamic quantization (ranges measured per call) is not
used: on convolutions it is known to collapse a CNN's accuracy, and it is slower there. Only Conv,
Gemm and MatMul are quantized: the normalisation, the temperature and the softmax stay float, so
the probabilities keep their full resolution. tools/export.py --int8 checks the result on the test
split before it replaces an earlier model.int8.onnx.
"""
import os
import statistics
import time
from pathlib import Path

import numpy as np

from engine.errors import UserError

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
CALIBRATION_IMAGES = 512  # training images whose activation ranges set the int8 scales


def require_quantization() -> None:
    """onnxruntime's quantization module, or one UserError saying how to get it."""
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as err:
        raise UserError(f"export.py --int8 needs onnxruntime's quantization module ({err}); it comes with the "
                        "onnxruntime and onnx packages: pip install -r requirements-extras.txt") from None


def quantize(float_path: Path, int8_path: Path, images: np.ndarray, meta: dict[str, str]) -> None:
    """Write int8_path: float_path statically quantized (QDQ, per-channel int8 weights), its activation
    ranges calibrated on images (uint8 (N, C, H, W)), with meta as the file's metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(images, max(1, len(images) // 64)))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    prepared = int8_path.with_name(f"{int8_path.stem}.{os.getpid()}.pre.onnx")
    try:
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)  # folds batch norms into convs
        quantize_static(str(prepared), str(int8_path), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS)
        model = onnx.load(str(int8_path))
    except Exception as err:  # onnx and onnxruntime raise many types; the first line names the problem
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(f"onnxruntime cannot quantize this model ({type(err).__name__}: {text}); export it "
                        "without --int8") from None
    finally:
        prepared.unlink(missing_ok=True)
    if not any(node.op_type == "QuantizeLinear" for node in model.graph.node):
        int8_path.unlink(missing_ok=True)
        raise UserError(f"onnxruntime found nothing to quantize in this model (no {', '.join(QUANTIZED_OPS)} "
                        "layer it supports); export it without --int8")
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(int8_path))


def session(path: Path, threads: int = 0):
    """An onnxruntime CPU session for path; threads 0: onnxruntime's default."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own Fail / InvalidGraph types
        raise UserError(f"onnxruntime cannot run {path.name} ({str(err).strip().splitlines()[0][:200]}); "
                        "export it without --int8") from None


def probabilities(run, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """run (uint8 batch -> probabilities) over images, batch by batch: (N, num_classes)."""
    return np.concatenate([run(images[i: i + batch]) for i in range(0, len(images), batch)])


def latency_ms(run, images: np.ndarray, seconds: float) -> float:
    """Median milliseconds per call of run(images), after a warm-up."""
    for _ in range(10):
        run(images)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
