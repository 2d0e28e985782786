"""Export a checkpoint for deployment: model.onnx (for onnxruntime) and model.pt2 (torch.export).

Both take what a deployment has, uint8 images (N, C, H, W) at the checkpoint's channels and size
with any N, normalise them inside and return probabilities (N, num_classes). The class names,
image size, channels, mean/std and the template's format version are in each file's metadata.
Before the files replace earlier ones, both are checked against the PyTorch model on the
checkpoint's test split. Needs the extras: pip install -r requirements-extras.txt

    python tools/export.py                            # best.pt of the most recent run
    python tools/export.py checkpoints/<run>          # best.pt of that run; writes checkpoints/<run>/model.onnx, .pt2
    python tools/export.py checkpoints/<run>/last.pt --no-verify
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
from engine.checkpoint import FORMAT_VERSION, config_of, data_of, load_checkpoint, model_from_checkpoint  # noqa: E402
from engine.cli import Parser, add_checkpoint_arguments, checkpoint_and_config, run_cli  # noqa: E402
from engine.datasets import DataInfo  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.loaders import Loader, Normalise, eval_batch_size, make_eval_loader  # noqa: E402
from engine.metrics import evaluate  # noqa: E402
from engine.multilabel import refuse as refuse_multilabel  # noqa: E402

CPU = torch.device("cpu")
TORCH_DIR = os.path.dirname(torch.__file__)
VERIFY_BATCH = 256  # images per onnxruntime / .pt2 call during the check


def deployable(model: nn.Module, info: DataInfo) -> nn.Module:
    """uint8 images (N, C, H, W) -> normalised with info's mean/std -> model -> probabilities (N, num_classes)."""
    parts = OrderedDict(normalise=Normalise(info.mean, info.std), model=model, softmax=nn.Softmax(dim=1))
    return nn.Sequential(parts).eval()


def metadata(ckpt: dict, path: Path, accuracy: float | None) -> dict[str, str]:
    """What a deployment needs to feed the model and read its output; ONNX metadata values are strings."""
    info, cfg = data_of(ckpt), config_of(ckpt)
    meta = {"format_version": FORMAT_VERSION, "class_names": info.class_names, "image_size": info.image_size,
            "channels": info.in_channels, "mean": info.mean, "std": info.std,
            "input": "uint8 images (N, channels, image_size, image_size), 0..255",
            "output": "probabilities (N, len(class_names)), rows sum to 1",
            "model": cfg.model.name, "data": cfg.data.name, "checkpoint": f"{path.parent.name}/{path.name}",
            "epoch": ckpt["epoch"], "test_accuracy": accuracy}
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
    """Run `run` (uint8 numpy batch -> probabilities) over the images and compare with evaluate()'s results."""
    probs = np.concatenate([run(batch.numpy()) for batch in images.split(VERIFY_BATCH)])  # (N, num_classes)
    probs = torch.from_numpy(probs).float()
    agree = (probs.argmax(1) == results["top_classes"][:, 0]).double().mean().item()
    diff = (probs.gather(1, results["top_classes"]) - results["top_probs"]).abs().max().item()
    if agree < 1:
        raise UserError(f"{name} disagrees with PyTorch on {100 * (1 - agree):.2f}% of the test split's top-1 "
                        "classes; the earlier exported files were kept")
    return f"{name}: top-1 agreement {100 * agree:.2f}%, largest probability difference {diff:.1e}"


def verify(onnx_path: Path, pt2_path: Path, images: torch.Tensor, results: dict) -> list[str]:
    """Both files reloaded from disk must give PyTorch's top-1 class on every test image."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    reloaded = torch.export.load(pt2_path).module()
    with torch.inference_mode():
        return [compare("onnxruntime", lambda batch: session.run(None, {"images": batch})[0], images, results),
                compare("model.pt2", lambda batch: reloaded(torch.from_numpy(batch)).numpy(), images, results)]


def reference(ckpt: dict) -> tuple[Loader, dict]:
    """PyTorch's results on the test split in float32, which is what the exported graph computes
    (test.py evaluates under the run's autocast, e.g. bf16 for run.amp=bf16)."""
    cfg, info = config_of(ckpt), data_of(ckpt)
    loader = make_eval_loader(cfg, info, "test", eval_batch_size(cfg.train, CPU), CPU)
    return loader, evaluate(model_from_checkpoint(ckpt, CPU), loader, len(info.class_names), CPU)


def export(path: Path, check: bool = True) -> tuple[Path, Path]:
    """Write model.onnx and model.pt2 next to the checkpoint at path, checked on its test split unless told not."""
    require_extras()
    start = time.perf_counter()
    ckpt = load_checkpoint(path)
    refuse_multilabel(ckpt, path, "the export (softmax outputs)")
    info, results, images = data_of(ckpt), None, None
    if check:
        try:
            loader, results = reference(ckpt)
        except UserError as err:
            raise UserError(f"{err} (needed to check the export; pass --no-verify to skip the check)") from None
        images = loader.raw_images(torch.arange(len(results["labels"])))  # uint8 (N, C, H, W)
    example = torch.zeros(2, info.in_channels, info.image_size, info.image_size, dtype=torch.uint8)
    program = export_program(deployable(model_from_checkpoint(ckpt, CPU), info), example)
    meta = metadata(ckpt, path, results and results["accuracy"])
    onnx_path, pt2_path = path.with_name("model.onnx"), path.with_name("model.pt2")
    # Written under temporary names (torch.export.load wants the .pt2 suffix) and renamed once checked.
    tmp = {final: final.with_name(f"{final.stem}.{os.getpid()}.tmp{final.suffix}") for final in (onnx_path, pt2_path)}
    try:
        write_onnx(program, example, meta, tmp[onnx_path])
        torch.export.save(program, tmp[pt2_path], extra_files={"metadata.json": json.dumps(meta)})
        checks = verify(tmp[onnx_path], tmp[pt2_path], images, results) if check else []
        for final, temporary in tmp.items():
            os.replace(temporary, final)
    finally:
        for temporary in tmp.values():
            temporary.unlink(missing_ok=True)
    print(f"exported {path} ({meta['model']} on {meta['data']}, epoch {ckpt['epoch']}) in "
          f"{time.perf_counter() - start:.1f}s: {onnx_path} ({onnx_path.stat().st_size / 1e3:.0f} kB), "
          f"{pt2_path} ({pt2_path.stat().st_size / 1e3:.0f} kB)")
    print(f"input: uint8 images (N, {info.in_channels}, {info.image_size}, {info.image_size}); "
          f"output: probabilities (N, {len(info.class_names)}); classes: {', '.join(info.class_names)}")
    if check:
        print(f"checked on the test split ({len(images)} images, PyTorch accuracy {100 * results['accuracy']:.2f}%): "
              + "; ".join(checks))
    else:
        print("not checked on the test split (--no-verify)")
    return onnx_path, pt2_path


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check on the test split (when the data set is not on this machine)")
    args = parser.parse_args(argv)
    path, _ = checkpoint_and_config(args)
    for text in args.inputs:
        if text.startswith(("run.device=", "data.max_pixels=")):
            print(f"note: {text.partition('=')[0]} has no effect here: export.py exports and checks on the CPU "
                  "and reads no image files")
    export(path, check=not args.no_verify)


if __name__ == "__main__":
    run_cli(main)
