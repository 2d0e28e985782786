"""Test-time augmentation: the class probabilities averaged over views of each image (test.py --tta,
train.tta, tools/export.py --tta). The views are a recipe's choice: a flipped digit is another glyph.
A multi-label model's per-label sigmoids are averaged instead (a softmax across labels would make them compete).

    flip        the image and its mirror, 1/2 each (2 forward passes)
    flip_shift  each of those unshifted (1/2) and translated by one pixel up-left and down-right
                (1/4 each), as airbench's mirror-translate inference does (6 forward passes)
"""
import torch
import torch.nn.functional as F
from torch import nn

VIEWS = {"none": 1, "flip": 2, "flip_shift": 6}  # views -> forward passes per image (the inference cost)
SMALLEST = {"none": 1, "flip": 1, "flip_shift": 2}  # views -> the smallest image side they work on (a reflected shift)


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, H, W) translated by (dy, dx) pixels, the uncovered border reflected."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    return padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def views(images: torch.Tensor, name: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs whose weights sum to 1."""
    mirrors = [images, images.flip(-1)]
    if name == "flip":
        return [(0.5, view) for view in mirrors]
    return [(weight / 2, view) for image in mirrors
            for weight, view in ((0.5, image), (0.25, shifted(image, -1, -1)), (0.25, shifted(image, 1, 1)))]


class TTA(nn.Module):
    """The model averaged over views; returns the log of the averaged probabilities, so that softmax
    (evaluate, export) gives that average and argmax the averaged prediction: (B, num_classes).
    Multi-label: the logit of each label's averaged sigmoid, so that sigmoid gives that average."""

    def __init__(self, model: nn.Module, name: str, multilabel: bool = False):
        super().__init__()
        self.model, self.name, self.multilabel = model, name, multilabel

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            probs = sum(weight * self.model(view).float().sigmoid() for weight, view in views(images, self.name))
            probs = probs.clamp(1e-12, 1 - 1e-7)
            return probs.log() - (-probs).log1p()  # logit(p) = log p - log(1 - p)
        probs = sum(weight * self.model(view).float().softmax(1) for weight, view in views(images, self.name))
        return probs.clamp_min(1e-12).log()


def with_tta(model: nn.Module, name: str, multilabel: bool = False) -> nn.Module:
    """model itself for name 'none', else wrapped in TTA (averaging sigmoids for a multi-label model)."""
    return model if name == "none" else TTA(model, name, multilabel)
