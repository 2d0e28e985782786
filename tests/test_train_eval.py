import csv
import importlib.util
import json
import re

import pytest
import torch

from conftest import TINY, run_script
from engine import runs
from engine.checkpoint import config_of, load_checkpoint, model_from_checkpoint
from engine.errors import UserError
from engine.loaders import make_train_loaders
from engine.metrics import evaluate, make_loss
import train as train_module
from train import train

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="the tensorboard package is not installed (requirements-extras.txt)")


def read_rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_run_folder_holds_everything(tiny_run):
    run_dir = tiny_run.run_dir
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.csv", "curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    rows = read_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc",
                             "val_macro_f1", "lr"]
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_best_checkpoint_reproduces_its_logged_val_accuracy(tiny_run):
    ckpt = load_checkpoint(tiny_run.run_dir / "best.pt")
    cfg = config_of(ckpt)
    logged = ckpt["history"][ckpt["epoch"] - 1]["val_acc"]
    assert logged == max(row["val_acc"] for row in ckpt["history"])
    _, val_loader, _ = make_train_loaders(cfg, torch.device("cpu"))
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    assert evaluate(model, val_loader, 10, torch.device("cpu"))["accuracy"] == logged


def test_same_seed_gives_same_numbers(tiny_cfg):
    first, second = train(tiny_cfg("train.epochs=1")), train(tiny_cfg("train.epochs=1"))
    assert first != second
    assert read_rows(first) == read_rows(second)


@pytest.mark.parametrize("extra", [[], ["train.scheduler=step", "train.step_epochs=1", "train.patience=5",
                                        "train.optimizer=sgd", "model.dropout=0.5"],
                                   ["data.augment=trivialaugment", "data.random_erasing=0.5", "train.mixup_alpha=0.2",
                                    "train.cutmix_alpha=1", "train.label_smoothing=0.1"],
                                   ["train.ema_decay=0.9", "train.ema_every=2"],
                                   ["model.name=airbench", "model.widths=[8, 8]", "model.whiten=frozen",
                                    "model.dirac=true", "train.optimizer=sgd", "train.nesterov=true",
                                    "train.scheduler=linear", "data.augment=flip_crop", "data.flip=alternate",
                                    "train.val_every=2"],
                                   pytest.param(["train.accumulate=3", "train.ema_decay=0.9", "train.grad_clip=1",
                                                 "log.hooks=[tensorboard]"], marks=needs_tensorboard)])
def test_resume_equals_an_uninterrupted_run(tiny_cfg, monkeypatch, extra):
    straight = train(tiny_cfg(*extra))  # TINY: 2 epochs

    real_save = train_module.save_epoch

    def crash_after_epoch_1(run, improved):
        real_save(run, improved)
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "save_epoch", crash_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(*extra))
    monkeypatch.setattr(train_module, "save_epoch", real_save)
    interrupted = max((straight.parent).iterdir(), key=lambda p: p.stat().st_mtime)
    ckpt = load_checkpoint(interrupted / "last.pt")
    assert ckpt["epoch"] == 1
    resumed = train(runs.resumed_config(ckpt, []), ckpt, interrupted)

    assert resumed == interrupted
    assert read_rows(resumed) == read_rows(straight)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["trained_model"][k], b["trained_model"][k]) for k in a.get("trained_model", {}))


def test_resume_refuses_changes_to_the_experiment(tiny_run):
    ckpt = load_checkpoint(tiny_run.run_dir / "last.pt")
    with pytest.raises(UserError, match="'model.activation' cannot change on --resume"):
        runs.resumed_config(ckpt, ["model.activation=tanh"])
    with pytest.raises(UserError, match="train.epochs cannot change on --resume with train.scheduler=onecycle"):
        runs.resumed_config(ckpt, ["train.epochs=4"])


def test_resume_with_more_epochs_continues(tiny_cfg):
    run_dir = train(tiny_cfg("train.epochs=2", "train.scheduler=step"))
    ckpt = load_checkpoint(run_dir / "last.pt")
    cfg = runs.resumed_config(ckpt, ["train.epochs=3"])
    train(cfg, ckpt, run_dir)
    assert [int(r["epoch"]) for r in read_rows(run_dir)] == [1, 2, 3]
    assert "epochs: 3" in (run_dir / "config.yaml").read_text()


def test_early_stopping_stops(tiny_cfg):
    # lr so small nothing improves after the first epoch.
    run_dir = train(tiny_cfg("train.epochs=10", "train.patience=2", "train.lr=1e-9", "train.scheduler=none"))
    rows = read_rows(run_dir)
    assert 3 <= len(rows) < 10


def test_weights_that_turn_nan_while_the_loss_stays_finite_are_never_saved(tiny_cfg, monkeypatch):
    """As bf16 on a CPU once did: the epoch's last step leaves a NaN in one weight, the epoch's loss is finite."""
    cfg = tiny_cfg("train.epochs=3", "run.name=nan")
    steps, calls = train_module.steps_per_epoch(len(make_train_loaders(cfg, torch.device("cpu"))[0]), cfg.train), []
    step = train_module.optimizer_step

    def faulty_step(step_state, model):
        step(step_state, model)
        calls.append(1)
        if len(calls) == 2 * steps:  # the last step of epoch 2
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")
    monkeypatch.setattr(train_module, "optimizer_step", faulty_step)
    with pytest.raises(UserError, match=r"^epoch 2 made 1 weight tensors non-finite \(NaN or inf\), first "
                                        r"\S+weight, though its loss stayed finite; lower train.lr"):
        train(cfg)
    run_dir = cfg.run.output_dir + "/nan"
    assert load_checkpoint(f"{run_dir}/last.pt")["epoch"] == 1 and load_checkpoint(f"{run_dir}/best.pt")["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in load_checkpoint(f"{run_dir}/best.pt")["model"].values())


def test_mse_loss_is_the_notes_half_mean_squared_error():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    f, y = logits.softmax(1), torch.nn.functional.one_hot(labels, 3).float()
    expected = ((f - y) ** 2).sum() / (2 * 4)
    assert torch.allclose(make_loss("mse")(logits, labels), expected)
    assert torch.allclose(expected, 3 / 2 * torch.nn.functional.mse_loss(f, y))


def test_train_and_test_scripts_end_to_end(tmp_path):
    trained = run_script("train.py", *TINY, "run.name=e2e", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    header = trained.stdout.split("epoch ")[0]  # before the first epoch: a short header, not the whole config
    header = "\n".join(line for line in header.splitlines() if not line.startswith("note: ")) + "\n"  # TINY's widths
    assert "device: cpu" in header and "model: cnn, 1,586 parameters" in header and len(header.splitlines()) <= 7
    assert re.search(r"changed from config.yaml: model.conv_blocks=.* model.hidden=\[16\] train.epochs=2 "
                     r"run.device=cpu\n", header)
    assert "amp: auto -> " in header
    assert re.search(r"epoch +2/2 +train loss [\d.]+ acc +[\d.]+% +val loss", trained.stdout)
    train_acc = re.search(r"test \(best.pt, epoch \d\): loss [\d.]+ +accuracy ([\d.]+)%", trained.stdout)[1]

    tested = run_script("test.py", cwd=tmp_path)  # default: best.pt of the latest run
    assert tested.returncode == 0, tested.stderr
    assert re.search(r"accuracy ([\d.]+)%", tested.stdout)[1] == train_acc
    run_dir = tmp_path / "checkpoints" / "e2e"
    report = json.loads((run_dir / "test_report.json").read_text())
    assert f"{100 * report['accuracy']:.2f}" == train_acc
    assert len(report["per_class"]) == 10 and report["num_images"] == 360
    assert (run_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    rows = (run_dir / "confusion_matrix.csv").read_text().splitlines()
    assert len(rows) == 11 and sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == 360


def test_cuda_switches_run_on_cpu_with_a_notice(tiny_cfg, capsys, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    calls = []
    run_dir = train(tiny_cfg("train.epochs=1", "run.amp=fp16", "run.cudnn_benchmark=true", "run.channels_last=true",
                             "run.threads=1"))
    out = capsys.readouterr().out
    assert "amp: fp16 -> none (fp16 applies on CUDA only" in out and "note: run.cudnn_benchmark has no effect" in out
    assert (run_dir / "best.pt").is_file() and calls == [1]
