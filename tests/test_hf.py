"""Hugging Face data (data.name=hf): snapshots written with pyarrow in the Hub's own schema (an Image column
struct<bytes, path>, a ClassLabel column whose names are in the schema metadata), as parquet files and as a
save_to_disk folder. Both give the same images and labels, in memory or decoded per batch; a run trains, tests
(test.py's accuracy is training's), predicts and exports from them; multi-label and data.test_fraction work;
each bad input is one named error; hf://NAME without the datasets package says how to download it."""
import dataclasses
import io
import itertools
import json
import sys
import types

import pytest
import torch
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="pyarrow is absent; pip install -r requirements-extras.txt")
pq = pytest.importorskip("pyarrow.parquet")

from conftest import TINY, call_script  # noqa: E402
from engine.builtin_sets import load_digits  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.datasets import describe, file_list, held_out_names, load_split  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.imagefiles import decode_image  # noqa: E402
import test as test_script  # noqa: E402
import train  # noqa: E402

NAMES = ["zero", "one", "two"]
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the datasets library's Image feature
FEATURES = {"image": {"_type": "Image"}, "label": {"names": NAMES, "_type": "ClassLabel"}}
TRAIN, TEST = 45, 15


def png(pixels: torch.Tensor) -> bytes:
    """A (1, H, W) uint8 image as PNG bytes, shown 2x as big (the loader shrinks it back)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[0].numpy(), "L").resize((16, 16), Image.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def digit_rows(count: int, offset: int = 0) -> tuple[list[bytes], list[int]]:
    """count embedded digits of classes 0, 1 and 2 as PNG bytes, and their labels."""
    images, labels = load_digits("train")
    keep = (labels < 3).nonzero().flatten()[offset: offset + count]
    return [png(images[i]) for i in keep.tolist()], labels[keep].tolist()


def hub_table(images: list, labels: list, features: dict = FEATURES, label_type=pa.int64(),
              columns: tuple[str, str] = ("image", "label")) -> "pa.Table":
    """Rows in the schema the datasets library writes, its features in the schema metadata."""
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()} if features else None
    schema = pa.schema([(columns[0], IMAGE_TYPE), (columns[1], label_type)], metadata=meta)
    cells = [{"bytes": data, "path": f"{i}.png"} for i, data in enumerate(images)]
    return pa.table({columns[0]: cells, columns[1]: labels}, schema=schema)


def write_parquet(root, tables: dict, shards: int = 2):
    """root/data/<split>-0000k-of-0000n.parquet, as a Hub repository holds them, in row groups of 16 rows."""
    (root / "data").mkdir(parents=True)
    for split, table in tables.items():
        n = shards if split == "train" else 1
        step = -(-len(table) // n)
        for k in range(n):
            pq.write_table(table.slice(k * step, step), root / "data" / f"{split}-{k:05d}-of-{n:05d}.parquet",
                           row_group_size=16)
    return root


def write_saved(root, tables: dict, chunk: int = 16):
    """What DatasetDict.save_to_disk writes: dataset_dict.json, and per split an Arrow stream, dataset_info.json
    (the features) and state.json."""
    root.mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(tables)}))
    for split, table in tables.items():
        (root / split).mkdir()
        with pa.OSFile(str(root / split / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema.with_metadata({})) as writer:  # the features: in the json
                for batch in table.to_batches(max_chunksize=chunk):
                    writer.write_batch(batch)
        (root / split / "dataset_info.json").write_text(json.dumps({"features": FEATURES, "description": ""}))
        (root / split / "state.json").write_text(json.dumps(
            {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": split}))
    return root


def digit_tables() -> dict:
    return {"train": hub_table(*digit_rows(TRAIN)), "test": hub_table(*digit_rows(TEST, offset=TRAIN))}


def hf_cfg(tiny_cfg, root, *overrides):
    return tiny_cfg("data.name=hf", f"data.root={root}", "data.channels=1", "data.image_size=8",
                    "data.val_fraction=0.2", *overrides)


def test_both_layouts_give_the_images_and_labels_in_memory_and_per_batch(tiny_cfg, tmp_path):
    tables = digit_tables()
    parquet = write_parquet(tmp_path / "hub", tables)
    saved = write_saved(tmp_path / "saved", tables)
    images, labels = digit_rows(TRAIN)
    expected = torch.stack([torch.from_numpy(decode_image(io.BytesIO(b), 1, 8)) for b in images])
    for root in (parquet, saved):
        cfg = hf_cfg(tiny_cfg, root)
        assert describe(cfg.data).class_names == NAMES and not describe(cfg.data).multilabel
        got_images, got_labels = load_split(cfg.data, "train")
        assert torch.equal(got_images, expected) and got_labels.tolist() == labels
        assert load_split(cfg.data, "test")[0].shape == (TEST, 1, 8, 8)
        streamed, streamed_labels = load_split(hf_cfg(tiny_cfg, root, "data.max_memory_mb=0").data, "train")
        assert not isinstance(streamed, torch.Tensor) and torch.equal(streamed_labels, got_labels)
        picked = streamed.select(torch.tensor([44, 0, 17]))  # across both parquet files and several row groups
        assert torch.equal(torch.stack([picked[i] for i in range(3)]), expected[[44, 0, 17]])
    names = sorted(file_list(hf_cfg(tiny_cfg, parquet).data))  # the model card's hash and the cache key
    assert names == ["test/data/test-00000-of-00001.parquet", "train/data/train-00000-of-00002.parquet",
                     "train/data/train-00001-of-00002.parquet"]
    assert len(list((tmp_path / "cache").glob("hf-train-0000*-of-00002-*.arrow"))) == 2  # the parquet's copies


def test_both_layouts_and_both_ways_of_reading_train_the_same_model(tiny_cfg, tmp_path):
    tables = digit_tables()
    same = ["train.epochs=1", "model.dropout=0"]  # dropout draws from the generator a DataLoader also draws from
    runs = [train.train(hf_cfg(tiny_cfg, write_parquet(tmp_path / "hub", tables), *same, "run.name=a")),
            train.train(hf_cfg(tiny_cfg, write_saved(tmp_path / "saved", tables), *same, "run.name=b",
                               "data.max_memory_mb=0", "data.num_workers=0"))]
    weights = [load_checkpoint(run / "last.pt")["model"] for run in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """A tiny run trained from a Hub parquet snapshot: (the folder it ran in, what train.py printed)."""
    root = tmp_path_factory.mktemp("hf")
    write_parquet(root / "digits", digit_tables())
    args = ["data.name=hf", "data.root=digits", "data.channels=1", "data.image_size=8", "data.val_fraction=0.2",
            *TINY, "train.epochs=1", "run.amp=none", "run.name=h"]
    code, out, err = call_script(train.main, *args, cwd=root)
    assert code == 0, err
    return root, out


def test_a_run_on_hub_data_tests_and_predicts(hf_run):
    root, out = hf_run
    ckpt = load_checkpoint(root / "checkpoints" / "h" / "best.pt")
    assert ckpt["data"]["class_names"] == NAMES
    trained = next(line for line in out.splitlines() if line.startswith("test ("))
    code, out, err = call_script(test_script.main, "checkpoints/h", cwd=root)
    assert code == 0, err
    assert trained.split("accuracy ")[1] in out and "images: 15" in out
    assert "Hugging Face parquet files, tested on test" in (root / "checkpoints" / "h" / "MODEL_CARD.md").read_text()
    (root / "one.png").write_bytes(digit_rows(1, offset=TRAIN)[0][0])
    code, out, err = call_script(test_script.main, "checkpoints/h", "--predict", "one.png", cwd=root)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("one.png: ") and out.splitlines()[-1].split()[1] in NAMES


def test_a_run_on_hub_data_exports(hf_run, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is absent; pip install -r requirements-extras.txt")
    pytest.importorskip("onnxscript", reason="onnxscript is absent; pip install -r requirements-extras.txt")
    import onnxruntime

    from tools import export

    monkeypatch.chdir(hf_run[0])  # where data.root=digits is
    onnx_path, _ = export.export(hf_run[0] / "checkpoints" / "h" / "best.pt")  # checked on the test split
    meta = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(meta.custom_metadata_map["class_names"]) == NAMES


def multilabel_table(count: int) -> "pa.Table":
    """Grey 8x8 images, each with a bright quarter per label present (labels 0..2), as Sequence(ClassLabel)."""
    generator = torch.Generator().manual_seed(0)
    images, labels = [], []
    for i in range(count):
        present = [k for k in range(3) if torch.rand(1, generator=generator) < 0.5]
        pixels = torch.full((1, 8, 8), 60 + i, dtype=torch.uint8)
        for k in present:
            pixels[0, 4 * (k % 2): 4 * (k % 2) + 4, 4 * (k // 2): 4 * (k // 2) + 4] = 250
        images.append(png(pixels))
        labels.append(present)
    features = {"image": {"_type": "Image"}, "labels": {"feature": {"names": NAMES, "_type": "ClassLabel"},
                                                        "_type": "Sequence"}}
    return hub_table(images, labels, features, pa.list_(pa.int64()), ("image", "labels"))


def test_a_list_of_labels_trains_multilabel(tiny_cfg, tmp_path):
    table = multilabel_table(60)
    write_parquet(tmp_path / "tags", {"train": table.slice(0, 45), "test": table.slice(45)})
    args = ["data.name=hf", "data.root=tags", "data.label_column=labels", "data.multilabel=true", "data.channels=1",
            "data.image_size=8", "data.val_fraction=0.25", "train.best_metric=map", *TINY, "train.epochs=1",
            "run.name=m"]
    code, out, err = call_script(train.main, *args, cwd=tmp_path)
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "m" / "best.pt")
    assert ckpt["data"]["multilabel"] and ckpt["data"]["class_names"] == NAMES and len(ckpt["data"]["thresholds"]) == 3
    cfg = hf_cfg(tiny_cfg, tmp_path / "tags", "data.label_column=labels", "data.multilabel=true",
                 "train.best_metric=map")
    labels = load_split(cfg.data, "test")[1]
    assert labels.shape == (15, 3) and labels.tolist() == [[float(k in row) for k in range(3)]
                                                            for row in table.column("labels").to_pylist()[45:]]
    code, out, err = call_script(test_script.main, "checkpoints/m", cwd=tmp_path)
    assert code == 0 and "images: 15" in out, err


def test_without_a_test_split_test_fraction_holds_one_out_and_test_py_finds_it(tiny_cfg, tmp_path):
    images, labels = digit_rows(60)
    root = write_parquet(tmp_path / "hub", {"train": hub_table(images, labels)})
    with pytest.raises(UserError, match=r"no labelled test split \(.*; its splits: train\); .*data.test_fraction=0.2"):
        describe(hf_cfg(tiny_cfg, root).data)
    cfg = hf_cfg(tiny_cfg, root, "data.test_fraction=0.25", "train.epochs=1", "run.name=t")
    held = held_out_names(cfg.data)
    assert len(held) == 15 and held[0].startswith("data/train-0000") and ":" in held[0]
    assert len(load_split(cfg.data, "train")[1]) == 45 and len(load_split(cfg.data, "test")[1]) == 15
    run_dir = train.train(cfg)
    assert load_checkpoint(run_dir / "best.pt")["data"]["held_out"] == held
    code, out, err = call_script(test_script.main, str(run_dir), cwd=tmp_path)
    assert code == 0 and "images: 15" in out, err


def test_an_unlabelled_test_split_gives_way_to_validation(tiny_cfg, tmp_path):
    tables = digit_tables()
    tables = {"train": tables["train"], "validation": tables["test"],
              "test": hub_table(*digit_rows(5, offset=60)[:1], [-1] * 5)}  # the Hub's unlabelled test splits
    cfg = hf_cfg(tiny_cfg, write_parquet(tmp_path / "hub", tables))
    assert load_split(cfg.data, "test")[1].tolist() == digit_rows(TEST, offset=TRAIN)[1]


def test_without_class_names_the_classes_are_the_distinct_labels(tiny_cfg, tmp_path, capsys):
    images, labels = digit_rows(TRAIN)
    tables = {"train": hub_table(images, [7 + 3 * v for v in labels], features={}),  # 7, 10, 13: sorted as numbers
              "test": hub_table(*digit_rows(TEST, offset=TRAIN)[:1], [7] * TEST, features={})}
    cfg = hf_cfg(tiny_cfg, write_parquet(tmp_path / "plain", tables))
    assert describe(cfg.data).class_names == ["7", "10", "13"]
    assert load_split(cfg.data, "train")[1].tolist() == labels
    assert "stores no class names for column 'label'" in capsys.readouterr().out


def bad_set(root, case: str):
    """A parquet snapshot with one thing wrong."""
    images, labels = digit_rows(12)
    if case == "no files":
        (root / "data").mkdir(parents=True)
        (root / "data" / "README.md").write_text("no parquet here")
        return root
    tables = {"train": hub_table(images, labels), "test": hub_table(images[:3], labels[:3])}
    if case == "columns":
        tables["train"] = hub_table(images, labels, columns=("img", "labels"))
    elif case == "range":
        tables["test"] = hub_table(images[:3], [0, 5, 1])
    elif case == "one class":
        tables["train"] = hub_table(images, [0] * 12, features={})
    elif case == "list":
        tables["train"] = hub_table(images, [[v] for v in labels], label_type=pa.list_(pa.int64()))
    elif case == "no train":
        tables = {"validation": tables["train"], "test": tables["test"]}
    elif case == "image bytes":
        tables["train"] = hub_table(images[:4] + [b"not a png"] + images[5:], labels)
    elif case == "unlabelled":
        tables["test"] = hub_table(images[:3], [-1, -1, -1])
    write_parquet(root, tables, shards=1)
    if case == "corrupt":
        path = root / "data" / "train-00000-of-00001.parquet"
        path.write_bytes(path.read_bytes()[:200])
    return root


@pytest.mark.parametrize("case,message", [
    ("no files", r"holds no parquet files \(data/train-00000-of-00001.parquet, ...\) and no dataset_dict.json"),
    ("columns", r"train-00000-of-00001.parquet has no column 'label' \(data.label_column\); its columns are img, "
                r"labels; set data.label_column to one of them"),
    ("range", r"test-00000-of-00001.parquet row 1: column 'label' has label 5, outside the 3 classes \(0 to 2\) of "
              r"its ClassLabel \(1 such labels in split test\)"),
    ("one class", r"column 'label' has one class \(\[0\]\); a classifier needs at least two"),
    ("list", r"column 'label' \(data.label_column\) holds lists of labels; set data.multilabel=true"),
    ("no train", r"has the splits test, validation but no train split"),
    ("image bytes", r"train-00000-of-00001.parquet row 4 is not a readable image"),
    ("unlabelled", r"has no labelled test split \(test, validation, valid, val; its splits: test, train\)"),
    ("corrupt", r"train-00000-of-00001.parquet is not readable as a parquet file \(ArrowInvalid: "),
])
def test_bad_snapshots_are_named(tiny_cfg, tmp_path, case, message):
    cfg = hf_cfg(tiny_cfg, bad_set(tmp_path / case.replace(" ", "_"), case))
    with pytest.raises(UserError, match=message):
        load_split(cfg.data, "train")


def test_a_bad_snapshot_is_one_error_line_and_exit_2(tmp_path):
    bad_set(tmp_path / "bad", "columns")
    code, out, err = call_script(train.main, "data.name=hf", "data.root=bad", *TINY, cwd=tmp_path)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "its columns are img, labels" in err


def test_hf_names_without_the_datasets_package_say_how_to_download(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    with pytest.raises(UserError, match=r"hf://owner/set downloads with the datasets package, which is not installed; "
                                        r"pip install datasets, or .*save_to_disk\('data/hf/owner--set'\).*"
                                        r"huggingface-cli download --repo-type dataset owner/set --local-dir "
                                        r"data/hf/owner--set\), then set data.root=data/hf/owner--set"):
        describe(tiny_cfg("data.name=hf", "data.root=hf://owner/set").data)
    with pytest.raises(UserError, match=r"data.root: 'hf://../up' is not hf://NAME"):
        describe(tiny_cfg("data.name=hf", "data.root=hf://../up").data)


def test_hf_names_download_once_with_datasets_and_say_when_offline(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def load_dataset(name):
        calls.append(name)
        if name == "owner/offline":
            raise ConnectionError("Couldn't reach 'owner/offline' on the Hub (LocalEntryNotFoundError)")
        return types.SimpleNamespace(save_to_disk=lambda folder: write_saved(tmp_path / folder, digit_tables()))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(UserError, match=r"hf://owner/offline: the download failed \(ConnectionError: \"Couldn't "
                                        r"reach .*\); check the name and the connection, or download it once"):
        describe(tiny_cfg("data.name=hf", "data.root=hf://owner/offline").data)
    assert not (tmp_path / "data" / "hf" / "owner--offline").exists()
    cfg = hf_cfg(tiny_cfg, "hf://owner/digits")
    assert describe(cfg.data).class_names == NAMES and len(load_split(cfg.data, "train")[1]) == TRAIN
    assert (tmp_path / "data" / "hf" / "owner--digits" / "dataset_dict.json").is_file()
    assert calls == ["owner/offline", "owner/digits"]  # downloaded once, then read from data/hf/


def test_without_pyarrow_hf_says_what_to_install(tiny_cfg, tmp_path, monkeypatch):
    root = write_parquet(tmp_path / "hub", digit_tables())
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UserError, match=r"data.name=hf reads parquet .* with pyarrow, which is not installed; "
                                        r"pip install 'pyarrow>=15'"):
        describe(hf_cfg(tiny_cfg, root).data)



SHADES = [png(torch.full((1, 2, 2), 40 * k, dtype=torch.uint8)) for k in range(3)]  # class k: a grey of 40 k
_generated = itertools.count()


def test_any_sharding_keeps_the_rows_in_order_and_a_bad_label_is_named_by_file_and_row(tmp_path):
    """Rules, on generated cases: however the rows are cut into files, row groups or Arrow batches, both layouts
    give every row's label and image in order; data.test_fraction's train and test rows are disjoint and cover the
    split; a label outside the ClassLabel is named by its file and its row in that file."""
    pytest.importorskip("hypothesis", reason="Hypothesis is an extra: pip install -r requirements-extras.txt")
    from hypothesis import HealthCheck, given, settings, strategies as st

    base = load_config(None, ["data.name=hf", "data.channels=1", "data.image_size=8", "data.test_fraction=0.3",
                              "data.cache_dir="]).data  # once: reading config.yaml is most of an example's time

    @settings(max_examples=20, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.integers(0, 2), min_size=4, max_size=30), st.integers(1, 4), st.integers(1, 8),
           st.none() | st.tuples(st.integers(0, 10 ** 6), st.sampled_from([-1, 3, 9])))
    def check(labels, shards, group, bad):
        labels = [0, 1, *labels]  # two classes at least
        if bad is not None:
            labels[bad[0] % len(labels)] = bad[1]
        table = hub_table([SHADES[v % 3] for v in labels], labels)
        root = tmp_path / str(next(_generated))
        (root / "hub" / "data").mkdir(parents=True)
        step = -(-len(labels) // shards)
        for k in range(shards):
            path = root / "hub" / "data" / f"train-{k:05d}-of-{shards:05d}.parquet"
            pq.write_table(table.slice(k * step, step), path, row_group_size=group)
        write_saved(root / "saved", {"train": table}, chunk=group)
        for layout, where in (("hub", divmod(bad[0] % len(labels), step) if bad else None),
                              ("saved", (0, bad[0] % len(labels)) if bad else None)):
            cfg = dataclasses.replace(base, root=str(root / layout))
            if bad:
                name = (f"train-{where[0]:05d}-of-{shards:05d}.parquet" if layout == "hub"
                        else "data-00000-of-00001.arrow")
                with pytest.raises(UserError, match=rf"{name} row {where[1]}: column 'label' has label {bad[1]}, "
                                                    r"outside the 3 classes \(0 to 2\)"):
                    describe(cfg)
                continue
            (train_images, train_labels), (test_images, test_labels) = (load_split(cfg, s) for s in ("train", "test"))
            held = set(held_out_names(cfg))
            names = [f"data/train-{i // step:05d}-of-{shards:05d}.parquet:{i % step}" if layout == "hub"
                     else f"train/data-00000-of-00001.arrow:{i}" for i in range(len(labels))]
            is_test = [name in held for name in names]
            assert sorted(train_labels.tolist() + test_labels.tolist()) == sorted(labels)
            assert len(held) == len(test_labels)
            assert train_labels.tolist() == [v for v, t in zip(labels, is_test) if not t]
            assert test_labels.tolist() == [v for v, t in zip(labels, is_test) if t]
            for images, split_labels in ((train_images, train_labels), (test_images, test_labels)):
                assert torch.equal(images[:, 0, 0, 0].long(), 40 * split_labels)  # each row's own image

    check()
