"""Export a checkpoint for deployment: model.onnx (for onnxruntime) and model.pt2 (torch.export).

Both take what a deployment has, uint8 images (N, C, H, W) at the checkpoint's channels and size
with any N, normalise them inside and return probabilities (N, num_classes), divided by the
checkpoint's temperature before the softmax; a multi-label model (data.multilabel) returns per-label
sigmoids instead, and its metadata adds the thresholds. The class names, image size, channels, mean/std,
temperature and the template's format version are in each file's metadata. Before the files
replace earlier ones, both are checked against the PyTorch model on the checkpoint's test split;
--int8 adds model.int8.onnx (engine/quantize.py), refused if its test accuracy drops more than
--max-drop points. Each check is recorded in exports.json and MODEL_CARD.md.
Needs the extras: pip install -r requirements-extras.txt

    python tools/export.py                            # best.pt of the most recent run
    python tools/export.py checkpoints/<run>          # best.pt of that run; writes checkpoints/<run>/model.onnx, .pt2
    python tools/export.py checkpoints/<run>/last.pt --no-verify
    python tools/export.py checkpoints/<run> --int8   # also model.int8.onnx, with its size and speed against float
"""
import argparse
import contextlib
import io
import json
import os
import time
import traceback
from collections import OrderedDict
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
from engine.calibration import TemperatureScale  # noqa: E402
from engine.card import record_export, write_card  # noqa: E402
from engine.checkpoint import (FORMAT_VERSION, config_of, data_of, load_checkpoint, model_from_checkpoint,  # noqa: E402
                               temperature_of)
from engine.cli import add_checkpoint_arguments, checkpoint_and_config, run_cli  # noqa: E402
from engine.datasets import load_split  # noqa: E402
from engine.datasource import DataInfo  # noqa: E402
from engine.entry import Parser  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.escape import printable  # noqa: E402
from engine.loaders import (Loader, Normalise, decoded, eval_batch_size, make_eval_loader,  # noqa: E402
                            subset)
from engine import needs, quantize  # noqa: E402
from engine.metrics import evaluate  # noqa: E402
from engine.multilabel import evaluate_multilabel  # noqa: E402
from engine.storage import writing  # noqa: E402
from engine.tta import VIEWS, with_tta  # noqa: E402

CPU = torch.device("cpu")
TORCH_DIR = os.path.dirname(torch.__file__)
VERIFY_BATCH = 256  # images per onnxruntime / .pt2 call during the check
SPEED_SECONDS = 0.5  # --int8: timed seconds for each of batch 1 and batch 64, float and int8
# multi-label: the largest probability difference the check accepts; a label set can only flip where a
# probability lies within that difference of its threshold, so the agreement is reported, not required
LABEL_TOLERANCE = 1e-4


def deployable(model: nn.Module, info: DataInfo, temperature: float = 1.0) -> nn.Module:
    """uint8 images (N, C, H, W) -> normalised with info's mean/std -> model -> logits / temperature ->
    probabilities (N, num_classes); multi-label: logits -> per-label sigmoids (N, K), no temperature."""
    head = (dict(sigmoid=nn.Sigmoid()) if info.multilabel
            else dict(temperature=TemperatureScale(temperature), softmax=nn.Softmax(dim=1)))
    return nn.Sequential(OrderedDict(normalise=Normalise(info.mean, info.std), model=model, **head)).eval()


def metadata(ckpt: dict, path: Path, score: float | None, tta: str) -> dict[str, str]:
    """What a deployment needs to feed the model and read its output; ONNX metadata values are strings.
    score: the test accuracy, or a multi-label model's test mAP."""
    info, cfg = data_of(ckpt), config_of(ckpt)
    meta = {"format_version": FORMAT_VERSION, "class_names": info.class_names, "image_size": info.image_size,
            "channels": info.in_channels, "mean": info.mean, "std": info.std,
            "input": "uint8 images (N, channels, image_size, image_size), 0..255",
            "output": "probabilities (N, len(class_names)), rows sum to 1",
            "model": cfg.model.name, "data": cfg.data.name, "checkpoint": f"{path.parent.name}/{path.name}",
            "epoch": ckpt["epoch"], "test_accuracy": score, "temperature": temperature_of(ckpt, path), "tta": tta}
    if info.multilabel:  # label k is present when its probability reaches thresholds[k]
        del meta["test_accuracy"], meta["temperature"]
        meta.update(output="per-label probabilities (N, len(class_names)), each a sigmoid in 0..1; a label is "
                    "present when its probability is at or above its entry in thresholds",
                    multilabel=True, thresholds=info.thresholds, test_map=score)
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in meta.items()}


def where_it_failed(err: Exception, model: nn.Module) -> str:
    """The innermost layer of model, and the innermost line of code outside torch, on the error's traceback."""
    names = {id(module): name for name, module in model.named_modules()}
    layer, line = "", ""
    for (frame, _), call in zip(traceback.walk_tb(err.__traceback__), traceback.extract_tb(err.__traceback__)):
        module = frame.f_locals.get("self")
        if id(module) in names:
            layer = f"layer '{names[id(module)] or 'the model itself'}' ({type(module).__name__})"
        if not call.filename.startswith(TORCH_DIR) and call.filename != __file__:
            line = f"{call.filename}:{call.lineno} `{call.line}`"
    return ", ".join(part for part in (layer, line) if part) or "an unknown place"


def export_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch; a model it cannot capture becomes one UserError naming the layer."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # on failure it prints the partial graph there
            return torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as err:  # torch.export raises many types (dynamo UserError, data-dependent guards, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"torch.export cannot export this model: {reason} (in {where_it_failed(err, module)}); "
                        "forward must not branch on tensor values in Python (use torch.where) or change "
                        "shape with the data") from None


def require_extras() -> None:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"export.py needs the package '{name}'; pip install -r requirements-extras.txt") from None


def write_onnx(program: torch.export.ExportedProgram, example: torch.Tensor, meta: dict, path: Path) -> None:
    """Convert the exported program (its batch dimension stays dynamic) and save it with the metadata."""
    try:
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, input_names=["images"],
                                         output_names=["probabilities"], external_data=False, verbose=False)
    except Exception as err:  # the converter's errors have many types too; name the first line
        raise UserError(f"torch.onnx could not convert the model: {str(err).strip().splitlines()[0]}") from None
    onnx_program.model.metadata_props.update(meta)
    onnx_program.save(path)


def compare(name: str, run, images: torch.Tensor, results: dict) -> str:
    """Run `run` (uint8 numpy batch -> probabilities) over the images and compare with evaluate()'s results
    (or evaluate_multilabel()'s)."""
    probs = np.concatenate([run(batch.numpy()) for batch in images.split(VERIFY_BATCH)])  # (N, num_classes)
    probs = torch.from_numpy(probs).float()
    if "thresholds" in results:
        return compare_labels(name, probs, results)
    agree = (probs.argmax(1) == results["top_classes"][:, 0]).double().mean().item()
    diff = (probs.gather(1, results["top_classes"]) - results["top_probs"]).abs().max().item()
    if agree < 1:
        raise UserError(f"{name} disagrees with PyTorch on {100 * (1 - agree):.2f}% of the test split's top-1 "
                        "classes; the earlier exported files were kept")
    return f"{name}: top-1 agreement {100 * agree:.2f}%, largest probability difference {diff:.1e}"


def compare_labels(name: str, probs: torch.Tensor, results: dict) -> str:
    """Multi-label: the largest difference from PyTorch's probabilities (N, K), at most LABEL_TOLERANCE, and the
    share of images whose set of labels at or above their thresholds is PyTorch's."""
    thresholds = torch.tensor(results["thresholds"])
    diff = (probs - results["probs"]).abs().max().item()
    agree = ((probs >= thresholds) == (results["probs"] >= thresholds)).all(1).double().mean().item()
    if not diff <= LABEL_TOLERANCE:
        raise UserError(f"{name}'s probabilities differ from PyTorch's by up to {diff:.1e} on the test split (more "
                        f"than {LABEL_TOLERANCE:g}); the earlier exported files were kept")
    return (f"{name}: label sets above threshold agree on {100 * agree:.2f}% of images, largest probability "
            f"difference {diff:.1e}")


def verify(onnx_path: Path, pt2_path: Path, images: torch.Tensor, results: dict) -> list[str]:
    """Both files reloaded from disk must give PyTorch's top-1 class on every test image (multi-label: its
    probabilities within LABEL_TOLERANCE)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    reloaded = torch.export.load(pt2_path).module()
    with torch.inference_mode():
        return [compare("onnxruntime", lambda batch: session.run(None, {"images": batch})[0], images, results),
                compare("model.pt2", lambda batch: reloaded(torch.from_numpy(batch)).numpy(), images, results)]


def reference(ckpt: dict, tta: str, temperature: float = 1.0) -> tuple[Loader, dict]:
    """PyTorch's results on the test split in float32 over the same views, which is what the exported graph
    computes (test.py evaluates under the run's autocast, e.g. bf16 for run.amp=bf16)."""
    cfg, info = config_of(ckpt), data_of(ckpt)
    loader = make_eval_loader(cfg, info, "test", eval_batch_size(cfg.train, CPU), CPU)
    model = with_tta(model_from_checkpoint(ckpt, CPU), tta, info.multilabel)
    if info.multilabel:  # at the thresholds stored in the checkpoint
        return loader, evaluate_multilabel(model, loader, CPU, thresholds=info.thresholds)
    return loader, evaluate(model, loader, len(info.class_names), CPU, temperature=temperature)


def export(path: Path, check: bool = True, tta: str = "none", int8: bool = False,
           max_drop: float = 0.5) -> tuple[Path, Path]:
    """Write model.onnx and model.pt2 next to the checkpoint at path, checked on its test split unless told not;
    with tta, the views' averaged probabilities are computed inside the graph; with int8 also model.int8.onnx,
    refused if its test accuracy is more than max_drop points below float32's."""
    require_extras()
    if int8:
        quantize.require_quantization()
        if not check:
            raise UserError("--int8 is checked on the test split before it is written, so it cannot go with "
                            "--no-verify; export on a machine that has the data set")
    start = time.perf_counter()
    ckpt = load_checkpoint(path)
    info, results, images, temperature = data_of(ckpt), None, None, temperature_of(ckpt, path)
    needs.check(needs.for_checkpoint(needs.EXPORT, ckpt, tta, needs.option_names(int8=int8)))  # engine/needs.py
    if check:
        try:
            loader, results = reference(ckpt, tta, temperature)
        except UserError as err:
            raise UserError(f"{err} (needed to check the export; pass --no-verify to skip the check)") from None
        images = loader.raw_images(torch.arange(loader.num_images))  # uint8 (N, C, H, W)
    example = torch.zeros(2, info.in_channels, info.image_size, info.image_size, dtype=torch.uint8)
    model = with_tta(model_from_checkpoint(ckpt, CPU), tta, info.multilabel)
    program = export_program(deployable(model, info, temperature), example)
    meta = metadata(ckpt, path, results and results["map" if info.multilabel else "accuracy"], tta)
    onnx_path, pt2_path = path.with_name("model.onnx"), path.with_name("model.pt2")
    # Written under temporary names (torch.export.load wants the .pt2 suffix) and renamed once checked.
    tmp = {final: final.with_name(f"{final.stem}.{os.getpid()}.tmp{final.suffix}") for final in (onnx_path, pt2_path)}
    try:
        with writing(onnx_path):  # a full disk names the file, not only "No space left on device"
            write_onnx(program, example, meta, tmp[onnx_path])
        with writing(pt2_path):
            torch.export.save(program, tmp[pt2_path], extra_files={"metadata.json": json.dumps(meta)})
        checks = verify(tmp[onnx_path], tmp[pt2_path], images, results) if check else []
        for final, temporary in tmp.items():
            with writing(final):
                os.replace(temporary, final)
    finally:
        for temporary in tmp.values():
            temporary.unlink(missing_ok=True)
    print(f"exported {path} ({meta['model']} on {meta['data']}, epoch {ckpt['epoch']}) in "
          f"{time.perf_counter() - start:.1f}s: {onnx_path} ({onnx_path.stat().st_size / 1e3:.0f} kB), "
          f"{pt2_path} ({pt2_path.stat().st_size / 1e3:.0f} kB)")
    print_checks(info, results, checks, len(images) if check else 0)
    for final, check_text in zip((onnx_path, pt2_path), checks or ["not checked (--no-verify)"] * 2):
        record_export(final, path, ckpt["epoch"], check_text)
    if int8:
        export_int8(path, ckpt, meta, (images, results), max_drop)
    refresh_card(path.parent)
    return onnx_path, pt2_path


def print_checks(info: DataInfo, results: dict | None, checks: list[str], num_images: int) -> None:
    """The files' input and output, and what the check on the test split found (results None: not checked)."""
    kind, score = ("per-label probabilities", "mAP") if info.multilabel else ("probabilities", "accuracy")
    print(f"input: uint8 images (N, {info.in_channels}, {info.image_size}, {info.image_size}); "
          f"output: {kind} (N, {len(info.class_names)}); classes: {', '.join(map(printable, info.class_names))}")
    if results is None:
        print("not checked on the test split (--no-verify)")
        return
    print(f"checked on the test split ({num_images} images, PyTorch {score} {100 * results[score.lower()]:.2f}%): "
          + "; ".join(checks))


def calibration_images(ckpt: dict) -> np.ndarray:
    """A seeded sample (run.seed) of the training split's uint8 images, to set the int8 activation ranges."""
    cfg = config_of(ckpt)
    images, _ = load_split(cfg.data, "train")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.run.seed))
    return decoded(subset(images, order[:quantize.CALIBRATION_IMAGES].sort().values)).numpy()


def export_int8(path: Path, ckpt: dict, meta: dict, check: tuple[torch.Tensor, dict], max_drop: float) -> Path:
    """model.int8.onnx from model.onnx, checked on the test split against float32 before it replaces an earlier one."""
    int8_path = path.with_name("model.int8.onnx")
    tmp = int8_path.with_name(f"{int8_path.stem}.{os.getpid()}.tmp.onnx")
    sample = calibration_images(ckpt)
    onnx_path, (images, results), meta = path.with_name("model.onnx"), check, dict(meta)  # the float model's
    meta["quantization"] = (f"int8, onnxruntime static QDQ, per-channel weights, calibrated on {len(sample)} "
                            f"training images (seed {config_of(ckpt).run.seed})")
    try:
        with writing(int8_path):
            quantize.quantize(onnx_path, tmp, sample, meta)
        float_run, int8_run = (quantize.session(p, threads=1) for p in (onnx_path, tmp))
        probs = quantize.probabilities(lambda batch: int8_run.run(None, {"images": batch})[0], images.numpy())
        labels = results["labels"].numpy()
        int8_accuracy = float((probs.argmax(1) == labels).mean())
        agree = float((probs.argmax(1) == results["top_classes"][:, 0].numpy()).mean())
        drop = 100 * (results["accuracy"] - int8_accuracy)
        numbers = (f"test accuracy {100 * int8_accuracy:.2f}% against float32's {100 * results['accuracy']:.2f}% "
                   f"(a drop of {drop:.2f} points; --max-drop {max_drop:g}), top-1 agreement {100 * agree:.2f}%")
        if drop > max_drop:
            raise UserError(f"model.int8.onnx was refused: {numbers}; the earlier model.int8.onnx (if any) was "
                            "kept; use the float model.onnx, or raise --max-drop if the loss is acceptable")
        speed = compare_speed(onnx_path, tmp, float_run, int8_run, images.numpy())
        with writing(int8_path):
            os.replace(tmp, int8_path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"int8: {int8_path} checked on the test split: {numbers}")
    print(f"int8: {speed}")
    record_export(int8_path, path, ckpt["epoch"], numbers)
    return int8_path


def compare_speed(float_path: Path, int8_path: Path, float_run, int8_run, images: np.ndarray) -> str:
    """File sizes, batch-1 latency and batch-64 throughput of the two sessions (one thread each)."""
    timings = {}
    for name, run in (("float", float_run), ("int8", int8_run)):
        infer = lambda batch, run=run: run.run(None, {"images": batch})[0]  # noqa: E731
        timings[name] = (quantize.latency_ms(infer, images[:1], SPEED_SECONDS),
                         quantize.latency_ms(infer, np.resize(images, (64, *images.shape[1:])), SPEED_SECONDS))
    (f1, f64), (q1, q64) = timings["float"], timings["int8"]
    size, float_size = int8_path.stat().st_size, float_path.stat().st_size
    return (f"{size / 1e3:.0f} kB against float's {float_size / 1e3:.0f} kB ({size / float_size:.2f}x); one thread: "
            f"batch 1 {q1:.3f} ms against {f1:.3f} ms (speed-up {f1 / q1:.2f}x), batch 64 {64e3 / q64:,.0f} against "
            f"{64e3 / f64:,.0f} images/s (speed-up {f64 / q64:.2f}x)")


def refresh_card(run_dir: Path) -> None:
    """MODEL_CARD.md of the run folder, with the exports just recorded (its test results are kept)."""
    if (run_dir / "best.pt").is_file():
        write_card(run_dir, load_checkpoint(run_dir / "best.pt"))


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check on the test split (when the data set is not on this machine)")
    parser.add_argument("--tta", choices=list(VIEWS), default="none",
                        help="bake test-time augmentation into the graph: probabilities averaged over these views")
    parser.add_argument("--int8", action="store_true",
                        help="also write model.int8.onnx (static int8 quantization), checked on the test split")
    parser.add_argument("--max-drop", type=points, default=0.5, metavar="POINTS",
                        help="with --int8: the most test accuracy it may lose against float32, in points (default 0.5)")
    args = parser.parse_args(argv)
    path, _ = checkpoint_and_config(args)
    for text in args.inputs:
        if text.startswith(("run.device=", "data.max_pixels=")):
            print(f"note: {text.partition('=')[0]} has no effect here: export.py exports and checks on the CPU "
                  "and reads no image files")
    export(path, check=not args.no_verify, tta=args.tta, int8=args.int8, max_drop=args.max_drop)


def points(text: str) -> float:
    """argparse type of --max-drop: accuracy points, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected accuracy points, 0 or more (e.g. 0.5), got {text[:40]!r}")
    return value


if __name__ == "__main__":
    run_cli(main)
