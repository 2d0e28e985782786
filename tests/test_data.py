import pytest
import torch
from PIL import Image

from engine import datasets, folders, loaders
from engine.datasets import DataInfo, load_split
from engine.errors import UserError
from engine.loaders import Batching, Loader, channel_stats, eval_batch_size, make_train_loaders, train_val_split


def batches(loader):
    return [labels.clone() for _, labels in loader]


def test_digits_are_embedded_with_a_fixed_stratified_split(tiny_cfg):
    cfg = tiny_cfg()
    train_images, train_labels = load_split(cfg.data, "train")
    test_images, test_labels = load_split(cfg.data, "test")
    assert train_images.shape == (1437, 1, 8, 8) and test_images.shape == (360, 1, 8, 8)
    assert train_images.dtype == torch.uint8 and int(train_images.max()) == 255
    assert torch.bincount(test_labels).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]


def test_val_is_a_stratified_disjoint_part_of_train():
    labels = torch.arange(10).repeat_interleave(100)
    train_idx, val_idx = train_val_split(labels, 0.2, seed=3)
    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(1000))
    assert torch.bincount(labels[val_idx]).tolist() == [20] * 10
    assert torch.equal(val_idx, train_val_split(labels, 0.2, seed=3)[1])
    assert not torch.equal(val_idx, train_val_split(labels, 0.2, seed=4)[1])


def test_train_loader_shuffles_each_epoch_and_eval_does_not(tiny_cfg):
    train_loader, val_loader, info = make_train_loaders(tiny_cfg(), torch.device("cpu"))
    train_loader.set_epoch(1)
    first = torch.cat(batches(train_loader))
    train_loader.set_epoch(2)
    second = torch.cat(batches(train_loader))
    assert not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(second.tolist()) == sorted(train_loader.labels.tolist())
    train_loader.set_epoch(1)
    assert torch.equal(first, torch.cat(batches(train_loader)))  # same seed and epoch: same order
    assert torch.equal(torch.cat(batches(val_loader)), val_loader.labels)  # eval: stored order
    assert len(train_loader) == -(-len(train_loader.labels) // train_loader.batching.size)


def test_batches_are_normalised_with_training_statistics(tiny_cfg):
    train_loader, _, info = make_train_loaders(tiny_cfg("train.batch_size=100000"), torch.device("cpu"))
    images, _ = next(iter(train_loader))
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 8, 8)
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-3
    mean, std = channel_stats(train_loader.images.cpu())
    assert info.mean == pytest.approx(mean) and info.std == pytest.approx(std)


def test_channel_statistics_are_the_same_bits_whatever_the_thread_count():
    images = torch.randint(0, 256, (5000, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(channel_stats(images))
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1] == results[2]  # exact: shards written by one process equal another's
    assert results[0][0] == pytest.approx(images.double().mean(dim=(0, 2, 3)).div(255).tolist())


def write_folder(root, classes=("cat", "dog"), per_class=3, size=(10, 6)):
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", size, (40 * i, 10 * j, 200)).save(folder / f"{j}.png")


def test_folder_data_set_is_resized_and_converted(tiny_cfg, tmp_path):
    write_folder(tmp_path / "pets")
    cfg = tiny_cfg("data.name=folder", f"data.root={tmp_path / 'pets'}", "data.image_size=16", "data.channels=1")
    images, labels = load_split(cfg.data, "train")
    assert images.shape == (6, 1, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("breakage,split,message", [
    (lambda root: (root / "train" / "cat" / "notes.txt").write_text("hello"), "train",
     "notes.txt is not a readable image"),
    (lambda root: [p.unlink() for p in (root / "test" / "dog").iterdir()], "test", "class folder .*dog is empty"),
    (lambda root: (root / "test" / "dog").rename(root / "test" / "wolf"), "train",
     "test has classes .*wolf.* but train has"),
])
def test_folder_problems_are_named(tiny_cfg, tmp_path, breakage, split, message):
    write_folder(tmp_path)
    breakage(tmp_path)
    cfg = tiny_cfg("data.name=folder", f"data.root={tmp_path}")
    with pytest.raises(UserError, match=message):
        load_split(cfg.data, split)


def test_missing_torchvision_files_offline_give_one_line(tiny_cfg, tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(mnist, "download_and_extract_archive", no_network)
    cfg = tiny_cfg("data.name=mnist", f"data.root={tmp_path}")
    with pytest.raises(UserError, match=r"mnist files not found in .*MNIST/raw and the download failed"):
        load_split(cfg.data, "train")


def test_tensor_loader_on_explicit_data():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    info = DataInfo(3, 4, ["a", "b"], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    loader = Loader(images, torch.arange(10), Batching(4), info, torch.device("cpu"))
    got = list(loader)
    assert [len(labels) for _, labels in got] == [4, 4, 2]
    expected = (images[:4].float() / 255 - 0.5) / 0.25
    assert torch.allclose(got[0][0], expected, atol=1e-5)


def test_second_load_reads_the_cache_and_a_changed_file_invalidates_it(tiny_cfg, tmp_path, monkeypatch, capsys):
    write_folder(tmp_path / "pets")
    cfg = tiny_cfg("data.name=folder", f"data.root={tmp_path / 'pets'}", "data.image_size=8")
    first = load_split(cfg.data, "train")
    assert "decoded" in capsys.readouterr().out and len(list((tmp_path / "cache").iterdir())) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(folders, "read_image", no_decoding)
    other_spelling = tiny_cfg("data.name=folder", f"data.root={tmp_path / 'pets' / '..' / 'pets'}",
                              "data.image_size=8")
    second = load_split(other_spelling.data, "train")
    assert "read from" in capsys.readouterr().out and len(list((tmp_path / "cache").iterdir())) == 1
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

    Image.new("RGB", (5, 5)).save(tmp_path / "pets" / "train" / "cat" / "0.png")  # new content, new key
    with pytest.raises(AssertionError, match="decoded again"):
        load_split(cfg.data, "train")


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_folder_gives_the_same_batches_as_in_memory(tiny_cfg, tmp_path, workers, capsys):
    write_folder(tmp_path / "pets", per_class=10)
    common = ["data.name=folder", f"data.root={tmp_path / 'pets'}", "data.image_size=8", "train.batch_size=4",
              "data.val_fraction=0.2", "data.augment=trivialaugment", f"data.num_workers={workers}"]
    memory = make_train_loaders(tiny_cfg(*common), torch.device("cpu"))
    streamed = make_train_loaders(tiny_cfg(*common, "data.max_memory_mb=0"), torch.device("cpu"))
    assert "streaming 20 files from disk" in capsys.readouterr().out
    assert memory[2] == streamed[2]  # same class names and normalisation statistics
    for a, b in zip(memory[:2], streamed[:2]):
        for epoch in (1, 2):
            a.set_epoch(epoch), b.set_epoch(epoch)
            pairs = list(zip(a, b))
            assert len(pairs) == len(a) == len(b)
            for (images_a, labels_a), (images_b, labels_b) in pairs:
                assert torch.equal(labels_a, labels_b) and torch.allclose(images_a, images_b)


def test_eval_batch_size_auto_is_the_training_batch_on_cpu_and_four_times_it_on_cuda(tiny_cfg):
    cfg = tiny_cfg("train.batch_size=32")
    assert cfg.train.eval_batch_size == "auto"
    assert eval_batch_size(cfg.train, torch.device("cpu")) == 32
    assert eval_batch_size(cfg.train, torch.device("cuda")) == 128
    assert eval_batch_size(tiny_cfg("train.eval_batch_size=7").train, torch.device("cuda")) == 7
    _, val_loader, _ = make_train_loaders(cfg, torch.device("cpu"))
    assert val_loader.batching.size == 32


def test_streamed_folder_statistics_are_cached_with_the_data(tiny_cfg, tmp_path, monkeypatch):
    write_folder(tmp_path / "pets", per_class=10)
    streamed = ["data.name=folder", f"data.root={tmp_path / 'pets'}", "data.image_size=8", "data.max_memory_mb=0",
                "data.num_workers=0"]
    first = make_train_loaders(tiny_cfg(*streamed), torch.device("cpu"))[2]

    def no_decoding(*args):
        raise AssertionError("statistics computed again despite the cache")
    monkeypatch.setattr(loaders, "channel_stats", no_decoding)
    second = make_train_loaders(tiny_cfg(*streamed), torch.device("cpu"))[2]
    assert (second.mean, second.std) == (first.mean, first.std)
    with pytest.raises(AssertionError, match="computed again"):  # another seed samples other images
        make_train_loaders(tiny_cfg(*streamed, "run.seed=1"), torch.device("cpu"))
