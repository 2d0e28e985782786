"""CSV-labelled data sets (data.name=csv) and data.test_fraction: the same images as a folder give the same
data, every bad-input rule gives one named error, and test.py evaluates the images training held out."""
import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY, call_script
from engine import datasets
from engine.checkpoint import load_checkpoint
from engine.datasets import describe, load_split
from engine.errors import UserError
from engine.loaders import make_eval_loader, make_train_loaders
import test as test_script
import train

CLASSES = ("cat", "dog", "owl")


def write_images(root, per_class=4, size=(10, 6)):
    """root/img/<class>_<j>.png and the same images as root/folder/{train,test}/<class>/<j>.png;
    returns [(path under root/img's parent, class, split)] in the folder loader's order."""
    rows = []
    for split, count in (("train", per_class), ("test", 2)):
        for i, name in enumerate(CLASSES):
            (root / "folder" / split / name).mkdir(parents=True, exist_ok=True)
            (root / "img" / split).mkdir(parents=True, exist_ok=True)
            for j in range(count):
                image = Image.new("RGB", size, (60 * i + 5 * j, 20 * j, 200 if split == "test" else 90))
                image.save(root / "folder" / split / name / f"{j}.png")
                image.save(root / "img" / split / f"{name}_{j}.png")
                rows.append((f"img/{split}/{name}_{j}.png", name, split))
    return rows


def write_csv(path, header, rows, bom=True, newline="\r\n"):
    """A CSV as a spreadsheet on Windows saves it: a BOM and CRLF line endings by default."""
    text = newline.join([",".join(header), *(",".join(row) for row in rows)]) + newline
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())


def csv_cfg(tiny_cfg, root, *overrides):
    return tiny_cfg("data.name=csv", f"data.root={root}", "data.labels=train.csv", "data.image_size=8", *overrides)


def test_csv_gives_the_same_images_labels_and_batches_as_the_folder_layout(tiny_cfg, tmp_path):
    rows = write_images(tmp_path)
    write_csv(tmp_path / "train.csv", ["image", "label", "split"], rows)  # BOM, CRLF, 'image' column found by auto
    as_csv = csv_cfg(tiny_cfg, tmp_path, "train.batch_size=4", "data.val_fraction=0.25")
    as_folder = tiny_cfg("data.name=folder", f"data.root={tmp_path / 'folder'}", "data.image_size=8",
                         "train.batch_size=4", "data.val_fraction=0.25")
    assert describe(as_csv.data).class_names == list(CLASSES)
    for split in ("train", "test"):
        for a, b in zip(load_split(as_csv.data, split), load_split(as_folder.data, split)):
            assert torch.equal(a, b)
    csv_loaders = make_train_loaders(as_csv, torch.device("cpu"))
    folder_loaders = make_train_loaders(as_folder, torch.device("cpu"))
    assert csv_loaders[2] == folder_loaders[2]
    for a, b in zip(csv_loaders[:2], folder_loaders[:2]):
        for (images_a, labels_a), (images_b, labels_b) in zip(a, b):
            assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)
    streamed, _ = load_split(csv_cfg(tiny_cfg, tmp_path, "data.max_memory_mb=0").data, "train")
    assert not isinstance(streamed, torch.Tensor) and len(streamed) == 12  # decoded per batch, as a folder's


def test_csv_trains_and_test_py_reports_the_same_accuracy(tiny_cfg, tmp_path):
    rows = write_images(tmp_path)
    write_csv(tmp_path / "train.csv", ["file", "label"], [r[:2] for r in rows if r[2] == "train"], bom=False,
              newline="\n")
    write_csv(tmp_path / "test.csv", ["file", "label"], [r[:2] for r in rows if r[2] == "test"])
    args = ["data.name=csv", f"data.root={tmp_path}", "data.labels=train.csv", "data.test_labels=test.csv",
            "data.image_size=8", "data.val_fraction=0.25", *TINY, "train.epochs=1", "run.name=c"]
    code, out, err = call_script(train.main, *args, cwd=tmp_path)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "checkpoints" / "c" / "best.pt")["data"]["class_names"] == list(CLASSES)
    trained = next(line for line in out.splitlines() if line.startswith("test ("))  # test (best.pt, epoch 1): ...
    code, out, err = call_script(test_script.main, "checkpoints/c", cwd=tmp_path)
    assert code == 0, err
    assert trained.split("accuracy ")[1] in out and "images: 6" in out


def bad_csv(root, header=("file", "label"), rows=None, test_rows=None):
    write_images(root)
    rows = [(f"img/train/{c}_{j}.png", c) for c in CLASSES for j in range(4)] if rows is None else rows
    write_csv(root / "train.csv", header, rows)
    write_csv(root / "test.csv", ("file", "label"),
              [(f"img/test/{c}_0.png", c) for c in CLASSES] if test_rows is None else test_rows)


GOOD = [(f"img/train/{c}_{j}.png", c) for c in CLASSES for j in range(4)]


@pytest.mark.parametrize("header,rows,test_rows,message", [
    (("path", "class"), None, None, r"has no column 'label' \(data.label_column\); its columns are path, class"),
    (("name", "label"), None, None, r"has no image column \(file \| image .*; its columns are name, label"),
    (None, GOOD + [("img/nope.png", "cat"), ("img/gone.png", "dog")], None,
     r"train.csv: 2 of 14 listed images do not exist \(row 14: .*nope.png; row 15: .*gone.png\)"),
    (None, GOOD + [GOOD[0]], None, r"img/train/cat_0.png is listed twice \(rows 2 and 14\)"),
    (None, GOOD[:3] + [("img/train/cat_3.png", " ")] + GOOD[4:], None, r"1 rows have an empty label .*rows 5\)"),
    (None, GOOD + [("../outside.png", "cat")], None, r"row 14: image path '../outside.png' is not inside data.root"),
    (None, GOOD + [("/etc/passwd", "cat")], None, r"row 14: image path '/etc/passwd' is not inside data.root"),
    (None, None, [("img/test/cat_0.png", "cat"), ("img/test/dog_1.png", "wolf")],
     r"test.csv: labels wolf appear only in the test split"),
    (None, None, [GOOD[0]], r"cat_0.png is listed for training \(.*train.csv row 2\) and for testing"),
    (None, [(f, "cat") for f, _ in GOOD], [("img/test/cat_0.png", "cat")], r"train.csv has one class \(cat\)"),
])
def test_bad_csv_rows_are_named(tiny_cfg, tmp_path, header, rows, test_rows, message):
    bad_csv(tmp_path, header or ("file", "label"), rows, test_rows)
    with pytest.raises(UserError, match=message):
        load_split(csv_cfg(tiny_cfg, tmp_path, "data.test_labels=test.csv").data, "train")


def test_csv_without_a_test_split_or_with_a_bad_split_value_says_what_to_do(tiny_cfg, tmp_path):
    bad_csv(tmp_path)
    with pytest.raises(UserError, match="has no test split .*; set data.test_labels .* or .* data.test_fraction"):
        describe(csv_cfg(tiny_cfg, tmp_path).data)
    write_csv(tmp_path / "train.csv", ("file", "label", "split"), [(*GOOD[0], "valid"), (*GOOD[1], "train")])
    with pytest.raises(UserError, match="split column must be train or test; row 2 has 'valid'"):
        describe(csv_cfg(tiny_cfg, tmp_path).data)
    with pytest.raises(UserError, match="data.name=csv needs data.labels"):
        describe(tiny_cfg("data.name=csv").data)


def test_a_bad_csv_stops_train_py_with_one_error_line(tmp_path):
    bad_csv(tmp_path, rows=GOOD + [("img/nope.png", "cat")])
    code, out, err = call_script(train.main, "data.name=csv", f"data.root={tmp_path}", "data.labels=train.csv",
                                 "data.test_labels=test.csv", "run.device=cpu", cwd=tmp_path)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "row 14" in err


def test_cached_labels_follow_the_csv(tiny_cfg, tmp_path):
    bad_csv(tmp_path)
    cfg = csv_cfg(tiny_cfg, tmp_path, "data.test_labels=test.csv")
    assert load_split(cfg.data, "train")[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    write_csv(tmp_path / "train.csv", ("file", "label"), [(f, "owl" if c == "cat" else c) for f, c in GOOD])
    write_csv(tmp_path / "test.csv", ("file", "label"), [(f"img/test/{c}_0.png", c) for c in CLASSES[1:]])
    assert load_split(cfg.data, "train")[1].tolist() == [1] * 4 + [0] * 4 + [1] * 4  # dog, owl now


def test_test_fraction_holds_out_a_stratified_split_that_test_py_finds_again(tiny_cfg, tmp_path, capsys):
    write_images(tmp_path, per_class=10)
    photos = tmp_path / "folder" / "train"  # a single folder of class folders, no test split
    cfg = tiny_cfg("data.name=folder", f"data.root={photos}", "data.image_size=8", "data.test_fraction=0.2")
    train_files, train_labels = datasets.source_of(cfg.data).split_files(cfg.data, "train")
    test_files, test_labels = datasets.source_of(cfg.data).split_files(cfg.data, "test")
    assert test_labels.tolist() == [0, 0, 1, 1, 2, 2] and len(train_files) == 24
    assert not set(train_files) & set(test_files)
    _, _, info = make_train_loaders(cfg, torch.device("cpu"))
    assert "note: the validation split has only 1 image of class cat (3 in all)" in capsys.readouterr().out
    assert info.held_out == [f.relative_to(photos).as_posix() for f in test_files]
    seeded = tiny_cfg("data.name=folder", f"data.root={photos}", "data.image_size=8", "data.test_fraction=0.2",
                      "run.seed=5")
    assert make_train_loaders(seeded, torch.device("cpu"))[2].held_out == info.held_out  # whatever the seed
    assert len(make_eval_loader(cfg, info, "test", 8, torch.device("cpu")).labels) == 6
    next(f for f in train_files if f.parent.name == "dog").unlink()  # 9 dogs: the same 2 held out
    assert datasets.held_out_names(cfg.data) == info.held_out
    test_files[0].unlink()  # now another cat, one the model trained on, would be tested
    with pytest.raises(UserError, match=r"changed since this model was trained.*1 no longer held out, e.g. cat/.*1 new"):
        make_eval_loader(cfg, info, "test", 8, torch.device("cpu"))
    with pytest.raises(UserError, match="data.test_fraction: digits has a test split of its own"):
        describe(tiny_cfg("data.test_fraction=0.2").data)


def test_photos_recipe_trains_offline_on_one_folder_of_class_folders(tmp_path):
    write_images(tmp_path, per_class=10)
    code, out, err = call_script(train.main, "--config", str(ROOT / "configs" / "photos.yaml"),
                                 f"data.root={tmp_path / 'folder' / 'train'}", *TINY, "train.epochs=1",
                                 "data.image_size=8", cwd=tmp_path)
    assert code == 0, err
    assert "data: folder, 21 train / 3 val images" in out and "note: the validation split has only 1 image" in out
    assert "test (best.pt, epoch 1)" in out
