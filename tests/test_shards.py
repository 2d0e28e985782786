"""WebDataset shards (data.name=shards, tools/make_shards.py) on the embedded digits: the shards and index.json
hold the source's images, labels and splits; an interrupted or killed make_shards leaves no half shard and the same
command finishes it; a run from shards repeats bitwise, resumes at an epoch boundary as if never stopped, and
test.py reproduces its numbers; under torchrun every process reads shards of its own and takes as many batches
(generated shard counts); each bad input is one named error."""
import csv
import json
import os
import shutil
import signal
import sys

import pytest
import torch

pytest.importorskip("webdataset", reason="webdataset is absent; pip install -r requirements-extras.txt")
from hypothesis import given, settings, strategies as st  # noqa: E402

from conftest import TINY, call_script, forked, needs_fork  # noqa: E402
from engine import runs  # noqa: E402
from engine.builtin_sets import load_digits  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.datasets import describe, load_split  # noqa: E402
from engine.datasource import Share  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.hooks import Hook  # noqa: E402
from engine.loaders import make_eval_loader, normalisation, train_val_split  # noqa: E402
from engine.metrics import evaluate_checkpoint  # noqa: E402
from engine.shards import INDEX_NAME, read_index_file, reading_plan  # noqa: E402
from engine.storage import CRASH_ENV  # noqa: E402
import train  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
import make_shards  # noqa: E402

SIZE = "150"  # digits: train 1295 images in 9 shards (8 of 150), val 142 in one, test 360 in 3
TRAIN_PART = "train-{000000..000002}.tar"  # 450 of them, for quick runs
FAST = ["data.shuffle_buffer=200", "data.num_workers=0"]
CPU = torch.device("cpu")


def write(out, *args: str, size: str = SIZE) -> tuple[int, str, str]:
    return call_script(make_shards.main, "--out", str(out), "--shard-size", size, *args, cwd=out.parent)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The digits as shards, written once for the module."""
    out = tmp_path_factory.mktemp("digits") / "shards"
    code, _, err = write(out, f"data.cache_dir={out.parent / 'cache'}")
    assert code == 0, err
    return out


def shard_cfg(tiny_cfg, root, *overrides):
    return tiny_cfg("data.name=shards", f"data.root={root}", *FAST, *overrides)


def read_rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_make_shards_writes_the_source_splits_and_an_index(shards, tiny_cfg):
    index = read_index_file(shards / INDEX_NAME)
    assert index.complete and [e.count for e in index.splits["train"]] == [150] * 8 + [95]
    assert [e.count for e in index.splits["test"]] == [150, 150, 60] and index.count("val") == 142
    assert sorted(p.name for p in shards.iterdir()) == sorted([INDEX_NAME, "val-000000.tar"] + [
        f"{split}-{k:06d}.tar" for split, count in (("train", 9), ("test", 3)) for k in range(count)])
    images, labels = load_digits("train")
    train_idx, val_idx = train_val_split(labels, 0.1, 0)  # as train.py holds it out of digits
    assert index.class_counts("train") == torch.bincount(labels[train_idx], minlength=10).tolist()
    stats = normalisation(tiny_cfg(), images, train_idx)
    assert (index.mean, index.std) == (stats["mean"], stats["std"])
    cfg = shard_cfg(tiny_cfg, shards)
    info = describe(cfg.data)
    assert (info.in_channels, info.image_size, info.class_names) == (1, 8, [str(d) for d in range(10)])
    val, _ = load_split(cfg.data, "val")  # stored in order: the very images of train.py's validation split
    assert torch.equal(torch.stack(list(val)), images[val_idx])
    test, _ = load_split(cfg.data, "test")
    assert torch.equal(torch.stack(list(test.select(torch.tensor([3, 300])))), load_digits("test")[0][[3, 300]])


def test_an_interrupted_make_shards_leaves_no_half_shard_and_the_same_command_finishes(shards, tmp_path,
                                                                                        monkeypatch):
    out = tmp_path / "shards"
    real_write = make_shards.write_shard

    def interrupted_in_the_second_shard(path, samples):
        def some():
            for k, sample in enumerate(samples):
                if path.name == "train-000001.tar" and k == 50:
                    raise KeyboardInterrupt
                yield sample
        real_write(path, some())
    monkeypatch.setattr(make_shards, "write_shard", interrupted_in_the_second_shard)
    code, out_text, _ = write(out, f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 130 and "the 1 finished shards are kept" in out_text
    assert sorted(p.name for p in out.iterdir()) == [INDEX_NAME, "train-000000.tar"]  # no half shard, no temporary
    with pytest.raises(UserError, match="tools/make_shards.py has not finished these shards"):
        describe(load_config(None, ["data.name=shards", f"data.root={out}"]).data)
    code, _, err = write(out, size="400")
    assert code == 2 and "other settings (shard_size: '150', now '400')" in err
    monkeypatch.setattr(make_shards, "write_shard", real_write)
    code, out_text, _ = write(out, f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 0 and "continuing after 1 shards" in out_text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in shards.iterdir()}


@needs_fork
def test_a_killed_make_shards_leaves_no_half_shard_and_the_same_command_finishes(shards, tmp_path, one_thread):
    out = tmp_path / "shards"

    def killed_before_renaming_the_second_shard():
        os.environ[CRASH_ENV] = "train-000001.tar:written:1"  # SIGKILL: no handler, no clean-up runs
        write(out, f"data.cache_dir={tmp_path / 'cache'}")
    _, status = os.waitpid(forked(killed_before_renaming_the_second_shard), 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".tmp")) == [INDEX_NAME, "train-000000.tar"]
    code, _, err = write(out, f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in shards.iterdir()}


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    """A 2-epoch run from the shards, with two DataLoader workers."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [*TINY, "data.name=shards", f"data.root={shards / TRAIN_PART}", *FAST,
                             "data.num_workers=2", f"run.output_dir={root}", "run.name=straight"])
    return cfg, train.train(cfg, explicit_name=True)


def test_a_run_from_shards_repeats_bitwise_and_its_checkpoint_reproduces_its_numbers(straight):
    cfg, run_dir = straight
    again = train.train(load_config(None, [*TINY, "data.name=shards", f"data.root={cfg.data.root}", *FAST,
                                           "data.num_workers=2", f"run.output_dir={run_dir.parent}"]))
    assert read_rows(again) == read_rows(run_dir) and len(read_rows(run_dir)) == 2
    ckpt, loader, results = evaluate_checkpoint(run_dir / "best.pt", CPU, "val")
    assert results["accuracy"] == ckpt["history"][ckpt["epoch"] - 1]["val_acc"]  # test.py's number is training's
    assert loader.num_images == len(results["labels"]) == 142
    order = torch.cat([images for images, _ in loader])  # raw_images: positions of evaluate()'s order
    assert torch.equal(order, loader.normalise(loader.raw_images(torch.arange(142)).float()))


def test_int8_export_calibrates_on_a_sample_of_the_train_stream(straight):
    import export

    images = export.calibration_images(load_checkpoint(straight[1] / "best.pt"))
    assert images.shape == (min(450, export.quantize.CALIBRATION_IMAGES), 1, 8, 8) and images.dtype == "uint8"


def test_a_resumed_run_continues_at_the_epoch_boundary_and_says_so(straight, capsys):
    cfg, run_dir = straight

    class StopAfterEpoch1(Hook):
        def on_epoch_end(self, run, row):
            raise KeyboardInterrupt  # Ctrl-C once epoch 1 is saved
    stopped = run_dir.parent / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train.train(load_config(None, [*TINY, "data.name=shards", f"data.root={cfg.data.root}", *FAST,
                                       "data.num_workers=2", f"run.output_dir={run_dir.parent}", "run.name=stopped"]),
                    explicit_name=True, hooks=(StopAfterEpoch1(),))
    ckpt = load_checkpoint(stopped / "last.pt")
    assert ckpt["epoch"] == 1
    capsys.readouterr()
    train.train(runs.resumed_config(ckpt, []), ckpt, stopped)
    assert "the stream starts at the beginning of epoch 2, which reads as in an uninterrupted run" in (
        capsys.readouterr().out)
    assert read_rows(stopped) == read_rows(run_dir)


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(st.integers(1, 60), min_size=1, max_size=30), world=st.integers(1, 5),
       batch_size=st.integers(1, 40), workers=st.integers(0, 4), epoch=st.integers(0, 3))
def test_processes_read_shards_of_their_own_and_take_equal_steps(counts, world, batch_size, workers, epoch):
    shares = [Share(batch_size, 7, epoch, rank, world, workers) for rank in range(world)]
    if sum(counts) < world * batch_size or len(counts) < world:
        with pytest.raises(UserError, match="lower train.batch_size|write more, smaller shards"):
            reading_plan(counts, shares[0])
        return
    plans = [reading_plan(counts, share) for share in shares]
    read = [shard for plan in plans for shard in plan.shards]
    assert sorted(read) == list(range(len(counts)))  # disjoint, and every shard read by one process
    for plan in plans:
        assert sum(plan.quotas) == sum(counts) // (world * batch_size) * batch_size  # the same full batches each
        assert all(quota % batch_size == 0 for quota in plan.quotas)
        assert sorted(s for group in plan.groups() for s in group) == sorted(plan.shards)  # workers: disjoint too
        assert plan.workers == min(workers, len(plan.shards))
    evaluation = [reading_plan(counts, Share(batch_size, None, 0, rank, world, workers)) for rank in range(world)]
    if len(counts) >= world:
        assert sorted(s for plan in evaluation for s in plan.shards) == list(range(len(counts)))


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 1), (4, 0)])  # 3 train shards: 4 processes split by key
def test_each_process_yields_its_planned_batches(shards, tiny_cfg, world, workers):
    cfg = shard_cfg(tiny_cfg, shards)
    train_split, _ = load_split(cfg.data, "train")
    test_split, _ = load_split(cfg.data, "test")
    steps, tested = [], []
    for rank in range(world):
        share = Share(64, 0, 1, rank, world, workers)
        if world <= 3:
            batches = [len(labels) for _, labels in train_split.batches(share)]
            assert batches == [64] * train_split.num_batches(share) == [64] * (1295 // (world * 64))
            steps.append(len(batches))
        tested += [labels for _, labels in test_split.batches(Share(64, None, 0, rank, world, workers))]
    assert len(set(steps)) <= 1
    assert sorted(torch.cat(tested).tolist()) == sorted(load_digits("test")[1].tolist())  # each image once


def test_a_pipe_pattern_reads_the_shards_as_the_folder_does(shards, tiny_cfg):
    folder = shard_cfg(tiny_cfg, shards)
    piped = shard_cfg(tiny_cfg, f"pipe:cat {shards}/train-{{000000..000001}}.tar")  # index.json read through cat
    assert describe(piped.data) == describe(folder.data)
    streams = [load_split(cfg.data, split)[0] for cfg in (piped, folder) for split in ("train", "val")]
    assert len(streams[0]) == 300 and streams[0].urls[1] == f"cat {shards}/train-000001.tar".join(("pipe:", ""))
    share = Share(100, 3, 2, 0, 1, 0)
    first = next(iter(streams[0].batches(share)))
    assert first[0].shape == (100, 1, 8, 8) and len(streams[1]) == len(streams[3]) == 142


def bad_root(shards, tmp_path, case: str) -> str:
    """data.root with one thing wrong."""
    root = tmp_path / case.replace(" ", "_")
    if case == "empty folder":
        root.mkdir()
        return str(root)
    shutil.copytree(shards, root)
    if case == "no index":
        (root / INDEX_NAME).unlink()
    elif case == "pattern without index":
        (root / INDEX_NAME).unlink()
        return f"{root}/{TRAIN_PART}"
    elif case == "pattern matching nothing":
        return f"{root}/train-{{000010..000012}}.tar"
    elif case == "index not json":
        (root / INDEX_NAME).write_text("{not json")
    elif case == "unfinished index":
        text = (root / INDEX_NAME).read_text()
        (root / INDEX_NAME).write_text(text.replace('"complete": true', '"complete": false'))
    elif case == "missing shard":
        (root / "train-000001.tar").unlink()
    return str(root)


@pytest.mark.parametrize("case,message", [
    ("empty folder", r"holds no index.json and no shards; write them there with python tools/make_shards.py --out"),
    ("no index", r"holds 13 .tar files but no index.json, which the loader reads instead of scanning them"),
    ("pattern without index", r"no index.json beside the shards of the pattern \(looked for .*index.json\); it holds "
                              r"what the loader needs"),
    ("pattern matching nothing", r"the pattern names 'train-000010.tar', which is not a train shard of .*index.json "
                                 r"\(it matches none of them; they are train-000000.tar to train-000008.tar\)"),
    ("index not json", r"index.json is not an index of shards tools/make_shards.py wrote \(not JSON\)"),
    ("unfinished index", r"tools/make_shards.py has not finished these shards \(13 written so far\); run the same"),
    ("missing shard", r"train-000001.tar is missing: 8 of the 9 train shards index.json lists are there"),
])
def test_bad_shards_are_named(shards, tiny_cfg, tmp_path, case, message):
    cfg = shard_cfg(tiny_cfg, bad_root(shards, tmp_path, case))
    with pytest.raises(UserError, match=message):
        describe(cfg.data)
        load_split(cfg.data, "train")


@pytest.mark.parametrize("damage,message", [
    (lambda data: b"not a tar file" * 100, r"train-000001.tar is not a readable tar shard \(ReadError: "),
    (lambda data: data[:len(data) // 2], r"train-000001.tar (is not a readable tar shard|holds \d+ images but "
                                         r"index.json counts 150|sample \d+ has no image)"),  # cut short
])
def test_a_damaged_shard_is_named_when_read(shards, tiny_cfg, tmp_path, damage, message):
    root = tmp_path / "damaged"
    shutil.copytree(shards, root)
    (root / "train-000001.tar").write_bytes(damage((root / "train-000001.tar").read_bytes()))
    stream, _ = load_split(shard_cfg(tiny_cfg, root).data, "train")
    with pytest.raises(UserError, match=message):
        list(stream)


@pytest.mark.parametrize("override,message", [
    ("data.folds=5", r"data.folds: shards hold one validation split"),
    ("data.sampler=balanced", r"data.sampler=balanced draws images by their position"),
    ("data.flip=alternate", r"data.flip=alternate mirrors each image by its position"),
    ("train.batch_size=2000", r"train.batch_size 2000 x 1 process\(es\) is more than the 1295 training images"),
])
def test_what_a_stream_cannot_do_is_refused_before_any_work(shards, tiny_cfg, override, message):
    with pytest.raises(UserError, match=message):
        train.train(shard_cfg(tiny_cfg, shards, override))


def test_a_bad_root_is_one_error_line_and_exit_2(tmp_path):
    (tmp_path / "none").mkdir()
    code, _, err = call_script(train.main, "data.name=shards", "data.root=none", *TINY, cwd=tmp_path)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "holds no index.json" in err


def test_without_webdataset_shards_say_what_to_install(shards, tiny_cfg, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset raises ImportError
    with pytest.raises(UserError, match=r"pip install 'webdataset>=0.2.100' \(it is in requirements-extras.txt\)"):
        describe(shard_cfg(tiny_cfg, shards).data)
    monkeypatch.undo()
    shard_cfg(tiny_cfg, shards, "data.val_fraction=0.2")
    assert "data.val_fraction has no effect: data.name=shards reads the validation split its files hold" in (
        capsys.readouterr().out)


def test_a_folder_source_keeps_its_png_and_jpeg_files_as_they_are(tmp_path):
    from PIL import Image

    pixels = load_digits("test")[0]
    for split, count in (("train", 12), ("test", 4)):
        for k in range(count):
            folder = tmp_path / "photos" / split / "ab"[k % 2]
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[k, 0].numpy()).convert("RGB").resize((16, 16))
            image.save(folder / f"{k}.{('png', 'jpg', 'bmp')[k % 3]}")
    args = ["data.name=folder", f"data.root={tmp_path / 'photos'}", "data.image_size=8", "data.val_fraction=0.25",
            f"data.cache_dir={tmp_path / 'cache'}"]
    code, _, err = call_script(make_shards.main, "--out", "shards", *args, cwd=tmp_path)
    assert code == 0, err
    wds = __import__("webdataset")
    stored = {sample["__key__"]: sample for sample in wds.WebDataset(str(tmp_path / "shards" / "test-000000.tar"),
                                                                     shardshuffle=False)}
    files = sorted((tmp_path / "photos" / "test").rglob("*.*"))  # the source's order: class by class, by name
    for key, path in zip(sorted(stored), files):
        kept = {".png": "png", ".jpg": "jpg", ".bmp": None}[path.suffix]
        assert (stored[key][kept] == path.read_bytes()) if kept else "png" in stored[key], path.name
    source = load_config(None, args)
    shards = load_config(None, ["data.name=shards", f"data.root={tmp_path / 'shards'}", "data.num_workers=0"])
    assert torch.equal(torch.stack(list(load_split(shards.data, "test")[0])), load_split(source.data, "test")[0])


def test_multilabel_shards_give_rows_of_labels(tmp_path):
    from engine.shards import Index, ShardEntry, write_shard

    rows = [[0], [1, 2], [], [0, 2]] * 4
    images, _ = load_digits("train")
    samples = [{"__key__": f"{i:08d}", "png": make_png(images[i]), "json": json.dumps(row).encode()}
               for i, row in enumerate(rows)]
    index = Index(["a", "b", "c"], 1, 8, True, [0.3], [0.4], {}, complete=True)
    for split in ("train", "val", "test"):
        write_shard(tmp_path / f"{split}-000000.tar", samples)
        index.splits[split] = [ShardEntry(f"{split}-000000.tar", 16, [8, 4, 8])]
    (tmp_path / INDEX_NAME).write_text(index.to_json())
    cfg = load_config(None, ["data.name=shards", f"data.root={tmp_path}", "data.multilabel=true", *FAST])
    info = describe(cfg.data)
    assert info.multilabel and info.class_counts == [8, 4, 8]
    loader = make_eval_loader(cfg, info, "test", 16, CPU)
    labels = torch.cat([labels for _, labels in loader])
    assert labels.tolist() == [[float(k in row) for k in range(3)] for row in rows]
    with pytest.raises(UserError, match="are multi-label; set data.multilabel=true"):
        describe(load_config(None, ["data.name=shards", f"data.root={tmp_path}"]).data)


def make_png(image: torch.Tensor) -> bytes:
    from engine.shards import image_file

    return image_file(image[None], 0)[1]
