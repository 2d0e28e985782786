"""Torchvision backbones, pretrained weights (PATH and imagenet), fine-tuning, and class imbalance."""
import json
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, call_script
from engine import runs
from engine.builtin_sets import load_digits
from engine.checkpoint import load_checkpoint
from engine.config import config_from_dict, load_config
from engine.datasets import DataInfo
from engine.errors import UserError
from engine.finetune import Pretrained, load_pretrained, read_pretrained
from engine.finetune import class_layers, without_finetuning
from engine.loaders import Batching, Loader
from engine.metrics import class_weights, evaluate, evaluate_checkpoint, make_loss
from model import build_model
import test as test_script
import train as train_module
from train import train

BACKBONES = ["resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", BACKBONES)
def test_listed_backbones_train_one_step_on_32px_images(tiny_cfg, name, channels):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(f"model.name={name}").model, channels, 3, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stem, head = next(model.parameters()), [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    before = [stem.detach().clone(), head.weight.detach().clone()]
    logits = model(torch.randn(2, channels, 32, 32))  # (2, 3): the head is sized for the data's classes
    loss = F.cross_entropy(logits, torch.tensor([0, 2]))
    loss.backward()
    optimizer.step()
    assert logits.shape == (2, 3) and torch.isfinite(loss)
    assert head.out_features == 3
    assert not torch.equal(before[0], stem) and not torch.equal(before[1], head.weight)


def write_images(root, counts: dict[str, tuple[int, int]], size: int, seed: int = 0) -> None:
    """root/{train,test}/<class>/i.png: noisy images whose brightness pattern depends on the class."""
    generator = torch.Generator().manual_seed(seed)
    for label, (name, split_counts) in enumerate(counts.items()):
        for split, count in zip(("train", "test"), split_counts):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = torch.zeros(size, size)
                base[:, label * size // len(counts): (label + 1) * size // len(counts)] = 200
                pixels = (base + 50 * torch.rand(size, size, generator=generator)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).convert("RGB").save(root / split / name / f"{i}.png")


def test_backbone_checkpoint_round_trips_through_test_py(tmp_path):
    write_images(tmp_path / "photos", {"a": (10, 4), "b": (10, 4)}, 32)
    args = ["data.name=folder", "data.root=photos", "data.channels=1", "model.name=mobilenet_v3_small",
            "train.epochs=1", "train.batch_size=8", "run.name=m", "run.device=cpu"]
    code, out, err = call_script(train_module.main, *args, cwd=tmp_path)
    assert code == 0, err
    code, out, err = call_script(test_script.main, "checkpoints/m", "--split", "val", cwd=tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "checkpoints" / "m" / "val_report.json").read_text())
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "m" / "best.pt")
    row = ckpt["history"][0]
    assert (report["accuracy"], report["balanced_accuracy"], report["macro_f1"]) == (
        row["val_acc"], row["val_balanced_acc"], row["val_macro_f1"])
    assert "balanced accuracy (mean recall)" in out and "macro F1" in out


@pytest.fixture
def digit_folder(tmp_path):
    """Digits 0, 1, 2 of the embedded set as 8x8 grey PNGs: a 3-class data set for fine-tuning a 10-class run."""
    for split in ("train", "test"):
        images, labels = load_digits(split)
        for digit in range(3):
            folder = tmp_path / "digits3" / split / str(digit)
            folder.mkdir(parents=True)
            for i, image in enumerate(images[labels == digit][:30]):
                Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    return tmp_path / "digits3"


def finetune_cfg(tiny_cfg, digit_folder, pretrained, *extra):
    return tiny_cfg("data.name=folder", f"data.root={digit_folder}", "data.channels=1",
                    f"model.pretrained={pretrained}", "train.scheduler=step", "train.freeze_epochs=1", *extra)


def test_path_weights_freeze_then_unfreeze_and_resume_bitwise(tiny_run, tiny_cfg, digit_folder, capsys):
    source = tiny_run.run_dir / "best.pt"
    file_state = load_checkpoint(source)["model"]
    frozen = train(finetune_cfg(tiny_cfg, digit_folder, source, "train.epochs=1"))
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: model.pretrained")]
    assert len(note) == 1
    assert "new: classifier.4 (shapes differ: classifier.4.weight (3, 16) vs file (10, 16)" in note[0]
    after_1 = load_checkpoint(frozen / "last.pt")
    assert after_1["new_layers"] == ["classifier.4.weight", "classifier.4.bias"]
    assert after_1["data"]["image_size"] == 8 and after_1["data"]["mean"] == load_checkpoint(source)["data"]["mean"]
    backbone = [k for k in file_state if k not in after_1["new_layers"]]
    assert all(torch.equal(after_1["model"][k], file_state[k]) for k in backbone)  # incl. batch-norm statistics
    torch.manual_seed(0)  # train.py's seed: the head as it was initialised
    fresh = build_model(config_from_dict(after_1["config"]).model, 1, 3, 8).state_dict()
    assert not torch.equal(after_1["model"]["classifier.4.weight"], fresh["classifier.4.weight"])

    cfg = runs.resumed_config(after_1, ["train.epochs=2"])
    resumed = train(cfg, after_1, frozen)
    assert "epoch 2: training all layers" in capsys.readouterr().out
    after_2 = load_checkpoint(resumed / "last.pt")
    assert not torch.equal(after_2["model"]["features.0.weight"], file_state["features.0.weight"])
    assert not torch.equal(after_2["model"]["classifier.4.weight"], after_1["model"]["classifier.4.weight"])

    straight = load_checkpoint(train(finetune_cfg(tiny_cfg, digit_folder, source, "train.epochs=2")) / "last.pt")
    assert all(torch.equal(straight["model"][k], after_2["model"][k]) for k in straight["model"])
    assert straight["history"][1] | {"seconds": 0} == after_2["history"][1] | {"seconds": 0}


def test_backbone_lr_scales_the_pretrained_layers(tiny_run, tiny_cfg, digit_folder):
    cfg = finetune_cfg(tiny_cfg, digit_folder, tiny_run.run_dir / "best.pt", "train.freeze_epochs=0",
                       "train.backbone_lr=0.1", "train.epochs=1", "train.lr=0.01")
    ckpt = load_checkpoint(train(cfg) / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert [group["lr"] for group in groups] == pytest.approx([0.01, 0.001])  # the new head, then the pretrained layers
    assert len(groups[0]["params"]) == 2


def test_a_run_on_other_classes_gives_a_new_head_even_when_its_shape_fits(tiny_cfg):
    cfg = tiny_cfg()
    model, source = build_model(cfg.model, 1, 10, 8), build_model(cfg.model, 1, 10, 8).state_dict()
    head = class_layers(cfg.model, 1, 8)
    assert head == {"classifier.4.weight", "classifier.4.bias"}
    digits = [str(d) for d in range(10)]
    other = Pretrained(source, "run.pt", class_names=list("abcdefghij"))
    assert load_pretrained(model, other, head, digits) == ["classifier.4.weight", "classifier.4.bias"]
    assert torch.equal(model.state_dict()["features.0.weight"], source["features.0.weight"])
    assert not torch.equal(model.state_dict()["classifier.4.weight"], source["classifier.4.weight"])
    assert load_pretrained(model, Pretrained(source, "run.pt", class_names=digits), head, digits) == []


def test_a_file_that_fits_no_layer_is_refused(tiny_cfg, tmp_path):
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"model.pretrained: no tensor in .*other.pt fits a layer of the model"):
        train(tiny_cfg(f"model.pretrained={tmp_path / 'other.pt'}"))
    with pytest.raises(UserError, match="model.pretrained: file .*missing.pt not found"):
        train(tiny_cfg(f"model.pretrained={tmp_path / 'missing.pt'}"))
    assert not (tmp_path / "checkpoints").exists()  # refused before a run folder was made


def test_imagenet_offline_names_the_file_and_folder_then_loads_it_from_there(tiny_cfg, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = tiny_cfg("model.name=resnet18", "model.pretrained=imagenet")
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    with pytest.raises(UserError) as err:
        read_pretrained(cfg.model)
    assert f"resnet18-f37072fd.pth is not in {folder}" in str(err.value) and "\n" not in str(err.value)

    from torchvision.models import resnet18
    torch.save(resnet18(weights=None).state_dict(), folder / "resnet18-f37072fd.pth")
    pretrained = read_pretrained(cfg.model)
    assert pretrained.image_size == 224 and pretrained.mean == [0.485, 0.456, 0.406]
    model = build_model(cfg.model, 1, 5, 32)
    new = load_pretrained(model, pretrained, {"net.fc.weight", "net.fc.bias"}, ["a", "b", "c", "d", "e"])
    assert new == ["net.fc.weight", "net.fc.bias"]
    own = model.state_dict()
    assert all(torch.equal(own["net." + k], v) for k, v in pretrained.state.items() if not k.startswith("fc."))


def test_config_refuses_pretrained_settings_that_cannot_apply(tiny_cfg):
    with pytest.raises(UserError, match="model.pretrained: cnn has no ImageNet weights"):
        tiny_cfg("model.pretrained=imagenet")


def test_finetuning_keys_without_pretrained_weights_are_ignored_with_a_note(tiny_cfg, capsys):
    cfg = without_finetuning(tiny_cfg("train.freeze_epochs=2", "train.backbone_lr=0.1"))
    assert (cfg.train.freeze_epochs, cfg.train.backbone_lr) == (0, 1.0)
    assert "note: model.pretrained=none, so train.freeze_epochs=2, train.backbone_lr=0.1 are ignored" in \
        capsys.readouterr().out.splitlines()[-1]
    assert without_finetuning(tiny_cfg()) == tiny_cfg()


def imbalanced_loader(balanced: bool, seed: int = 0) -> Loader:
    labels = torch.tensor([0] * 90 + [1] * 8 + [2] * 2)
    info = DataInfo(1, 2, ["a", "b", "c"], [0.0], [1.0])
    return Loader(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), labels, Batching(16, seed, balanced=balanced),
                  info, torch.device("cpu"))


def epoch_labels(loader: Loader, epoch: int) -> torch.Tensor:
    loader.set_epoch(epoch)
    return torch.cat([labels for _, labels in loader])


def test_balanced_sampler_draws_classes_equally_seeded_and_resumable():
    loader = imbalanced_loader(balanced=True)
    first = epoch_labels(loader, 1)
    counts = torch.bincount(first, minlength=3).tolist()
    assert sorted(counts) == [33, 33, 34] and len(loader) == len(list(loader))
    assert torch.equal(epoch_labels(imbalanced_loader(balanced=True), 1), first)  # seeded: the same draws
    second = epoch_labels(loader, 2)
    assert not torch.equal(second, first)
    assert torch.equal(epoch_labels(imbalanced_loader(balanced=True), 2), second)  # a resumed epoch 2
    assert torch.bincount(epoch_labels(imbalanced_loader(balanced=False), 1)).tolist() == [90, 8, 2]


def test_balanced_sampler_shares_cover_the_draws_under_torchrun():
    shares = []
    for rank in range(2):
        loader = imbalanced_loader(balanced=True)
        loader.rank, loader.world = rank, 2
        loader.set_epoch(1)
        shares.append(torch.cat([labels for _, labels in loader]))
    assert len(shares[0]) == len(shares[1]) == 50
    assert sorted(torch.bincount(torch.cat(shares), minlength=3).tolist()) == [33, 33, 34]


def test_class_weights_reach_the_loss_and_best_metric_picks_best_pt(tiny_cfg, digit_folder):
    for path in list((digit_folder / "train" / "2").iterdir())[6:]:
        path.unlink()  # class 2 keeps 6 of 30 training images
    cfg = tiny_cfg("data.name=folder", f"data.root={digit_folder}", "data.channels=1", "data.image_size=8",
                   "train.class_weights=balanced", "train.best_metric=balanced_accuracy", "train.epochs=3")
    run_dir = train(cfg)
    best = load_checkpoint(run_dir / "best.pt")
    counts = best["data"]["class_counts"]
    assert counts == [27, 27, 5]  # the training split after the stratified 10 % validation share
    scores = [row["val_balanced_acc"] for row in best["history"]]
    assert best["epoch"] == scores.index(max(scores)) + 1 and best["best_score"] == max(scores)

    _, loader, results = evaluate_checkpoint(run_dir / "best.pt", torch.device("cpu"), "val")
    assert results["loss"] == best["history"][best["epoch"] - 1]["val_loss"]  # train.py logged the weighted loss
    weights = class_weights(cfg.train, counts, torch.device("cpu"))
    assert torch.allclose(weights, 59 / (3 * torch.tensor(counts, dtype=torch.float32)))
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weighted = (weights[labels] * F.cross_entropy(logits, labels, reduction="none")).sum() / weights[labels].sum()
    assert torch.allclose(make_loss("cross_entropy", weights)(logits, labels), weighted)
    assert not torch.allclose(make_loss("cross_entropy")(logits, labels), weighted)
    for loss in ("cross_entropy", "mse"):  # MixUp's class probabilities, when one-hot, weigh as labels do
        hard, soft = (make_loss(loss, weights)(logits, targets) for targets in (labels, F.one_hot(labels, 3).float()))
        assert torch.allclose(hard, soft)
    for batch_size in (1, 7):  # the split's weighted mean, however it is batched
        assert evaluate_checkpoint(run_dir / "best.pt", torch.device("cpu"), "val", batch_size)[2]["loss"] == \
            pytest.approx(results["loss"], rel=1e-6)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_evaluate_loss_is_the_weighted_mean_even_with_a_zero_weight(loss):
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weight = torch.tensor([0.0, 1.0, 2.0])  # class 0 does not count; a batch of class 0 alone weighs nothing
    expected = make_loss(loss, weight)(logits, labels)
    for size in (1, 4, 6):
        batches = [(logits[i:i + size], labels[i:i + size]) for i in range(0, 6, size)]
        got = evaluate(torch.nn.Identity(), batches, 3, torch.device("cpu"),
                       loss=make_loss(loss, weight, reduction="sum"), weight=weight)["loss"]
        assert got == pytest.approx(expected.item(), rel=1e-6)


def test_class_weights_must_match_the_classes(tiny_cfg):
    with pytest.raises(UserError, match="train.class_weights lists 2 weights but the data set has 10 classes"):
        train(tiny_cfg("train.class_weights=[1, 2]"))


def test_finetune_recipe_loads_and_builds_a_pretrainable_backbone():
    cfg = load_config(ROOT / "configs" / "finetune.yaml", ["data.root=my_photos"])
    assert (cfg.model.name, cfg.model.pretrained, cfg.data.image_size) == ("resnet18", "imagenet", "auto")
    assert (cfg.train.freeze_epochs, cfg.train.class_weights, cfg.train.best_metric) == (2, "balanced",
                                                                                           "balanced_accuracy")
    model = build_model(cfg.model, 3, 4, 224)
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 4)
