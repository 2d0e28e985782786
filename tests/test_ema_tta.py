"""EMA of the weights (train.ema_decay) and test-time augmentation (train.tta, test.py --tta, export --tta)."""
import pytest
import torch

from conftest import call_script, copy_run
from engine import ema
from engine.checkpoint import load_checkpoint
from engine.metrics import evaluate_checkpoint
from engine.tta import TTA, VIEWS, shifted, views
import test as test_script
import train as train_module


def test_ema_weights_are_the_warmed_up_average_of_the_trained_weights_every_n_steps(tiny_cfg, monkeypatch):
    decay, every = 0.8, 3
    seen, last = [], {}  # the weights at each update of the average, and after the last step, copied
    real_update = ema.update

    def recording(average, model, step, n):
        last.update({k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()})
        if step % n == 0:
            seen.append(dict(last))
        real_update(average, model, step, n)
    monkeypatch.setattr(ema, "update", recording)
    run_dir = train_module.train(tiny_cfg("train.epochs=1", f"train.ema_decay={decay}", f"train.ema_every={every}"))
    ckpt = load_checkpoint(run_dir / "last.pt")
    steps = int(ckpt["scheduler"]["last_epoch"])  # the schedule steps once per batch
    assert ckpt["ema_updates"] == len(seen) == steps // every > 1
    expected = dict(seen[0])  # the first update copies the weights
    for t, weights in enumerate(seen[1:], 1):  # the decay warms up: min(decay, (1 + t) / (10 + t))
        d = min(decay, (1 + t) / (10 + t))
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    for key, value in expected.items():  # weights and batch-norm statistics alike
        assert torch.allclose(ckpt["model"][key], value, atol=1e-6), key
    assert all(torch.equal(ckpt["trained_model"][k], last[k]) for k in last)  # kept for --resume
    assert not torch.equal(ckpt["model"]["features.0.weight"], ckpt["trained_model"]["features.0.weight"])


def test_validation_and_test_py_read_the_average(tiny_cfg):
    run_dir = train_module.train(tiny_cfg("train.ema_decay=0.9"))
    ckpt = load_checkpoint(run_dir / "best.pt")
    val = evaluate_checkpoint(run_dir / "best.pt", torch.device("cpu"), "val")[2]
    assert val["accuracy"] == ckpt["history"][ckpt["epoch"] - 1]["val_acc"]


def test_views_are_what_they_claim():
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    flips = views(images, "flip")
    assert [w for w, _ in flips] == [0.5, 0.5] and torch.equal(flips[1][1], images.flip(-1))
    six = views(images, "flip_shift")
    assert len(six) == VIEWS["flip_shift"] and sum(w for w, _ in six) == pytest.approx(1.0)
    up_left, down_right = shifted(images, -1, -1), shifted(images, 1, 1)
    assert torch.equal(up_left[..., :-1, :-1], images[..., 1:, 1:])  # content moved one pixel up and left
    assert torch.equal(down_right[..., 1:, 1:], images[..., :-1, :-1])
    assert torch.equal(up_left[..., -1, :-1], images[..., -2, 1:])  # the uncovered row is reflected


def test_tta_averages_the_views_probabilities():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 5 * 5, 4))
    images = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    for name in ("flip", "flip_shift"):
        expected = sum(w * model(v).softmax(1) for w, v in views(images, name))
        assert torch.allclose(TTA(model, name)(images).softmax(1), expected, atol=1e-6)


def test_test_py_reports_accuracy_with_and_without_tta_and_its_cost(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    code, out, err = call_script(test_script.main, str(run_dir), "--tta", "flip", cwd=tmp_path)
    assert code == 0, err
    cpu = torch.device("cpu")
    with_tta = evaluate_checkpoint(run_dir / "best.pt", cpu, tta="flip")[2]["accuracy"]
    without = evaluate_checkpoint(run_dir / "best.pt", cpu, tta="none")[2]["accuracy"]
    assert (f"test-time augmentation flip (2 forward passes per image): accuracy {100 * with_tta:.2f}% with it, "
            f"{100 * without:.2f}% without") in out
    assert f"accuracy {100 * with_tta:.2f}%" in out.splitlines()[1]


def test_export_bakes_the_views_into_the_graph(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import json

    import onnxruntime

    from tools import export

    run_dir = copy_run(tiny_run, tmp_path)
    onnx_path, _ = export.export(run_dir / "best.pt", tta="flip_shift")  # checked against PyTorch with TTA inside
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["tta"] == "flip_shift" and json.loads(meta["test_accuracy"]) == pytest.approx(
        evaluate_checkpoint(run_dir / "best.pt", torch.device("cpu"), tta="flip_shift")[2]["accuracy"], abs=0.01)


def test_mirrored_views_on_digits_get_a_note(capsys):
    from engine.config import load_config

    load_config(None, ["train.tta=flip"])  # digits by default
    assert "note: train.tta=flip mirrors the images" in capsys.readouterr().out
    load_config(None, ["train.tta=flip", "data.name=cifar10"])
    load_config(None, ["data.name=csv", "data.image_size=16", "data.channels=3"])  # both read by CSV data sets
    assert "note:" not in capsys.readouterr().out
