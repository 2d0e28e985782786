"""The models: a configurable CNN, LeNet-5, a small ResNet, airbench's conv groups and torchvision's
classifiers, picked by `model.name` in config.yaml.

To try another architecture, write an nn.Module whose constructor takes
(cfg: ModelConfig, in_channels, num_classes, image_size) and whose forward returns logits,
then add one line to MODELS. train.py and test.py need no change; `python tools/summary.py` prints
the layer table. Any other name that torchvision.models lists (resnet18, efficientnet_b0, ...)
is built by the one adapter TorchvisionModel. This file imports torch and torchvision, nothing
else of the project.
"""
import functools
from dataclasses import dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AT_LEAST_1 = {"min": 1}  # range checks that config.py applies when loading


@dataclass
class ConvBlock:
    """One conv block: conv -> [batch norm] -> activation -> [pool]."""
    out_channels: int = field(metadata=AT_LEAST_1)
    kernel_size: int = field(metadata=AT_LEAST_1)
    stride: int = field(metadata=AT_LEAST_1)
    padding: int = field(metadata={"min": 0})
    pool: Literal["none", "max", "avg"]
    pool_kernel: int = field(metadata=AT_LEAST_1)
    pool_stride: int = field(metadata=AT_LEAST_1)


@dataclass
class ModelConfig:
    """The `model:` section of config.yaml; add fields here for a new architecture.

    name, pretrained, sync_batchnorm, whiten and dirac apply to every model; the others only to the models that list
    them in their SETTINGS (a model without SETTINGS reads them all).
    """
    name: str
    pretrained: str  # none | imagenet | PATH of a state dict or checkpoint (read by engine/finetune.py)
    activation: Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu"]
    leaky_slope: float = field(metadata={"min": 0.0, "max": 1.0})
    batch_norm: bool
    conv_blocks: list[ConvBlock]
    hidden: list[int] = field(metadata=AT_LEAST_1)  # checked per item
    dropout: float = field(metadata={"min": 0.0, "max": 1.0})
    widths: list[int] = field(metadata={"min": 1, "min_items": 1})  # resnet only: channels of each stage
    sync_batchnorm: bool  # under torchrun: batch-norm statistics over all processes (engine/devices.py converts)
    whiten: Literal["none", "init", "frozen"]  # the first conv from the training patches (engine/init.py)
    dirac: bool  # size-preserving convs start as the identity (engine/init.py)


class CNN(nn.Module):
    """conv blocks -> flatten -> fully connected hidden layers -> logits."""
    SETTINGS = ("activation", "leaky_slope", "batch_norm", "conv_blocks", "hidden", "dropout")

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for i, block in enumerate(cfg.conv_blocks):
            where = f"model.conv_blocks[{i}]"
            size = out_size(size, block.kernel_size, block.stride, block.padding, f"{where} conv")
            # Batch norm supplies its own shift, so the conv bias would be redundant.
            layers.append(nn.Conv2d(channels, block.out_channels, block.kernel_size, block.stride,
                                    block.padding, bias=not cfg.batch_norm))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(block.out_channels))
            layers.append(make_activation(cfg))
            if block.pool != "none":
                size = out_size(size, block.pool_kernel, block.pool_stride, 0, f"{where} {block.pool} pool")
                pool = nn.MaxPool2d if block.pool == "max" else nn.AvgPool2d
                layers.append(pool(block.pool_kernel, block.pool_stride))
            channels = block.out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = make_classifier(cfg, channels * size * size, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, C, H', W'), sizes from out_size()
        return self.classifier(features)  # (B, num_classes)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998): conv 6@5x5 -> avg pool -> conv 16@5x5 -> avg pool -> fc 120 -> fc 84.

    It was designed for 32x32 inputs, so other sizes are resized to 32x32 first.
    """
    SETTINGS = ("activation", "leaky_slope")

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), make_activation(cfg), nn.AvgPool2d(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, 5), make_activation(cfg), nn.AvgPool2d(2),  # (B, 16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), make_activation(cfg),
            nn.Linear(120, 84), make_activation(cfg), nn.Linear(84, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        return self.classifier(self.features(images))  # (B, num_classes)


class ResNet(nn.Module):
    """A small residual net after the fast CIFAR-10 ResNets (Page's ResNet-9, 2018).

    stem conv_bn -> per width in model.widths: conv_bn, 2x2 max pool, Residual -> global max pool -> linear.
    Reads model.widths and model.activation; batch norm is always on.
    """
    SETTINGS = ("activation", "leaky_slope", "widths")

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, cfg.widths[0], cfg)]
        channels, size = cfg.widths[0], image_size
        for i, width in enumerate(cfg.widths):
            size = out_size(size, 2, 2, 0, f"model.widths[{i}] max pool")
            layers += [conv_bn(channels, width, cfg), nn.MaxPool2d(2), Residual(width, cfg)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, widths[-1], H / 2^len(widths), W / 2^len(widths))
        return self.classifier(features)  # (B, num_classes)


class Airbench(nn.Module):
    """The conv groups of airbench94 (Jordan, 2024), the fastest published CIFAR-10 training:

    2x2 conv (2 x 4 x in_channels filters; model.whiten=frozen makes it a patch-whitening filter) -> activation
    -> per width in model.widths: conv -> 2x2 max pool (while the map is larger than 1x1) -> norm -> act -> conv
    -> norm -> act
    -> global max pool -> linear / 9. Reads model.widths and model.activation (airbench: [64, 256, 256], gelu).
    """
    SETTINGS = ("activation", "leaky_slope", "widths")

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        channels, size = 2 * 4 * in_channels, out_size(image_size, 2, 1, 0, "airbench's first 2x2 conv")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 2), make_activation(cfg)]
        for width in cfg.widths:
            pool = nn.MaxPool2d(2) if size >= 2 else nn.Identity()  # a 1x1 map (small images) is not pooled
            size = max(1, size // 2)
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), pool, ShiftNorm(width),
                       make_activation(cfg), nn.Conv2d(width, width, 3, padding=1, bias=False), ShiftNorm(width),
                       make_activation(cfg)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                                        nn.Linear(channels, num_classes, bias=False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)  # (B, widths[-1], H', W'): H - 1 halved (floored) per width
        return self.classifier(features) / 9  # airbench's output scale: softer early predictions


# model.name -> class. A new architecture is one more line here; names not in MODELS that
# torchvision.models lists go to TorchvisionModel (see model_class).
MODELS: dict[str, type[nn.Module]] = {
    "cnn": CNN,
    "lenet5": LeNet5,
    "resnet": ResNet,
    "airbench": Airbench,
}


def build_model(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The one place a model is built from a config: MODELS[cfg.name], or torchvision's model of that name."""
    return model_class(cfg.name)(cfg, in_channels, num_classes, image_size)


# The layers the models above are made of.
class ShapeError(ValueError):
    """A configuration whose feature maps would shrink below 1x1."""


def out_size(size: int, kernel: int, stride: int, padding: int, where: str) -> int:
    """The notes' formula OH = (H + 2P - FH)/S + 1 (floored, as PyTorch does)."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ShapeError(
            f"{where}: output size (H + 2P - FH)/S + 1 = ({size} + 2*{padding} - {kernel})/{stride} + 1 "
            f"= {out} < 1; use a smaller kernel or stride, more padding, or fewer pooling layers")
    return out


def make_activation(cfg: ModelConfig) -> nn.Module:
    """The activations from the notes, and GELU (x * Phi(x), a smooth ReLU)."""
    if cfg.activation == "leaky_relu":
        return nn.LeakyReLU(cfg.leaky_slope)
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}[cfg.activation]()


def make_classifier(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Sequential:
    """Fully connected hidden layers with dropout, then the output layer (logits)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in cfg.hidden:
        layers += [nn.Linear(in_features, width), make_activation(cfg), nn.Dropout(cfg.dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def conv_bn(in_channels: int, out_channels: int, cfg: ModelConfig) -> nn.Sequential:
    """3x3 conv (size-preserving) -> batch norm -> activation."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), make_activation(cfg))


class Residual(nn.Module):
    """x + f(x) with f two conv_bn layers: gradients reach early layers through the identity path."""

    def __init__(self, channels: int, cfg: ModelConfig):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels, cfg), conv_bn(channels, channels, cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ShiftNorm(nn.BatchNorm2d):
    """Batch norm without a learned scale, whose shift learns 64x faster than the weights at the same weight
    decay (airbench's batch norm: its optimizer gives the shifts 64 x lr; here the parameter is used x 8,
    which moves the shift 8 x 8 = 64 times as far per step). Running statistics keep 60 % of their value per batch."""
    SCALE = 8.0

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4, affine=False)
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        is_batch = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.SCALE * self.shift, is_batch,
                            self.momentum, self.eps)


# torchvision's classifiers by name (resnet18, efficientnet_b0, ...), through one adapter.
# ViT and MaxViT take exactly 224; any other architecture takes images down to the smallest size it accepts
# (smallest_input), and smaller images are resized up to that inside the model.
EXACT_INPUT = {"vit_": 224, "maxvit_": 224}
LARGEST_TRIED = 1024  # sides smallest_input tries at most


# Constructor arguments some torchvision models need to return plain logits in training mode.
EXTRA_ARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
              "inception_v3": {"aux_logits": False, "init_weights": False}}


def input_size(name: str, image_size: int) -> int:
    """The side the torchvision model `name` is fed: image_size, or the size it needs."""
    for prefix, size in EXACT_INPUT.items():
        if name.startswith(prefix):
            return size
    return max(image_size, smallest_input(name))


def accepts(model: nn.Module, size: int, device: str) -> bool:
    """Whether model runs on one zero image of size x size (on the meta device: shapes only, no arithmetic)."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    except (RuntimeError, ValueError, AssertionError, IndexError):  # "Output size is too small" and the like
        return False
    return True


@functools.cache
def smallest_input(name: str) -> int:
    """The smallest side the torchvision architecture `name` accepts, found by trying it: doubling, then bisecting."""
    from torchvision import models

    try:
        with torch.device("meta"):  # no memory, no initialisation
            model, device = models.get_model(name, weights=None, **EXTRA_ARGS.get(name, {})).eval(), "meta"
    except (NotImplementedError, RuntimeError):  # a few models (RegNet) read values while initialising
        model, device = models.get_model(name, weights=None, **EXTRA_ARGS.get(name, {})).eval(), "cpu"
    low, high = 0, 1  # low fails (or is 0), high is being tried
    while not accepts(model, high, device):
        if high >= LARGEST_TRIED:
            return 1  # nothing tried works: leave the size as it is and let the model say why
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if accepts(model, middle, device) else (middle, high)
    return high


class TorchvisionModel(nn.Module):
    """A classification model of torchvision.models by its name, with its head sized for num_classes.

    The architecture is torchvision's unchanged, so ImageNet weights fit every layer but the head:
    grey images are repeated to 3 channels, and images smaller than it accepts are resized up.
    """
    SETTINGS = ()  # reads only model.name (and model.pretrained, in engine/finetune.py)

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        from torchvision import models  # imported here: it costs ~160 MB and 1-2 s, which cnn runs skip

        self.net = models.get_model(cfg.name, weights=None, num_classes=num_classes, **EXTRA_ARGS.get(cfg.name, {}))
        self.input_size = input_size(cfg.name, image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.expand(-1, 3, -1, -1)  # (B, 1, H, W) grey -> (B, 3, H, W); colour unchanged
        if images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        return self.net(images)  # (B, num_classes)


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification models (resnet18, efficientnet_b0, vit_b_16, ...)."""
    from torchvision import models

    return tuple(models.list_models(module=models))


def model_class(name: str) -> type[nn.Module] | None:
    """The class that builds model.name: MODELS[name], TorchvisionModel for a torchvision name, else None."""
    if name in MODELS:
        return MODELS[name]
    return TorchvisionModel if name in torchvision_names() else None


SHARED_SETTINGS = ("name", "pretrained", "sync_batchnorm", "whiten", "dirac")  # read for every model


def settings_of(name: str) -> tuple[str, ...]:
    """The model.* keys the model `name` reads: the shared ones and its SETTINGS (all keys if it has none)."""
    every = tuple(f.name for f in fields(ModelConfig))
    own = getattr(model_class(name), "SETTINGS", every)
    return tuple(key for key in every if key in SHARED_SETTINGS or key in own)
