"""The fast CIFAR-10 recipes' techniques: whitening and dirac init, the airbench model, Nesterov, the linear
schedule, alternating flip and validation every N epochs."""
import csv
import math

import pytest
import torch
from torch import nn

from engine import init
from engine.augment import Augmentation
from engine.checkpoint import load_checkpoint
from engine.config import load_config
from engine.datasets import DataInfo
from engine.errors import UserError
from engine.finetune import load_data
from engine.loaders import Batching, Loader
from engine.optim import LINEAR_END, LINEAR_START, LINEAR_WARMUP, linear_factor
from model import Airbench, ShapeError, ShiftNorm, build_model
import train as train_module

CPU = torch.device("cpu")
AIRBENCH = ["model.name=airbench", "model.widths=[8, 8]", "model.activation=gelu"]  # 8x8 digits: two halvings


def smooth_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are strongly correlated, as photos' are: (n, 3, 12, 12)."""
    g = torch.Generator().manual_seed(seed)
    base = nn.functional.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=12, mode="bilinear")
    return base.repeat(1, 3, 1, 1) + 0.1 * torch.randn(n, 3, 12, 12, generator=g)


def test_whitening_filters_decorrelate_the_training_patches():
    images, conv = smooth_images(), nn.Conv2d(3, 24, 2)
    init.whiten(conv, images)
    eigenvalues, _ = init.whitening_filters(images, (2, 2))
    outputs = nn.functional.conv2d(images, conv.weight)  # no bias: (n, 24, 11, 11)
    flat = outputs.permute(0, 2, 3, 1).reshape(-1, 24).double()
    covariance = flat.T @ flat / len(flat)
    expected = (eigenvalues / (eigenvalues + init.WHITEN_EPS)).double()  # 1, except directions of tiny variance
    assert torch.allclose(covariance[:12, :12], torch.diag(expected), atol=1e-3)
    assert (covariance.diag()[:4] > 0.98).all()  # the leading directions: variance 1
    assert torch.equal(conv.weight[12:], -conv.weight[:12])  # each direction with both signs (before the GELU)
    assert torch.equal(conv.bias, torch.zeros(24))
    raw = init.patches(images.double(), (2, 2))
    assert (raw.T @ raw / len(raw)).triu(1).abs().max() > 0.5  # the patches themselves were far from white


def test_whitening_fills_as_many_pairs_as_fit_and_keeps_the_rest():
    conv = nn.Conv2d(3, 7, 2)
    odd = conv.weight[6].clone()
    init.whiten(conv, smooth_images())
    assert torch.equal(conv.weight[3:6], -conv.weight[:3]) and torch.equal(conv.weight[6], odd)


def test_frozen_whitening_is_the_training_splits_and_stays(tiny_cfg):
    cfg = tiny_cfg("train.epochs=1", "model.whiten=frozen", *AIRBENCH)
    _, _, train_loader, _, _ = load_data(cfg, None, CPU)
    images = train_loader.normalise(train_loader.raw_images(torch.arange(len(train_loader.labels))))
    _, filters = init.whitening_filters(images, (2, 2))  # digits: 1 channel, 2x2 patches: 4 directions
    run_dir = train_module.train(cfg)
    weight = load_checkpoint(run_dir / "last.pt")["model"]["features.0.weight"]
    assert torch.allclose(weight, torch.cat([filters, -filters]), atol=1e-5)  # 8 filters = 4 pairs


def test_dirac_makes_size_preserving_convs_pass_their_input_through():
    cfg = load_config(None, [*AIRBENCH, "model.widths=[8, 16]"]).model
    model = build_model(cfg, 3, 10, 32)
    stride2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
    before = stride2.weight.clone()
    assert init.dirac(nn.Sequential(model, stride2)) == 3  # 3x3 convs that keep or widen channels, not stride 2
    assert torch.equal(stride2.weight, before)
    conv = model.features[2]  # 24 -> 8 channels: fewer outputs than inputs, so it keeps its random init
    assert not init.is_size_preserving(conv)
    widening = model.features[9]  # 8 -> 16 channels: the first 8 outputs are the input
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(widening(x)[:, :8], x, atol=1e-6)


def test_airbench_gives_logits_for_cifar_mnist_and_digits_sizes():
    cfg = load_config(None, ["model.name=airbench", "model.widths=[16, 32, 32]"]).model
    for channels, size, side in ((3, 32, 3), (1, 28, 3), (1, 8, 1)):  # 32 -> 31 -> 15 -> 7 -> 3; 8 -> 7 -> 3 -> 1 -> 1
        model = build_model(cfg, channels, 10, size)
        assert model.features(torch.randn(2, channels, size, size)).shape[-1] == side
        assert model(torch.randn(2, channels, size, size)).shape == (2, 10)
    with pytest.raises(ShapeError, match="airbench's first 2x2 conv"):
        Airbench(cfg, 1, 10, 1)


def test_shift_norm_normalises_without_a_scale_and_shifts_by_8x_its_parameter():
    norm = ShiftNorm(4)
    assert [name for name, _ in norm.named_parameters()] == ["shift"]
    with torch.no_grad():
        norm.shift.fill_(0.25)
    out = norm(torch.randn(16, 4, 5, 5) * 3 + 1)
    assert torch.allclose(out.mean((0, 2, 3)), torch.full((4,), 2.0), atol=1e-5)
    assert torch.allclose(out.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4)


def test_nesterov_reaches_the_optimizer_and_needs_sgd_with_momentum(tiny_cfg):
    cfg = tiny_cfg("train.optimizer=sgd", "train.nesterov=true")
    model = build_model(cfg.model, 1, 10, 8)
    step = train_module.make_step(model, None, cfg.train, DataInfo(1, 8, [str(i) for i in range(10)]), None, 10)
    assert step.optimizer.param_groups[0]["nesterov"] is True
    for bad, needs in ((["train.optimizer=adam"], "train.optimizer=sgd, and train.optimizer is adam"),
                       (["train.optimizer=sgd", "train.momentum=0"],
                        "train.momentum above 0, and train.momentum is 0")):
        with pytest.raises(UserError, match=rf"^train.nesterov=true needs {needs}.*; set .*train.nesterov=false$"):
            tiny_cfg("train.nesterov=true", *bad)


def test_linear_schedule_ramps_up_then_down_as_airbench_does():
    total = 100
    factors = [linear_factor(step, total) for step in range(total + 1)]
    peak = int(total * LINEAR_WARMUP)
    assert factors[0] == LINEAR_START and factors[peak] == 1 and math.isclose(factors[-1], LINEAR_END)
    assert all(a < b for a, b in zip(factors[:peak], factors[1:peak + 1]))
    assert all(a > b for a, b in zip(factors[peak:], factors[peak + 1:]))


def mirrored(loader: Loader, originals: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images (by position in the split) the loader mirrors in this epoch: (N,) bool."""
    loader.set_epoch(epoch)
    flipped = torch.zeros(len(originals), dtype=torch.bool)
    for images, labels in loader:  # labels are the images' positions
        expected_flip = loader.normalise(originals[labels].flip(3))
        flipped[labels] = (images - expected_flip).abs().flatten(1).amax(1) < 1e-5
    return flipped


@pytest.mark.parametrize("seed", [0, 1])
def test_alternating_flip_mirrors_each_image_on_every_other_epoch(seed):
    n = 200
    originals = torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8)
    aug = Augmentation("flip_crop", crop_padding=0, flip="alternate")
    loader = Loader(originals, torch.arange(n), Batching(32, seed, aug), DataInfo(1, 6, ["x"] * n, [0.5], [0.25]), CPU)
    epochs = [mirrored(loader, originals, epoch) for epoch in (1, 2, 3, 4)]
    assert 70 < int(epochs[0].sum()) < 130  # a random half first
    assert torch.equal(epochs[1], ~epochs[0]) and torch.equal(epochs[2], epochs[0])
    assert torch.equal(epochs[3], ~epochs[0])
    random = Loader(originals, torch.arange(n), Batching(32, seed, Augmentation("flip_crop", crop_padding=0)),
                    DataInfo(1, 6, ["x"] * n, [0.5], [0.25]), CPU)
    both = mirrored(random, originals, 1) & mirrored(random, originals, 2)
    assert both.any()  # random flips: some images are mirrored twice running, which alternate avoids


def test_val_every_validates_only_those_epochs_and_the_last(tiny_cfg, capsys):
    run_dir = train_module.train(tiny_cfg("train.epochs=5", "train.val_every=2"))
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [math.isnan(float(row["val_acc"])) for row in rows] == [True, False, True, False, False]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert ["val -" in line for line in lines] == [True, False, True, False, False]
    assert load_checkpoint(run_dir / "best.pt")["epoch"] in (2, 4, 5)
    only_last = train_module.train(tiny_cfg("train.epochs=3", "train.val_every=0"))
    assert load_checkpoint(only_last / "best.pt")["epoch"] == 3


def test_whiten_and_dirac_leave_pretrained_weights_alone(tiny_cfg, tiny_run, capsys):
    pretrained = tiny_run.run_dir / "best.pt"
    cfg = tiny_cfg("train.epochs=1", f"model.pretrained={pretrained}", "model.dirac=true", "model.whiten=frozen",
                   "train.lr=1e-9")
    run_dir = train_module.train(cfg)
    assert "note: model.whiten and model.dirac have no effect with model.pretrained" in capsys.readouterr().out
    start, trained = load_checkpoint(pretrained)["model"], load_checkpoint(run_dir / "last.pt")["model"]
    assert torch.allclose(trained["features.0.weight"], start["features.0.weight"], atol=1e-6)  # not whitened
