"""Multi-label classification (data.multilabel): the metrics against scikit-learn, the loss against PyTorch's,
and a tiny generated set that trains, reports (test.py's numbers are training's), predicts, exports (sigmoids and
thresholds), predicts with onnxruntime as test.py does, and shows its labels on the demo."""
import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY, call_script
from engine.checkpoint import data_of, load_checkpoint, model_from_checkpoint
from engine.errors import UserError
from engine.imagefiles import NO_LABEL, above_thresholds, read_inputs, report_labels
from engine.loaders import Batching, Loader
from engine.multilabel import average_precision, bce, best_thresholds, scores_at
import test as test_script
from tools import demo, export, predict_onnx
import train

CPU = torch.device("cpu")

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


def test_average_precision_and_thresholds_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(200, 4, generator=generator) < 0.3).float()
    probs = ((targets + torch.rand(200, 4, generator=generator)) / 2).round(decimals=1)  # many ties
    for k in range(4):
        assert average_precision(probs[:, k], targets[:, k]) == pytest.approx(
            metrics.average_precision_score(targets[:, k].numpy(), probs[:, k].numpy()), abs=1e-12)
    thresholds = best_thresholds(probs, targets)
    scores = scores_at(probs, targets, thresholds)
    for k in range(4):
        candidates = [metrics.f1_score(targets[:, k], probs[:, k] >= t) for t in probs[:, k].unique().tolist()]
        assert scores["f1"][k] == pytest.approx(max(candidates), abs=1e-12)
    predicted = (probs >= torch.tensor(thresholds)).numpy()
    assert scores["micro_f1"] == pytest.approx(metrics.f1_score(targets.numpy(), predicted, average="micro"))
    assert scores["subset_accuracy"] == pytest.approx(metrics.accuracy_score(targets.numpy(), predicted))


def test_bce_is_pytorchs_with_pos_weight_and_smoothed_targets():
    logits, targets = torch.randn(6, 3), (torch.rand(6, 3) < 0.5).float()
    weight = torch.tensor([1.0, 2.0, 0.5])
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=weight, reduction="sum")(logits, targets * 0.9 + 0.05) / 6
    assert bce(logits, targets, weight, label_smoothing=0.1) == pytest.approx(expected.item(), rel=1e-6)


def write_multilabel(root, count=60):
    """root/img/<i>.png: a grey of its own (no two images alike, so no probability sits exactly on a threshold)
    with a coloured quarter per label present (some images have none)."""
    (root / "img").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    rows = ["file,labels,split"]
    for i in range(count):
        present = [name for name in COLOURS if torch.rand(1, generator=generator) < 0.5]
        image = Image.new("RGB", (8, 8), (128 + i,) * 3)
        for q, name in enumerate(present):
            image.paste(COLOURS[name], (4 * (q % 2), 4 * (q // 2), 4 * (q % 2) + 4, 4 * (q // 2) + 4))
        image.save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{' '.join(present)},{'test' if i >= count * 3 // 4 else 'train'}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    """The tiny multi-label set trained once: (the folder it ran in, what train.py printed). In float32
    (run.amp=none), so that test.py's probabilities are the exported float32 graph's on any CPU."""
    root = tmp_path_factory.mktemp("multilabel")
    write_multilabel(root)
    args = ["data.name=csv", f"data.root={root}", "data.labels=train.csv", "data.label_column=labels",
            "data.multilabel=true", "data.image_size=8", "data.val_fraction=0.25", "train.best_metric=map",
            "train.class_weights=balanced", "train.label_smoothing=0.1", "train.mixup_alpha=0.2", *TINY,
            "run.amp=none", "run.name=m"]
    code, out, err = call_script(train.main, *args, cwd=root)
    assert code == 0, err
    return root, out


def test_a_tiny_multilabel_set_trains_reports_and_predicts(multilabel_run):
    root, out = multilabel_run
    ckpt = load_checkpoint(root / "checkpoints" / "m" / "best.pt")
    assert ckpt["data"]["class_names"] == ["blue", "green", "red"] and ckpt["data"]["multilabel"]
    assert len(ckpt["data"]["thresholds"]) == 3 and " map " in out
    code, out, err = call_script(test_script.main, "checkpoints/m", "--split", "val", cwd=root)
    assert code == 0, err
    report = json.loads((root / "checkpoints" / "m" / "val_report.json").read_text())
    row = ckpt["history"][ckpt["epoch"] - 1]
    assert report["map"] == pytest.approx(row["val_map"], abs=1e-12)  # test.py's numbers are training's
    assert report["macro_f1"] == pytest.approx(row["val_macro_f1"], abs=1e-12)
    assert [r["threshold"] for r in report["per_label"]] == ckpt["data"]["thresholds"]
    assert (root / "checkpoints" / "m" / "val_label_scores.png").is_file()
    code, out, err = call_script(test_script.main, "checkpoints/m", "--predict", "img/0.png", cwd=root)
    assert code == 0, err
    line = out.splitlines()[-1].removeprefix("img/0.png: ")
    labels = [] if line == NO_LABEL else [pair.split()[0] for pair in line.split(", ")]
    assert set(labels) <= set(COLOURS)  # every label at or above its threshold, none when none is


@pytest.fixture(scope="module")
def multilabel_export(multilabel_run):
    """The tiny multi-label run exported (checked on its test split): (checkpoint, model.onnx, model.pt2)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is absent; pip install -r requirements-extras.txt")
    pytest.importorskip("onnxscript", reason="onnxscript is absent; pip install -r requirements-extras.txt")
    path = multilabel_run[0] / "checkpoints" / "m" / "best.pt"
    onnx_path, pt2_path = export.export(path)
    return load_checkpoint(path), onnx_path, pt2_path


def test_export_gives_pytorchs_sigmoids_and_the_thresholds(multilabel_export):
    import onnxruntime

    ckpt, onnx_path, pt2_path = multilabel_export
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["multilabel"] == "true" and json.loads(meta["thresholds"]) == ckpt["data"]["thresholds"]
    assert meta["output"].startswith("per-label probabilities") and "temperature" not in meta
    info = data_of(ckpt)
    images = torch.from_numpy(read_inputs([str(multilabel_export[1].parents[2] / "img")], 3, 8)[1])  # (60, 3, 8, 8)
    loader = Loader(images, torch.zeros(len(images), 3), Batching(64), info, CPU)
    with torch.inference_mode():
        expected = model_from_checkpoint(ckpt, CPU).eval()(next(iter(loader))[0]).sigmoid()  # (60, 3)
    probs = session.run(None, {"images": images.numpy()})[0]
    assert probs.shape == (60, 3) and np.abs(probs - expected.numpy()).max() < 1e-5
    assert not np.allclose(probs.sum(1), 1)  # sigmoids, not a softmax
    assert torch.allclose(torch.export.load(pt2_path).module()(images), expected, atol=1e-5)


def test_predict_onnx_prints_the_labels_test_py_prints(multilabel_export, tmp_path):
    _, onnx_path, _ = multilabel_export
    root = onnx_path.parents[2]
    files = [f"img/{i}.png" for i in range(45, 60)]  # the test split, none of them a validation image
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "tools" / "predict_onnx.py"),
                             str(onnx_path), *files, "--output", str(tmp_path / "onnx.csv")], cwd=root,
                            capture_output=True, text=True, timeout=120)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert result.returncode == 0 and not [m for m in imported if m.split(".")[0] == "torch"]
    code, out, err = call_script(test_script.main, "checkpoints/m", "--predict", *files, "--output",
                                 str(tmp_path / "torch.csv"), cwd=root)
    assert code == 0, err

    def labels(text: str) -> list[str]:
        """Per image line `file: red 93.1%, blue 60.2%` (or NO_LABEL), the file and its labels."""
        return [re.sub(r" \d+\.\d%", "", line) for line in text.splitlines() if line.startswith("img/")]

    assert labels(result.stdout) == labels(out) and len(labels(out)) == 15
    onnx_rows, torch_rows = (list(csv.reader(open(tmp_path / name))) for name in ("onnx.csv", "torch.csv"))
    assert onnx_rows[0] == torch_rows[0] and len(onnx_rows) == 16
    for ours, theirs in zip(onnx_rows[1:], torch_rows[1:]):
        assert ours[:-1:2] == theirs[:-1:2]  # the file and the labels
        assert all(abs(float(a) - float(b)) < 1e-5 for a, b in zip(ours[2:-1:2], theirs[2:-1:2]) if a)


def test_demo_shows_the_labels_above_threshold(multilabel_run):
    root = multilabel_run[0]
    ckpt = load_checkpoint(root / "checkpoints" / "m" / "best.pt")
    page = demo.load_demo(root / "checkpoints" / "m" / "best.pt", CPU, max_pixels=1_000_000)
    assert "test mAP" in page.title
    for i in (45, 46, 47):
        img = Image.open(root / "img" / f"{i}.png")
        scores, cam, maps, verdict = demo.analyse(page, img)
        image = torch.from_numpy(read_inputs([str(root / "img" / f"{i}.png")], 3, 8)[1])
        with torch.inference_mode():
            logits = page.model(next(iter(Loader(image, torch.zeros(1, 3), Batching(1), data_of(ckpt), CPU)))[0])
        (expected,) = above_thresholds(logits.sigmoid(), ckpt["data"]["thresholds"], ckpt["data"]["class_names"])
        assert list(scores) == [name for name, _ in expected]
        assert all(abs(scores[name] - p) < 1e-6 for name, p in expected)
        assert verdict.startswith("labels: ") and cam.shape == (224, 224, 3)


def test_options_that_do_not_apply_to_multilabel_are_one_line(multilabel_export):
    root = multilabel_export[1].parents[2]
    single = "needs single-label data (one class per image), and this model is multi-label"
    for main, args, says in ((export.main, ["checkpoints/m", "--int8"], f"--int8 {single}"),
                             (predict_onnx.main, ["checkpoints/m/model.onnx", "img/0.png", "--min-confidence", "0.9"],
                              "--min-confidence does not apply to a multi-label model"),
                             (test_script.main, ["checkpoints/m", "--predict", "img/0.png", "--min-confidence", "0.9"],
                              f"--min-confidence {single}"),
                             (test_script.main, ["checkpoints/m", "--calibrate"], f"--calibrate {single}")):
        code, out, err = call_script(main, *args, cwd=root)
        assert code == 2 and err.startswith(f"error: {says}") and err.count("\n") == 1, (args, err)


def test_multilabel_tta_averages_sigmoids_in_test_py_and_the_export(multilabel_export, tmp_path):
    """Each label's probability is the mean of its sigmoids over the views, in test.py's report and in the exported
    graph (whose own check compares it with PyTorch's), never a softmax across labels."""
    import onnxruntime

    root, ckpt = multilabel_export[1].parents[2], multilabel_export[0]
    model = model_from_checkpoint(ckpt, CPU).eval()
    images = torch.from_numpy(read_inputs([str(root / "img" / f"{i}.png") for i in range(60)], 3, 8)[1])
    batch = next(iter(Loader(images, torch.zeros(len(images), 3), Batching(64), data_of(ckpt), CPU)))[0]
    with torch.inference_mode():
        expected = (model(batch).sigmoid() + model(batch.flip(-1)).sigmoid()) / 2  # (60, 3)
    run_dir = tmp_path / "m"
    __import__("shutil").copytree(root / "checkpoints" / "m", run_dir)
    onnx_path, _ = export.export(run_dir / "best.pt", tta="flip")
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": images.numpy()})[0] - expected.numpy()).max() < 1e-5
    code, out, err = call_script(test_script.main, str(run_dir), "--tta", "flip", cwd=root)
    assert code == 0, err
    report = json.loads((run_dir / "test_report.json").read_text())
    probs = expected[45:].double()  # the test split: images 45..59
    targets = torch.tensor([[name in row[1].split() for name in ("blue", "green", "red")] for row in (
        list(csv.reader(open(root / "train.csv")))[1:])])[45:].double()
    assert report["map"] == pytest.approx(sum(average_precision(probs[:, k], targets[:, k]) for k in range(3)) / 3,
                                          abs=1e-5)


def test_multilabel_needs_a_csv_with_a_test_split(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="data.multilabel=true needs a data source that reads label sets"):
        tiny_cfg("data.multilabel=true")
    with pytest.raises(UserError, match="data.multilabel=true needs data.sampler=shuffle"):
        tiny_cfg("data.multilabel=true", "data.name=csv", "data.sampler=balanced")


def test_an_image_with_no_label_above_threshold_says_so(capsys):
    from pathlib import Path

    text = report_labels([Path("a.png"), Path("b.png")], np.array([[0.1, 0.9, 0.3], [0.1, 0.2, 0.3]]),
                         [0.5, 0.5, 0.5], ["blue", "green", "red"], "m")
    assert capsys.readouterr().out.splitlines()[1:] == ["a.png: green 90.0%", f"b.png: {NO_LABEL}"]
    assert list(csv.reader(text.splitlines())) == [["file", "class_1", "prob_1", "model"],
                                                   ["a.png", "green", "0.900000", "m"], ["b.png", "", "", "m"]]
