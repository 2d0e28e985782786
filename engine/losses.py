"""The losses train.loss names: LOSSES, one function each, serving training and evaluation alike.

A loss takes (logits (B, K), targets, weight=None, label_smoothing=0.0, reduction="mean", **its keys):
targets are labels (B,) or class probabilities (B, K) (MixUp/CutMix), weight the per-class weights (K,) of
train.class_weights, reduction "mean" (training: the weighted mean) or "sum" (evaluation adds the batches'
sums up and divides once). Keys of train: it reads (Part.reads) arrive as keyword arguments of those names.
A new loss is its function and its line in LOSSES (docs/extend.md); data.multilabel always uses bce.
"""
import functools
from typing import Callable

import torch
import torch.nn.functional as F

from engine.registry import Part, settings

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def half_mse(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """The notes' J = 1/(2m) sum_i ||f(x_i) - y_i||^2, with f = softmax(logits) and y one-hot
    (or the class probabilities (B, K) that MixUp/CutMix give), smoothed as cross_entropy smooths.

    PyTorch's MSELoss averages over all m*K entries instead, so J = K/2 * MSELoss(f, y).
    With class weights w it is the weighted mean sum_i w_yi J_i / sum_i w_yi, as cross_entropy's;
    reduction="sum" gives the numerator sum_i w_yi J_i.
    """
    probs = logits.float().softmax(dim=1)  # (B, K)
    y = targets.float() if targets.ndim == 2 else F.one_hot(targets, probs.shape[1]).float()  # (B, K)
    smoothed = y * (1 - label_smoothing) + label_smoothing / probs.shape[1]
    per_image = 0.5 * (probs - smoothed).pow(2).sum(dim=1)  # (B,)
    image_weight = torch.ones_like(per_image) if weight is None else y @ weight  # (B,): mixed for MixUp/CutMix
    weighted = image_weight * per_image
    return weighted.sum() if reduction == "sum" else weighted.sum() / image_weight.sum()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                  label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """F.cross_entropy, except that with class weights and class probabilities (B, K) as targets
    (MixUp/CutMix) the mean is over the images' weights targets @ weight, as it is for labels, instead
    of over the image count. reduction="sum" gives the numerator: each image's loss times its weight."""
    if reduction == "mean" and (weight is None or targets.ndim == 1):
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)
    per_image = F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing, reduction="none")
    return per_image.sum() if reduction == "sum" else per_image.sum() / (targets @ weight).sum()


def bce(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy summed over the K labels, averaged (or summed) over images. Targets (B, K) in 0..1
    (MixUp/CutMix mix them), smoothed towards 1/2: y (1 - e) + e / 2; class weights act as pos_weight."""
    smoothed = targets.float() * (1 - label_smoothing) + label_smoothing / 2
    per_image = F.binary_cross_entropy_with_logits(logits.float(), smoothed, pos_weight=weight,
                                                   reduction="none").sum(1)  # (B,)
    return per_image.sum() if reduction == "sum" else per_image.mean()


LOSSES = {
    "cross_entropy": Part(cross_entropy),
    "mse": Part(half_mse),
}


def make_loss(name: str, weight: torch.Tensor | None = None, label_smoothing: float = 0.0,
              reduction: str = "mean", **keys) -> LossFn:
    """The loss LOSSES[name] on (logits, targets), with per-class weights, label smoothing and its own keys."""
    return functools.partial(LOSSES[name].build, weight=weight, label_smoothing=label_smoothing, reduction=reduction,
                             **keys)


def loss_for(cfg, weight: torch.Tensor | None, multilabel: bool, reduction: str = "mean") -> LossFn:
    """train.loss as cfg (TrainConfig) sets it, bce for multi-label data. Training ("mean") smooths; evaluation
    ("sum": the loss validation and test.py report) does not, so a smoothed run's loss compares with any other."""
    smoothing = cfg.label_smoothing if reduction == "mean" else 0.0
    if multilabel:
        return functools.partial(bce, weight=weight, label_smoothing=smoothing, reduction=reduction)
    return make_loss(cfg.loss, weight, smoothing, reduction, **settings(LOSSES[cfg.loss], cfg))
