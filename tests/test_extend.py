"""The extension points' promises: what an entry declares drives the notes and checks, gradient
accumulation equals a bigger batch, a set momentum stays set, metrics.csv survives a change of columns,
and an incomplete data source fails at start-up. docs/extend.md's examples run in tests/test_docs.py."""
import csv
import math

import pytest
import torch

from engine import columns, datasets, optim, runs
from engine.checkpoint import load_checkpoint
from engine.config import load_config
from engine.datasource import DataInfo, Source
from engine.errors import UserError
from engine.registry import Part
from train import make_step, train


def final_weights(run_dir):
    return load_checkpoint(run_dir / "last.pt")["model"]


NO_NOISE = ["train.epochs=1", "model.batch_norm=false", "model.dropout=0"]  # nothing that depends on the batch


def test_accumulating_two_batches_equals_one_batch_twice_as_big(tiny_cfg):
    """1,295 training digits: 21 batches of 64 in groups of two (the last alone) are 11 batches of 128 (the last
    of 15 images either way), in the same shuffled order, so the steps see the same mean gradients."""
    accumulated = final_weights(train(tiny_cfg(*NO_NOISE, "train.batch_size=64", "train.accumulate=2")))
    bigger = final_weights(train(tiny_cfg(*NO_NOISE, "train.batch_size=128")))
    smaller = final_weights(train(tiny_cfg(*NO_NOISE, "train.batch_size=64")))
    assert all(torch.allclose(accumulated[k], bigger[k], rtol=1e-4, atol=1e-5) for k in bigger)
    assert not all(torch.allclose(smaller[k], bigger[k], rtol=1e-4, atol=1e-5) for k in bigger)


def test_accumulation_steps_the_schedule_once_per_group(tiny_cfg):
    run_dir = train(tiny_cfg("train.epochs=1", "train.accumulate=4"))
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["scheduler"]["last_epoch"] == math.ceil(11 / 4)  # 11 batches of 128, one step per 4
    assert ckpt["optimizer"]["state"][0]["step"] == math.ceil(11 / 4)


def test_onecycle_cycles_the_momentum_only_when_left_to_it(tiny_cfg):
    info = DataInfo(1, 8, [str(k) for k in range(10)], [0.5], [0.25], [10] * 10)
    for momentum, expect_cycled in (("auto", True), ("0.5", False)):
        cfg = tiny_cfg("train.optimizer=sgd", "train.scheduler=onecycle", f"train.momentum={momentum}").train
        model = torch.nn.Linear(4, 10)
        step = make_step(model, None, cfg, info, None, 10)
        seen = set()
        for _ in range(10):
            model(torch.randn(2, 4)).sum().backward()
            step.optimizer.step()
            step.scheduler.step()
            seen.add(round(step.optimizer.param_groups[0]["momentum"], 6))
        assert (len(seen) > 1) is expect_cycled and (expect_cycled or seen == {0.5})


def test_notes_come_from_what_entries_declare(monkeypatch, capsys):
    """A key gets a note when no chosen entry reads it; a new optimizer that declares momentum gets none."""
    load_config(None, ["train.optimizer=adamw", "train.nesterov=false", "train.step_gamma=0.5"])
    out = capsys.readouterr().out
    assert "note: train.nesterov has no effect: train.optimizer=adamw does not read it (sgd does)" in out
    assert "note: train.step_gamma has no effect: train.scheduler=onecycle does not read it (step does)" in out
    monkeypatch.setitem(optim.OPTIMIZERS, "my_adam", Part(optim.adam, reads=("momentum",)))
    cfg = load_config(None, ["train.optimizer=my_adam", "train.momentum=0.8"])
    assert cfg.train.optimizer == "my_adam" and "momentum" not in capsys.readouterr().out


def test_a_source_without_a_required_method_fails_when_the_config_loads(monkeypatch):
    class Half(Source):
        def describe(self, cfg):
            return DataInfo(1, 8, ["a", "b"])
    monkeypatch.setitem(datasets.SOURCES, "half", Half())
    with pytest.raises(UserError, match=r"^data source 'half' \(Half\) lacks load, files; implement every method"):
        load_config(None, ["data.name=half"])


def test_metrics_csv_keeps_the_columns_of_every_row(tmp_path):
    """A run resumed on a build with another column set: old rows keep their values, new columns stay empty."""
    old = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6, "val_old": 0.5, "lr": 0.1}
    new = {"epoch": 2, "train_loss": 0.8, "train_acc": 0.7, "val_loss": 0.7, "val_acc": 0.8, "val_new": 0.6, "lr": 0.1}
    runs.write_metrics([old, new], tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_old", "lr", "val_new"]
    assert rows[0]["val_old"] == "0.5" and rows[0]["val_new"] == "" and rows[1]["val_old"] == ""


def test_a_new_metric_is_a_column_a_line_part_and_a_best_metric(tiny_cfg, monkeypatch, capsys):
    monkeypatch.setitem(columns.METRICS, "top2", columns.Metric(
        "val_top2", "top2", lambda r: (r["top_classes"][:, :2] == r["labels"][:, None]).any(1).double().mean().item()))
    run_dir = train(tiny_cfg("train.epochs=1", "train.val_every=0", "train.epochs=2"))
    out = capsys.readouterr().out
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["val_top2"] == "nan" and 0 < float(rows[1]["val_top2"]) <= 1  # epoch 1 was not validated
    assert "val -" in out and " top2 " in out


def test_best_metric_of_the_other_kind_of_data_is_refused():
    with pytest.raises(UserError, match=r"^train.best_metric=map is for multi-label data; use one of accuracy"):
        load_config(None, ["train.best_metric=map"])


def test_a_key_config_yaml_lacks_says_to_add_its_line(monkeypatch, tmp_path):
    from engine import config

    text = config.DEFAULT_CONFIG.read_text().replace("  grad_clip: 0 ", "  # grad_clip removed ")
    (tmp_path / "config.yaml").write_text(text)
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "config.yaml")
    with pytest.raises(UserError, match=r"^missing config key 'train.grad_clip': TrainConfig declares it but "
                                        r"config.yaml lacks it; add its line"):
        load_config(None, [])


def test_a_hook_named_twice_is_refused():
    with pytest.raises(UserError, match=r"^log.hooks: \['tensorboard', 'tensorboard'\] names a hook twice"):
        load_config(None, ["log.hooks=[tensorboard, tensorboard]"])


def test_a_cached_split_of_the_other_label_kind_is_not_read():
    """A CSV trained multi-label and then single-label: each reads only a cache of its own kind of labels."""
    from engine.datasource import valid_split

    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    single, multi = DataInfo(1, 8, ["a", "b"]), DataInfo(1, 8, ["a", "b"], multilabel=True)
    as_labels = {"images": images, "labels": torch.tensor([0, 1, 1, 0])}
    as_rows = {"images": images, "labels": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])}
    assert valid_split(as_labels, single) and valid_split(as_rows, multi)
    assert not valid_split(as_rows, single) and not valid_split(as_labels, multi)
