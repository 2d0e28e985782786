"""The rules of docs/troubleshooting.md, one test each on the surfaces where they failed before (issue 23):
nothing overwrites a checkpoint, an input problem is exit 2 with one short line naming the real cause, one
line stays one line, a setting without effect says so, an argument means one thing and every result names
its model, and what a script prints is true. tests/test_fuzz_inputs.py checks the same rules on generated
inputs."""
import os
import shutil
import time

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from conftest import TINY, call_script, copy_run, snapshot
from engine import builtin_sets, datasets
from engine.config import load_config
from engine.entry import LINE_MAX
from engine.errors import UserError
import test as test_script
from tools import compare, demo, summary
import train


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert len(lines[0]) <= LINE_MAX and "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def run_dir(tiny_run, tmp_path):
    """A copy of the tiny 3-epoch run at tmp_path/checkpoints/r."""
    return copy_run(tiny_run, tmp_path)


# --- rule 1: never overwrite a checkpoint that holds epochs ---------------------------------------

def test_resume_of_a_folder_without_last_pt_refuses_to_start_over_its_best_pt(run_dir, tmp_path):
    (run_dir / "last.pt").unlink()
    before = snapshot(run_dir)
    code, _, err = call_script(train.main, "--resume", "checkpoints/r", cwd=tmp_path)  # as a user writes it
    assert code == 2
    line = one_error_line(err)
    epoch = torch.load(run_dir / "best.pt", weights_only=True)["epoch"]
    assert f"holds best.pt (epoch {epoch}) but no last.pt" in line and "--resume checkpoints/r/best.pt" in line
    assert snapshot(run_dir) == before


def test_resuming_best_pt_beside_a_last_pt_is_refused(run_dir, tmp_path):
    before = snapshot(run_dir)
    code, _, err = call_script(train.main, "--resume", str(run_dir / "best.pt"), "train.epochs=4", cwd=tmp_path)
    assert code == 2 and "is not the last.pt of its run" in one_error_line(err)
    assert snapshot(run_dir) == before


# --- rule 2: a problem with the input is exit 2, never 3 ------------------------------------------

@pytest.mark.parametrize("main,args,message", [
    (demo.main, ["--port", "99999"], "expected a port number from 1 to 65535"),
    (train.main, [f"train.batch_size={2 ** 64}"], "train.batch_size: must be at most 2,147,483,647"),
    (train.main, ["model.hidden=[99999999999]"], "model.hidden[0]: must be at most"),
])
def test_input_problems_are_exit_2(tmp_path, main, args, message):
    code, _, err = call_script(main, *args, cwd=tmp_path)
    assert code == 2 and message in one_error_line(err)


@pytest.mark.parametrize("name", ["squeezenet1_0", "googlenet"])
def test_the_smallest_input_of_a_torchvision_model_is_found_by_trying_it(tmp_path, name):
    code, out, err = call_script(summary.main, f"model.name={name}", cwd=tmp_path)  # 8x8 digits, resized up inside
    assert code == 0, err
    assert "total" in out


def grey_folder_set(root):
    """root/{train,test}/{a,b}/ with three 8x8 grey PNGs each."""
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), 40 * i).save(root / split / label / f"{i}.png")


def test_a_cache_of_another_layout_is_rebuilt(tmp_path):
    grey_folder_set(tmp_path / "set")
    cfg = load_config(None, ["data.name=folder", f"data.root={tmp_path / 'set'}", "data.channels=1",
                             "data.image_size=8", f"data.cache_dir={tmp_path / 'cache'}"]).data
    cache = datasets.cache_path(cfg, "train")
    cache.parent.mkdir()
    for wrong in ({"images": torch.zeros(6, 3, 4, 4, dtype=torch.uint8), "labels": torch.zeros(6, dtype=torch.int64)},
                  {"images": [1, 2], "labels": "x"}, [1, 2, 3]):
        torch.save(wrong, cache)
        images, labels = datasets.load_split(cfg, "train")
        assert images.shape == (6, 1, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("content", ["{}\n", "[1, 2]\n", "3\n"])
def test_compare_refuses_a_run_whose_config_is_not_a_mapping(run_dir, tmp_path, content):
    other = tmp_path / "checkpoints" / "other"
    shutil.copytree(run_dir, other)
    (other / "config.yaml").write_text(content)
    code, _, err = call_script(compare.main, str(run_dir), str(other), cwd=tmp_path)
    assert code == 2 and "is not a run's config" in one_error_line(err)


def test_the_digits_file_as_a_git_lfs_pointer_is_named(tmp_path, monkeypatch):
    pointer = tmp_path / "digits.pt"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n")
    monkeypatch.setattr(builtin_sets, "DIGITS_PATH", pointer)
    code, _, err = call_script(train.main, *TINY, cwd=tmp_path)
    assert code == 2
    line = one_error_line(err)
    assert f"{pointer} is a Git LFS pointer" in line and "git lfs pull" in line and len(line) < 300


# --- rule 4: the line names the real cause; no empty folder ---------------------------------------

def test_all_zero_class_weights_are_a_config_error_and_leave_no_folder(tmp_path):
    code, _, err = call_script(train.main, *TINY, "train.class_weights=[0,0,0,0,0,0,0,0,0,0]", cwd=tmp_path)
    assert code == 2 and "gives every class weight 0" in one_error_line(err)
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("kind", ["checkpoint", "state dict"])
def test_pretrained_weights_with_nan_are_refused(tiny_run, tmp_path, kind):
    ckpt = torch.load(tiny_run.run_dir / "best.pt", weights_only=True)
    ckpt["model"]["classifier.1.weight"][0, 0] = float("nan")
    torch.save(ckpt if kind == "checkpoint" else ckpt["model"], tmp_path / "nan.pt")
    code, _, err = call_script(train.main, *TINY, "model.pretrained=nan.pt", cwd=tmp_path)
    assert code == 2 and "nan.pt has NaN or infinite weights in 'classifier.1.weight'" in one_error_line(err)
    assert not (tmp_path / "checkpoints").exists()


def test_a_run_that_diverges_in_its_first_epoch_leaves_no_folder(tmp_path):
    code, _, err = call_script(train.main, *TINY, "train.lr=1e30", "train.scheduler=none", "run.name=d", cwd=tmp_path)
    assert code == 2 and "the loss became NaN or infinite in epoch 1" in one_error_line(err)
    assert not (tmp_path / "checkpoints" / "d").exists()


# --- rule 7: an argument means one thing; every result names its model ----------------------------

def test_a_run_folder_among_the_predicted_images_is_the_checkpoint(run_dir, tmp_path):
    newer = copy_run_as(run_dir, "newer")  # the most recent run, which must not answer
    os.utime(newer / "last.pt", (time.time() + 60, time.time() + 60))
    (tmp_path / "photos").mkdir()
    Image.new("L", (8, 8), 100).save(tmp_path / "photos" / "a.png")
    code, out, err = call_script(test_script.main, "--predict", "photos", str(run_dir), "--output", "p.csv",
                                 cwd=tmp_path)
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"predictions of {run_dir / 'best.pt'} (cnn on digits, epoch")
    assert [line.split(":")[0] for line in out.splitlines()[1:-1]] == [os.path.join("photos", "a.png")]
    assert "curves.png" not in out
    header, row = (tmp_path / "p.csv").read_text().splitlines()
    assert header.endswith(",model") and row.startswith(os.path.join("photos", "a.png"))
    assert row.endswith(f"{run_dir / 'best.pt'} (cnn on digits, epoch {torch.load(run_dir / 'best.pt', weights_only=True)['epoch']})\"")


def copy_run_as(run_dir, name):
    shutil.copytree(run_dir, run_dir.parent / name)
    return run_dir.parent / name


def test_a_checkpoint_as_the_image_of_cam_is_refused(run_dir, tmp_path):
    code, _, err = call_script(test_script.main, "--cam", str(run_dir), cwd=tmp_path)
    assert code == 2 and "--cam takes an image" in one_error_line(err)


# --- rule 3 and 5: the one line is short, and stays one line --------------------------------------

@pytest.mark.parametrize("document,message", [
    (yaml.safe_dump(list(range(5000))), "got a list of 5,000 items [0, 1, 2, ...]"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
     "more than 100,000 values once its aliases"),
    ("train:\n  lr: " + "x" * 10_000 + "\n", "train.lr: expected a number, got 'xxxx"),
])
def test_echoed_input_is_abbreviated(tmp_path, document, message):
    (tmp_path / "c.yaml").write_text(document)
    code, _, err = call_script(train.main, "--config", "c.yaml", cwd=tmp_path)
    assert code == 2
    line = one_error_line(err)
    assert message in line and len(line) < 300


def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path):
    grey_folder_set(tmp_path / "set")
    (tmp_path / "set" / "train" / "a" / "bad\nname.png").write_text("not an image")
    code, _, err = call_script(train.main, *TINY, "data.name=folder", "data.root=set", "data.channels=1",
                               "data.image_size=8", "data.cache_dir=", cwd=tmp_path)
    assert code == 2
    assert "bad\\nname.png is not a readable image" in one_error_line(err)


# --- rule 6: a setting that has no effect says so -------------------------------------------------

def test_keys_the_model_or_data_do_not_read_get_a_note(capsys):
    load_config(None, ["model.name=resnet18", "model.dropout=0.5", "data.root=my_photos"])
    out = capsys.readouterr().out
    assert "note: model.dropout has no effect: model.name=resnet18 does not read it" in out
    assert "note: data.root has no effect: data.name=digits does not read it (mnist | fashion_mnist" in out


def test_a_crop_padding_as_big_as_the_image_is_refused(tmp_path):
    code, _, err = call_script(train.main, *TINY, "data.augment=crop", "data.crop_padding=64", cwd=tmp_path)
    assert code == 2 and "data.crop_padding=64 is at least the 8x8 image" in one_error_line(err)


def test_a_hand_edit_of_a_runs_config_is_named_on_resume(run_dir, tmp_path):
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["train"]["lr"] = 0.5
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    before = snapshot(run_dir)
    code, _, err = call_script(train.main, "--resume", str(run_dir), cwd=tmp_path)
    assert code == 2 and "config.yaml was edited: train.lr differ" in one_error_line(err)
    assert snapshot(run_dir) == before
    saved["train"]["lr"] = torch.load(run_dir / "last.pt", weights_only=True)["config"]["train"]["lr"]  # undone
    saved["train"]["log_interval"] = 7  # a key a resumed run may change: taken, and said
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    code, out, err = call_script(train.main, "--resume", str(run_dir), cwd=tmp_path)
    assert code == 0, err
    assert "note: taking train.log_interval=7 from the edited" in out and "already finished" in out


# --- rule 8: what a script prints is true ---------------------------------------------------------

def test_summary_speaks_of_weight_sharing_only_for_convs():
    assert "a conv kernel is shared" not in summary.summary(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 1, 8)
    assert "a conv kernel is shared" in summary.summary(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), 1, 8)


def test_predict_on_an_empty_folder_says_so(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = call_script(test_script.main, str(run_dir), "--predict", "empty", cwd=tmp_path)
    assert code == 1 and "empty holds no files to predict" in one_error_line(err)


def test_config_errors_are_user_errors_not_crashes():
    with pytest.raises(UserError, match="must be at most 2,147,483,647"):
        load_config(None, [f"data.max_pixels={2 ** 40}"])


def test_a_streamed_image_that_becomes_unreadable_is_one_line_from_the_worker(tmp_path, monkeypatch):
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / "set" / split / label).mkdir(parents=True)
            for i in range(4):
                Image.new("L", (8, 8), 40 * i).save(tmp_path / "set" / split / label / f"{i}.png")
    from engine import runs
    write_metrics = runs.write_metrics

    def damaging(history, run_dir, is_last):  # after epoch 1: an image the DataLoader worker reads in epoch 2 breaks
        write_metrics(history, run_dir, is_last)
        (tmp_path / "set" / "train" / "a" / "0.png").write_bytes(b"damaged\n")
    monkeypatch.setattr(runs, "write_metrics", damaging)
    code, _, err = call_script(train.main, *TINY, "data.name=folder", "data.root=set", "data.channels=1",
                               "data.image_size=8", "data.max_memory_mb=0", "data.num_workers=1",
                               "data.val_fraction=0.25", "data.cache_dir=", "run.name=s", cwd=tmp_path)
    assert code == 2
    line = one_error_line(err)
    assert line == f"error: {os.path.join('set', 'train', 'a', '0.png')} is not a readable image; remove it or " \
                   "replace it with a PNG or JPEG"
