import pytest
import torch
from torch import nn

import model as model_module
from model import MODELS, ShapeError, build_model
from tools.summary import summary
from train import train


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_over_input_sizes(tiny_cfg, name, channels, size):
    cfg = tiny_cfg(f"model.name={name}")
    model = build_model(cfg.model, channels, 10, size)
    assert model(torch.randn(5, channels, size, size)).shape == (5, 10)


@pytest.mark.parametrize("overrides", [
    ["model.activation=tanh", "model.batch_norm=false"],
    ["model.activation=leaky_relu", "model.conv_blocks.0.pool=avg"],
    ["model.activation=sigmoid", "model.conv_blocks.0.stride=2", "model.conv_blocks.1.pool=none"],
    ["model.hidden=[]", "model.conv_blocks=[{out_channels: 4, kernel_size: 5, stride: 1, padding: 2, "
     "pool: max, pool_kernel: 3, pool_stride: 3}]"],
])
def test_configurable_cnn_shapes(tiny_cfg, overrides):
    model = build_model(tiny_cfg(*overrides).model, 3, 7, 32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_flattened_size_follows_the_formula(tiny_cfg):
    # 28 -> conv k5 s1 p0: 24 -> max pool 2/2: 12; 16 channels * 12 * 12 = 2304 features.
    cfg = tiny_cfg("model.conv_blocks=[{out_channels: 16, kernel_size: 5, stride: 1, padding: 0, "
                   "pool: max, pool_kernel: 2, pool_stride: 2}]", "model.hidden=[]")
    model = build_model(cfg.model, 1, 10, 28)
    assert model.classifier[-1].in_features == 16 * 12 * 12


def test_feature_map_below_one_pixel_fails_with_the_formula(tiny_cfg):
    cfg = tiny_cfg("model.conv_blocks.0.kernel_size=11", "model.conv_blocks.0.padding=0")
    with pytest.raises(ShapeError) as err:
        build_model(cfg.model, 1, 10, 8)
    assert "model.conv_blocks[0] conv" in str(err.value)
    assert "(8 + 2*0 - 11)/1 + 1 = -2 < 1" in str(err.value)


def test_summary_lists_layers_and_totals(tiny_cfg):
    model = build_model(tiny_cfg().model, 1, 10, 28)
    text = summary(model, 1, 28)
    assert "8x28x28" in text and "8x14x14" in text  # first conv output, then after the first pool
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in text
    assert "Fully connected layers" in text


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_trains_one_step(tiny_cfg, name):
    cfg = tiny_cfg(f"model.name={name}")
    model = build_model(cfg.model, 1, 10, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


class TinyMLP(nn.Module):
    """What a user adds to model.py: a module with the registry's constructor signature."""

    def __init__(self, cfg, in_channels, num_classes, image_size):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

    def forward(self, images):
        return self.net(images)


def test_a_new_registered_model_trains_without_touching_train_py(tiny_cfg, monkeypatch):
    monkeypatch.setitem(model_module.MODELS, "tiny_mlp", TinyMLP)
    run_dir = train(tiny_cfg("model.name=tiny_mlp", "train.epochs=1"))
    assert (run_dir / "best.pt").is_file()
    assert "tiny_mlp" in (run_dir / "config.yaml").read_text()
