"""export.py (ONNX and torch.export) and predict_onnx.py, which must work without PyTorch."""
import argparse
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("onnxruntime", reason="onnxruntime is absent; pip install -r requirements-extras.txt")
pytest.importorskip("onnxscript", reason="onnxscript is absent; pip install -r requirements-extras.txt")

from conftest import ROOT, copy_run  # noqa: E402
from engine.builtin_sets import load_digits  # noqa: E402
from engine.checkpoint import FORMAT_VERSION, data_of, load_checkpoint, model_from_checkpoint  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.imagefiles import MAX_PIXELS  # noqa: E402
from engine.loaders import Batching, Loader  # noqa: E402
import test as test_script  # noqa: E402
from tools import export  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The session's tiny run, copied (export writes into the run folder) and exported."""
    run_dir = copy_run(tiny_run, tmp_path_factory.mktemp("export"))
    onnx_path, pt2_path = export.export(run_dir / "best.pt")
    return load_checkpoint(run_dir / "best.pt"), onnx_path, pt2_path


def pytorch_probs(ckpt: dict, images: torch.Tensor) -> torch.Tensor:
    """The training pipeline's view: the Loader's normalisation, the model, the temperature, softmax."""
    loader = Loader(images, torch.zeros(len(images), dtype=torch.int64), Batching(512), data_of(ckpt), CPU)
    model = model_from_checkpoint(ckpt, CPU).eval()
    temperature = ckpt["calibration"]["temperature"]  # fitted when the tiny run's training ended
    with torch.inference_mode():
        return torch.cat([(model(batch) / temperature).softmax(1) for batch, _ in loader])


def test_files_carry_what_a_deployment_needs(exported):
    import onnxruntime

    ckpt, onnx_path, pt2_path = exported
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    info = data_of(ckpt)
    assert json.loads(meta["class_names"]) == info.class_names == [str(d) for d in range(10)]
    assert (int(meta["image_size"]), int(meta["channels"])) == (8, 1)
    assert json.loads(meta["mean"]) == info.mean and json.loads(meta["std"]) == info.std
    assert int(meta["format_version"]) == FORMAT_VERSION and 0 < float(meta["test_accuracy"]) <= 1
    (images,) = session.get_inputs()
    assert images.type == "tensor(uint8)" and isinstance(images.shape[0], str) and images.shape[1:] == [1, 8, 8]
    extra = {"metadata.json": ""}
    torch.export.load(pt2_path, extra_files=extra)
    assert json.loads(extra["metadata.json"]) == meta


def test_onnx_and_pt2_give_pytorchs_probabilities(exported):
    import onnxruntime

    ckpt, onnx_path, pt2_path = exported
    images, _ = load_digits("test")  # uint8 (360, 1, 8, 8)
    expected = pytorch_probs(ckpt, images)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    for batch in (1, 64):  # the batch dimension is dynamic
        probs = session.run(None, {"images": images[:batch].numpy()})[0]
        assert probs.shape == (batch, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert np.abs(probs - expected[:batch].numpy()).max() < 1e-4
        assert (probs.argmax(1) == expected[:batch].argmax(1).numpy()).all()
    reloaded = torch.export.load(pt2_path).module()
    assert torch.allclose(reloaded(images[:64]), expected[:64], atol=1e-5)


def test_a_model_torch_export_refuses_is_one_error_naming_the_layer():
    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.mean() > 0:  # a Python branch on a tensor's value
                return x * 2
            return x

    model = nn.Sequential(nn.Conv2d(1, 4, 3), Gate(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    with pytest.raises(UserError) as err:
        export.export_program(nn.Sequential(export.Normalise([0.5], [0.2]), model),
                              torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    message = str(err.value)
    assert "torch.export cannot export" in message and "data-dependent" in message
    assert "(Gate)" in message and "if x.mean() > 0:" in message and "\n" not in message


def test_predict_onnx_runs_without_torch_and_agrees_with_test_py(exported, tmp_path):
    ckpt, onnx_path, _ = exported
    images, _ = load_digits("test")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(24):
        Image.fromarray(images[i, 0].numpy()).resize((28, 28)).save(folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    onnx_csv, torch_csv = tmp_path / "onnx.csv", tmp_path / "torch.csv"
    # -X importtime lists every module the process imports, on stderr.
    script = ROOT / "tools" / "predict_onnx.py"
    result = subprocess.run([sys.executable, "-X", "importtime", str(script), str(onnx_path),
                             str(folder), "--output", str(onnx_csv)], capture_output=True, text=True, timeout=120)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "onnxruntime" in imported and not [m for m in imported if m.split(".")[0] == "torch"]
    assert result.returncode == 1 and "notes.txt is not a readable image" in result.stderr  # others still predicted
    assert test_script.predict(onnx_path.with_name("best.pt"),
                               argparse.Namespace(predict=[str(folder)], top_k=5, output=str(torch_csv)), CPU,
                               max_pixels=MAX_PIXELS) == 1
    onnx_rows, torch_rows = (list(csv.reader(open(path))) for path in (onnx_csv, torch_csv))
    # test.py predicts in the run's precision: bf16 on a CPU with native bf16 (~3 significant digits), else float32
    tolerance = 1e-4 if ckpt["amp"] == "none" else 1e-2
    assert onnx_rows[0] == torch_rows[0] and len(onnx_rows) == 25
    for ours, theirs in zip(onnx_rows[1:], torch_rows[1:]):
        assert ours[:2] == theirs[:2]  # file and top-1 class
        assert abs(float(ours[2]) - float(theirs[2])) < tolerance
    assert f"{folder / '00.png'}: " in result.stdout
