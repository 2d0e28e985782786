"""test.py's report, --predict and --feature-maps, compare.py, and TensorBoard logging."""
import csv
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import call_script, copy_run
from engine.checkpoint import load_checkpoint, model_from_checkpoint
from engine.errors import UserError
from engine.metrics import evaluate_checkpoint
import test as test_script
from tools import compare
from tools.summary import summary
import train as train_module


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
    """A copy of the session's tiny run (test.py writes its reports into the run folder)."""
    root = tmp_path_factory.mktemp("report")
    copy_run(tiny_run, root)
    return root, tiny_run.stdout


def test_report_files_and_numbers(trained):
    root, train_out = trained
    code, stdout, stderr = call_script(test_script.main, "--top-k", "3", cwd=root)
    assert code == 0, stderr
    run_dir = root / "checkpoints" / "r"
    report = json.loads((run_dir / "test_report.json").read_text())
    logged = re.search(r"test \(best.pt, epoch \d\): loss [\d.]+ +accuracy ([\d.]+)%", train_out)[1]
    assert f"{100 * report['accuracy']:.2f}" == logged
    assert report["top_k"] == 3 and 1 >= report["top_k_accuracy"] >= report["accuracy"]
    assert [row["class"] for row in report["per_class"]] == [str(d) for d in range(10)]
    assert sum(row["support"] for row in report["per_class"]) == 360
    for row in report["per_class"]:
        assert set(row) == {"class", "precision", "recall", "f1", "support"}
    for name in ("confusion_matrix.png", "confusion_matrix_normalised.png", "misclassified.png"):
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG", name
    assert "top-3 accuracy" in stdout and str(run_dir.relative_to(root)) in stdout


def test_val_split_reproduces_the_logged_val_accuracy(trained):
    root, _ = trained
    code, _, stderr = call_script(test_script.main, "checkpoints/r", "--split", "val", cwd=root)
    assert code == 0, stderr
    run_dir = root / "checkpoints" / "r"
    report = json.loads((run_dir / "val_report.json").read_text())
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert report["accuracy"] == ckpt["history"][ckpt["epoch"] - 1]["val_acc"]
    assert (run_dir / "val_confusion_matrix.png").is_file()


def test_another_checkpoints_report_never_replaces_best_pts(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    assert call_script(test_script.main, str(run_dir), cwd=tmp_path)[0] == 0
    best_files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.suffix in (".json", ".png", ".csv")}
    code, stdout, stderr = call_script(test_script.main, str(run_dir / "last.pt"), cwd=tmp_path)
    assert code == 0, stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name in best_files} == best_files
    last = json.loads((run_dir / "last_test_report.json").read_text())
    assert last["checkpoint"].endswith("last.pt") and (run_dir / "last_confusion_matrix.png").is_file()
    assert "last_test_report.json" in stdout


def test_evaluate_checkpoint_matches_test_script_numbers(trained):
    root, _ = trained
    code, _, stderr = call_script(test_script.main, "checkpoints/r", cwd=root)
    assert code == 0, stderr
    report = json.loads((root / "checkpoints" / "r" / "test_report.json").read_text())
    _, _, results = evaluate_checkpoint(root / "checkpoints" / "r" / "best.pt", torch.device("cpu"))
    assert report["loss"] == results["loss"] and report["accuracy"] == results["accuracy"]
    assert report["confusion"] == results["confusion"].tolist() and report["num_images"] == 360


def test_test_script_finds_the_latest_run_under_the_configured_output_dir(tiny_run, tmp_path):
    copy_run(tiny_run, tmp_path / "elsewhere")
    (tmp_path / "mine.yaml").write_text((tiny_run.run_dir / "config.yaml").read_text().replace(
        "output_dir: checkpoints", "output_dir: elsewhere/checkpoints"))
    code, _, stderr = call_script(test_script.main, cwd=tmp_path)
    assert code == 2 and "no runs with a last.pt under checkpoints/" in stderr
    for args in (["run.output_dir=elsewhere/checkpoints"], ["--config", "mine.yaml"]):
        code, stdout, stderr = call_script(test_script.main, *args, "run.device=cpu", cwd=tmp_path)
        assert code == 0, stderr
        assert "checkpoint: elsewhere/checkpoints/r/best.pt (epoch" in stdout


def test_most_confident_mistakes_come_first():
    results = {"labels": torch.tensor([0, 1, 2, 0]), "top_classes": torch.tensor([[1], [1], [0], [2]]),
               "top_probs": torch.tensor([[0.6], [0.9], [0.95], [0.7]])}
    assert test_script.most_confident_mistakes(results, 5).tolist() == [2, 3, 0]


def test_predict_mixed_folder(trained, tmp_path):
    root, _ = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("L", (8, 8), 0).save(folder / "a.png")
    Image.new("RGB", (50, 30), (200, 10, 10)).save(folder / "b.jpg")
    Image.new("RGBA", (13, 13)).save(folder / "c.png")
    (folder / "notes.txt").write_text("not an image")
    out_csv = tmp_path / "pred.csv"
    code, stdout, stderr = call_script(test_script.main, "--predict", str(folder), "--output", str(out_csv),
                                       "--top-k", "2", cwd=root)
    assert code == 1  # one file could not be read
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "notes.txt is not a readable image" in lines[0]
    for name in ("a.png", "b.jpg", "c.png"):
        assert re.search(rf"{name}: \d [\d.]+%, \d [\d.]+%$", stdout, re.M), stdout
    rows = list(csv.DictReader(open(out_csv)))
    assert [r["file"].rsplit("/", 1)[1] for r in rows] == ["a.png", "b.jpg", "c.png"]
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)


def test_feature_map_titles_match_the_model_summary(trained, tmp_path, monkeypatch):
    root, _ = trained
    image = tmp_path / "digit.png"
    Image.new("L", (30, 30), 128).save(image)
    titles = []
    monkeypatch.setattr(test_script, "plot_maps", lambda maps, path, title, cell=1.2: titles.append((path.name, title)))
    best = root / "checkpoints" / "r" / "best.pt"
    test_script.feature_maps(best, str(image), torch.device("cpu"), max_pixels=10_000)
    assert [name for name, _ in titles] == ["kernels.png"] + [f"feature_maps_conv{i}.png" for i in (1, 2, 3)]
    table = summary(model_from_checkpoint(load_checkpoint(best), torch.device("cpu")), 1, 8)
    conv_shapes = [line.split()[1] for line in table.splitlines() if line.startswith("Conv2d")]
    for (_, title), shape in zip(titles[1:], conv_shapes):
        channels, height, width = shape.split("x")
        assert f"{channels} feature maps of {height}x{width}" in title
        assert title.endswith(f"/1 + 1 = {height})")


def test_feature_maps_script_writes_pngs(trained, tmp_path):
    root, _ = trained
    image = tmp_path / "digit.jpg"
    Image.new("RGB", (20, 20), (0, 255, 0)).save(image)
    code, _, stderr = call_script(test_script.main, "--feature-maps", str(image), cwd=root)
    assert code == 0, stderr
    for name in ("kernels.png", "feature_maps_conv1.png", "feature_maps_conv3.png"):
        assert (root / "checkpoints" / "r" / name).read_bytes()[:4] == b"\x89PNG"


def test_compare_labels_runs_by_their_differences(tiny_cfg, tmp_path):
    for activation in ("relu", "tanh"):
        train_module.train(tiny_cfg("train.epochs=1", f"model.activation={activation}", f"run.name={activation}"))
    code, stdout, stderr = call_script(compare.main, "checkpoints/relu", "checkpoints/tanh", "--output", "cmp.png",
                                       cwd=tmp_path)
    assert code == 0, stderr
    assert "model.activation=relu: best val accuracy" in stdout
    assert "model.activation=tanh: best val accuracy" in stdout
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    code, _, stderr = call_script(compare.main, "checkpoints/nothing", cwd=tmp_path)
    assert code == 2 and "checkpoints/nothing does not exist" in stderr
    (tmp_path / "checkpoints" / "empty").mkdir()
    code, _, stderr = call_script(compare.main, "checkpoints/empty", cwd=tmp_path)
    assert code == 2 and "checkpoints/empty has no config.yaml" in stderr
    code, _, stderr = call_script(compare.main, "checkpoints/relu/config.yaml", cwd=tmp_path)
    assert code == 2 and "is not a folder" in stderr


def test_tensorboard_missing_is_a_clear_error(tiny_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    cfg = tiny_cfg("log.hooks=[tensorboard]")
    with pytest.raises(UserError, match="tensorboard package is not installed; pip install tensorboard"):
        train_module.train(cfg)
    assert not Path(cfg.run.output_dir).exists()  # refused before any run folder was made


def test_tensorboard_logs_every_epoch_and_the_hparams(tiny_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = train_module.train(tiny_cfg("log.hooks=[tensorboard]"))
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [s.step for s in events.Scalars("val_acc")] == [1, 2]
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert events.Scalars("best/val_acc")[0].value == pytest.approx(ckpt["history"][ckpt["epoch"] - 1]["val_acc"])
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(4e-3) and hparams["data.name"].string_value == "digits"
