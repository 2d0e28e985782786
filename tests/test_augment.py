from pathlib import Path

import pytest
import torch

from conftest import ROOT
from engine import devices
from engine import loaders as data_module
from engine.augment import Augmentation, augment_images, cutmix_boxes, equalize, generator_for, mix, random_erasing
from engine.checkpoint import load_checkpoint
from engine.config import DEFAULT_CONFIG, load_config, to_yaml
from engine.datasets import DataInfo
from engine.loaders import Batching, Loader
from engine.metrics import evaluate_checkpoint
from model import build_model
import train as train_module

CPU = torch.device("cpu")
INFO = DataInfo(1, 8, [str(i) for i in range(10)], mean=[0.5], std=[0.25])
OPTIONS = [Augmentation("crop"), Augmentation("flip_crop"), Augmentation("trivialaugment"),
           Augmentation("randaugment"), Augmentation(random_erasing=1.0)]


def same_image_loader(aug: Augmentation, seed: int = 0, n: int = 16) -> Loader:
    """n copies of one 8x8 grey image with structure (so flips, shifts and ops all change it)."""
    image = (torch.arange(64).view(1, 1, 8, 8) * 4).to(torch.uint8)
    return Loader(image.repeat(n, 1, 1, 1), torch.arange(n) % 10, Batching(n, seed, aug), INFO, CPU)


def first_batch(loader: Loader, epoch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    loader.set_epoch(epoch)
    return next(iter(loader))


@pytest.mark.parametrize("aug", OPTIONS, ids=lambda a: a.policy if a.policy != "none" else "random_erasing")
def test_each_option_keeps_shape_and_dtype_and_draws_per_image(aug):
    images, labels = first_batch(same_image_loader(aug))
    assert images.shape == (16, 1, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    distinct = {tuple(image.flatten().tolist()) for image in images}
    assert len(distinct) >= 8  # identical inputs, different outputs: one draw per image, not per batch


def test_none_leaves_images_as_they_are():
    images, _ = first_batch(same_image_loader(Augmentation("none")))
    assert torch.equal(images, images[:1].expand_as(images))


@pytest.mark.parametrize("aug", OPTIONS + [Augmentation("trivialaugment", mixup_alpha=0.2, cutmix_alpha=1.0,
                                                        num_classes=10)])
def test_draws_repeat_for_the_same_seed_and_epoch_and_change_with_either(aug):
    first, again = first_batch(same_image_loader(aug)), first_batch(same_image_loader(aug))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first_batch(same_image_loader(aug), epoch=2)[0])
    assert not torch.equal(first[0], first_batch(same_image_loader(aug, seed=1))[0])


def test_each_process_draws_differently(monkeypatch):
    batches = []
    for rank in (0, 1):  # under torchrun with 2 processes; all images equal, so only the draws differ
        monkeypatch.setattr(data_module, "rank_and_world", lambda: (rank, 2))
        batches.append(first_batch(same_image_loader(Augmentation("trivialaugment"), n=32))[0])
    assert batches[0].shape == batches[1].shape == (16, 1, 8, 8)
    assert not torch.equal(batches[0], batches[1])


def test_generator_lives_on_the_batch_device():
    generator = generator_for(0, 1, 0, CPU)
    assert generator.device == CPU
    assert not torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=generator_for(0, 1, 1, CPU)))


def test_mixup_targets_sum_to_one_and_match_the_pixels():
    n = 64
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 6, 6)  # image i is all i
    labels = torch.arange(n) % 10
    mixed, targets = mix(images, labels, Augmentation(mixup_alpha=0.4, num_classes=10), generator_for(0, 1, 0, CPU))
    assert targets.shape == (n, 10) and torch.allclose(targets.sum(1), torch.ones(n))
    lam = mixed[1:, 0, 0, 0] - torch.arange(n - 1)  # pixel = lam * i + (1 - lam) * (i - 1) for i >= 1
    expected = (lam + torch.arange(n - 1)).view(-1, 1, 1, 1).expand(-1, 1, 6, 6)
    assert torch.allclose(mixed[1:], expected, atol=1e-4)
    own = targets[torch.arange(1, n), labels[1:]]
    partner = targets[torch.arange(1, n), labels[:-1]]
    assert torch.allclose(own[labels[1:] != labels[:-1]], lam[labels[1:] != labels[:-1]], atol=1e-4)
    assert torch.allclose((own + partner)[labels[1:] != labels[:-1]], torch.ones(1), atol=1e-5)
    assert lam.unique().numel() > n // 2  # a weight per image


def test_cutmix_targets_are_the_pasted_areas():
    n, size = 32, 16
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    labels = torch.arange(n) % 10
    mixed, targets = mix(images, labels, Augmentation(cutmix_alpha=1.0, num_classes=10), generator_for(0, 1, 0, CPU))
    assert torch.allclose(targets.sum(1), torch.ones(n))
    kept = (mixed == images).float().mean(dim=(1, 2, 3))  # share of own pixels; the rest is the previous image
    own = targets[torch.arange(n), labels]
    assert torch.allclose(own[labels != labels.roll(1)], kept[labels != labels.roll(1)], atol=1e-5)
    assert (kept < 1).sum() > n // 2


def test_cutmix_box_mask_has_the_returned_area():
    images = torch.zeros(100, 1, 10, 10)
    mask, lam = cutmix_boxes(torch.rand(100), images, generator_for(0, 1, 0, CPU))
    assert torch.allclose(1 - mask.float().mean(dim=(1, 2, 3)), lam)


def test_random_erasing_sets_a_rectangle_to_zero():
    images = torch.ones(50, 3, 12, 12)
    out = random_erasing(images, 1.0, generator_for(0, 1, 0, CPU))
    for image in out:
        rows, cols = (image[0] == 0).nonzero(as_tuple=True)
        assert len(rows) > 0 and len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert torch.equal(image[0] == 0, image[2] == 0)  # the same box in every channel
    assert random_erasing(images, 0.0, generator_for(0, 1, 0, CPU)).equal(images)


def test_trivialaugment_keeps_colour_images_in_range():
    images = torch.randint(0, 256, (64, 3, 16, 16)).float()
    out = augment_images(images, Augmentation("trivialaugment"), generator_for(0, 1, 0, CPU))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255


OWN_IMAGES = {ROOT / "configs" / "finetune.yaml", ROOT / "configs" / "photos.yaml"}  # no data set of their own


@pytest.mark.parametrize("path", sorted(set((ROOT / "configs").glob("*.yaml")) - OWN_IMAGES), ids=lambda p: p.stem)
def test_every_recipe_loads_validates_and_builds_its_model(path):
    cfg = load_config(path, [])
    assert cfg.data.name == path.stem.removesuffix("_long").removesuffix("_speedrun")
    channels, size = {"digits": (1, 8), "mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32)}[cfg.data.name]
    model = build_model(cfg.model, channels, 10, size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 10)
    assert "Measured" in path.read_text().split("\n\n")[0]  # the header states the result


def test_recipe_holds_only_overrides_and_a_saved_config_loads_the_same(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  epochs: 3\nmodel:\n  hidden: []\n")
    cfg = load_config(recipe, ["train.lr=0.01"])
    default = load_config(None, [])
    assert (cfg.train.epochs, cfg.model.hidden, cfg.train.lr) == (3, [], 0.01)
    assert cfg.train.batch_size == default.train.batch_size and cfg.data == default.data
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))  # a run's complete config.yaml
    assert load_config(saved, []) == cfg
    recipe.write_text("train:\n  epoks: 3\n")
    with pytest.raises(Exception, match="unknown config key 'train.epoks'; did you mean 'epochs'"):
        load_config(recipe, [])


def test_old_true_false_augment_still_loads(tiny_cfg):
    assert tiny_cfg("data.augment=true").data.augment == "flip_crop"
    assert tiny_cfg("data.augment=false").data.augment == "none"


def test_amp_auto_resolves_as_documented_on_cpu(monkeypatch, tiny_cfg, capsys):
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    assert devices.has_native_bf16(CPU) == native
    assert load_config(DEFAULT_CONFIG, []).run.amp == "auto"
    monkeypatch.setattr(devices, "has_native_bf16", lambda device: True)  # a CPU with native bf16: still float32
    assert devices.resolve_amp("auto", CPU)[0] == "none" and devices.autocast_dtype("auto", CPU) is None
    assert devices.resolve_amp("auto", torch.device("cuda"))[0] == "bf16"
    monkeypatch.setattr(devices, "has_native_bf16", lambda device: False)
    assert devices.resolve_amp("auto", CPU)[0] == "none" and devices.autocast_dtype("auto", CPU) is None
    assert devices.resolve_amp("fp16", CPU)[0] == "none"
    assert devices.resolve_amp("bf16", CPU)[0] == "bf16"
    run_dir = train_module.train(tiny_cfg("train.epochs=1"))
    assert "amp: auto -> none (float32: bf16 on the CPU only when run.amp=bf16 asks)" in capsys.readouterr().out
    assert load_checkpoint(Path(run_dir) / "last.pt")["amp"] == "none"


def test_equalize_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF
    images = torch.randint(0, 256, (12, 3, 16, 16)).float()
    images[:4] = (images[:4] / 4).floor() + 30  # narrow histograms
    images[4] = 7  # one value: left as it is
    assert torch.equal(equalize(images), TF.equalize(images.to(torch.uint8)).float())


def test_a_checkpoint_is_evaluated_in_the_precision_it_was_trained_in(monkeypatch, tiny_cfg):
    """A float32 run is not evaluated in bf16 where run.amp=auto would pick bf16 (a GPU, or an older policy), and a
    bf16 run is evaluated in bf16: the validation numbers evaluate_checkpoint gives are those training recorded."""
    for amp in ("auto", "bf16"):
        run_dir = Path(train_module.train(tiny_cfg("train.epochs=1", f"run.amp={amp}", f"run.name={amp}")))
        monkeypatch.setattr(devices, "resolve_amp", lambda amp, device: ("bf16" if amp in ("auto", "bf16") else amp, ""))
        ckpt, _, val = evaluate_checkpoint(run_dir / "best.pt", CPU, "val")
        assert ckpt["amp"] == ("none" if amp == "auto" else "bf16")
        assert val["loss"] == ckpt["history"][-1]["val_loss"] and val["accuracy"] == ckpt["history"][-1]["val_acc"]
        monkeypatch.undo()
