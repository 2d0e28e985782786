import csv
import random
from pathlib import Path

import pytest
import torch

from conftest import call_script
from engine import checkpoint
from engine.checkpoint import load_checkpoint, model_from_checkpoint, resolve
from engine.errors import UserError
from engine.storage import atomic_save
import test as test_script
from train import main as train_main, train


@pytest.fixture
def run_dir(tiny_run):
    """The session's tiny run, read only."""
    return tiny_run.run_dir


def test_checkpoint_is_plain_data_loadable_with_weights_only(run_dir):
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    assert ckpt["format_version"] == checkpoint.FORMAT_VERSION
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "epoch", "history", "config", "data", "rng"}
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert ckpt["data"]["class_names"] == [str(d) for d in range(10)]
    assert ckpt["config"]["run"]["name"] == run_dir.name


def test_model_is_rebuilt_from_the_checkpoint_alone(run_dir):
    ckpt = load_checkpoint(run_dir / "last.pt")
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    assert all(torch.equal(a, ckpt["model"][k]) for k, a in model.state_dict().items())


def test_resolve_finds_files_run_folders_and_the_latest_run(run_dir):
    assert resolve(str(run_dir), run_dir.parent, "best.pt") == run_dir / "best.pt"
    assert resolve(str(run_dir / "last.pt"), "unused", "best.pt") == run_dir / "last.pt"
    assert resolve(None, run_dir.parent, "best.pt") == run_dir / "best.pt"


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"weights": torch.ones(3)}, path)

    def fail_midway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(UserError, match=r"could not write .*last.pt \(No space left on device\)"):
        atomic_save({"weights": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))


@pytest.mark.parametrize("content,message", [
    (b"", "not a readable PyTorch checkpoint"),
    (random.Random(0).randbytes(4096), "not a readable PyTorch checkpoint"),
])
def test_unreadable_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint_gives_one_line(run_dir, tmp_path):
    data = (run_dir / "best.pt").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(UserError, match="checkpoint .*missing.pt not found"):
        load_checkpoint(tmp_path / "missing.pt")


class Payload:
    def __reduce__(self):
        return (open, (str(PAYLOAD_MARK), "w"))


PAYLOAD_MARK = None


def test_pickle_that_runs_code_is_refused(tmp_path):
    global PAYLOAD_MARK
    PAYLOAD_MARK = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": Payload()}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)
    assert not PAYLOAD_MARK.exists()


def test_other_architecture_names_the_mismatched_layers(run_dir):
    ckpt = load_checkpoint(run_dir / "best.pt")
    ckpt["config"]["model"]["hidden"] = [32]
    with pytest.raises(UserError, match=r"classifier.1.weight: model \(32, 8\) vs checkpoint \(16, 8\)"):
        model_from_checkpoint(ckpt, torch.device("cpu"))


def test_disk_full_during_training_is_one_line_and_keeps_checkpoints(tiny_cfg, monkeypatch):
    real_save = torch.save

    def full_on_second_epoch(obj, f):
        if obj["epoch"] == 2:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real_save(obj, f)
    monkeypatch.setattr(torch, "save", full_on_second_epoch)
    cfg = tiny_cfg("train.epochs=3", "run.name=full")
    with pytest.raises(UserError, match=r"could not write .*\.pt \(No space left on device\).*intact"):
        train(cfg)
    run_dir = Path(cfg.run.output_dir) / "full"
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == 1
    assert not list(run_dir.glob("*.tmp"))


def test_deterministic_runs_repeat(tiny_cfg):
    try:
        runs = [train(tiny_cfg("run.deterministic=true", "train.epochs=1")) for _ in range(2)]
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    first, second = (load_checkpoint(d / "last.pt") for d in runs)
    assert [r["val_loss"] for r in first["history"]] == [r["val_loss"] for r in second["history"]]
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])


def test_checkpoint_from_before_a_new_config_key_still_loads(run_dir, tmp_path):
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    del ckpt["config"]["model"]["sync_batchnorm"]  # as if saved before the key existed
    del ckpt["config"]["log"]
    torch.save(ckpt, tmp_path / "old.pt")
    cfg = checkpoint.config_of(load_checkpoint(tmp_path / "old.pt"))
    assert cfg.model.sync_batchnorm is False and cfg.log.hooks == []
    assert cfg.model.hidden == [16]  # the stored values win over config.yaml's


def test_resuming_a_run_from_before_the_balanced_metrics_keeps_its_rows(tiny_cfg, tmp_path):
    run_dir = train(tiny_cfg("train.scheduler=step"))  # 2 epochs; a step schedule may be extended on --resume
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    for row in ckpt["history"]:
        del row["val_balanced_acc"], row["val_macro_f1"]  # as a version without these columns saved it
    torch.save(ckpt, run_dir / "last.pt")
    code, out, err = call_script(train_main, "--resume", str(run_dir), "train.epochs=3", cwd=tmp_path)
    assert code == 0, err
    assert f"resuming {run_dir}: 2 of 3 epochs done, continuing with epoch 3" in out  # says where it continues
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert rows[0]["val_macro_f1"] == "" and 0 <= float(rows[2]["val_macro_f1"]) <= 1


OLD_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint-before-engine.pt"  # written before engine/ existed


def test_a_checkpoint_written_before_the_move_to_engine_still_loads_and_tests_the_same(tmp_path):
    run_dir = tmp_path / "checkpoints" / "old"
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(OLD_CHECKPOINT.read_bytes())
    ckpt = load_checkpoint(run_dir / "best.pt")
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    assert all(torch.equal(a, ckpt["model"][k]) for k, a in model.state_dict().items())
    code, out, err = call_script(test_script.main, str(run_dir), "--split", "val", cwd=tmp_path)
    assert code == 0, err
    recorded = ckpt["history"][ckpt["epoch"] - 1]["val_acc"]
    assert f"accuracy {100 * recorded:.2f}%" in out  # what training logged for this checkpoint
