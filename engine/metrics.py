"""Class weights, the one evaluation loop, and per-class metrics from a confusion matrix."""
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from engine.checkpoint import config_of, data_of, load_checkpoint, model_from_checkpoint, temperature_of
from engine.config import TrainConfig
from engine.devices import autocast, trained_dtype
from engine.distributed import all_reduce_sum
from engine.errors import UserError
from engine.loaders import Loader, eval_batch_size, make_eval_loader
from engine.losses import LossFn, loss_for, make_loss
from engine.multilabel import evaluate_multilabel
from engine.tta import with_tta

TOP_K = 5  # evaluate() keeps each image's k most probable classes


def class_weights(cfg: TrainConfig, class_counts: list[int], device: torch.device) -> torch.Tensor | None:
    """train.class_weights as a (K,) tensor: balanced = N / (K * count) per class (inverse frequency
    of the training split, 1 for every class when balanced), or the listed weights; None for none."""
    if cfg.class_weights == "none":
        return None
    if cfg.class_weights == "balanced":
        counts = torch.tensor(class_counts, dtype=torch.float32)
        if not len(counts) or (counts == 0).any():
            raise UserError("train.class_weights=balanced: a class has no training images (or the checkpoint "
                            "predates class counts); add images or list the weights")
        return (counts.sum() / (len(counts) * counts)).to(device)
    if len(cfg.class_weights) != len(class_counts):
        raise UserError(f"train.class_weights lists {len(cfg.class_weights)} weights but the data set has "
                        f"{len(class_counts)} classes; give one weight per class, in class order")
    return torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)


def evaluate(model: nn.Module, loader: Iterable, num_classes: int, device: torch.device,
             amp_dtype: torch.dtype | None = None, loss: LossFn | None = None,
             weight: torch.Tensor | None = None, temperature: float = 1.0) -> dict:
    """Mean loss, accuracy, balanced accuracy, macro F1, the confusion matrix (rows: true class, columns:
    predicted), and per image the labels, the logits (float32), the top-k predicted classes (k = TOP_K or
    fewer classes) and their probabilities softmax(logits / temperature) (engine/calibration.py; the
    temperature changes no prediction, so neither the loss nor any accuracy depends on it).

    loss: a loss with reduction="sum" and the class weights `weight` (engine/losses.py loss_for; None: cross-
    entropy), divided once by the split's weight: the weighted mean, the same however the split is batched. amp_dtype is training's autocast dtype, so validation,
    test.py and training see the same numerics. Nothing in the loop waits for the device: the confusion
    matrix is accumulated where it lives."""
    model.eval()
    loss_fn = loss or make_loss("cross_entropy", weight, reduction="sum")
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # sum of each image's loss times its weight
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    labels_seen, logits_seen, top_probs, top_classes = [], [], [], []
    with torch.inference_mode(), autocast(device, amp_dtype):
        for images, labels in loader:
            logits = model(images)  # (B, num_classes)
            loss_sum += loss_fn(logits.float(), labels).double()
            cells = labels * num_classes + logits.argmax(1)  # (B,) index into the flattened matrix
            confusion.index_add_(0, cells, torch.ones_like(cells))  # unlike bincount, no host sync on CUDA
            probs, classes = (logits.float() / temperature).softmax(1).topk(min(TOP_K, num_classes), dim=1)
            labels_seen.append(labels)
            logits_seen.append(logits.float())
            top_probs.append(probs)
            top_classes.append(classes)
    all_reduce_sum(loss_sum)  # under torchrun each process saw a disjoint share; per-image lists stay local
    all_reduce_sum(confusion)
    confusion = confusion.view(num_classes, num_classes).cpu()
    count = int(confusion.sum())
    per_class_count = confusion.sum(1).double()  # (K,) images of each true class
    weight_sum = per_class_count.sum() if weight is None else per_class_count @ weight.double().cpu()
    return {"loss": (loss_sum.cpu() / weight_sum).item(), "accuracy": confusion.diag().sum().item() / count,
            **class_averages(confusion), "confusion": confusion, "labels": torch.cat(labels_seen).cpu(),
            "logits": torch.cat(logits_seen).cpu(),
            "top_probs": torch.cat(top_probs).cpu(), "top_classes": torch.cat(top_classes).cpu()}


def per_class(confusion: torch.Tensor, class_names: list[str]) -> list[dict]:
    """Precision, recall (= per-class accuracy), F1 and support for each class."""
    correct = confusion.diag().double()
    predicted, support = confusion.sum(0).double(), confusion.sum(1).double()
    precision = correct / predicted.clamp_min(1)
    recall = correct / support.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return [{"class": name, "precision": p, "recall": r, "f1": f, "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision.tolist(), recall.tolist(), f1.tolist(),
                                        support.tolist())]


def class_averages(confusion: torch.Tensor) -> dict:
    """balanced_accuracy (mean recall) and macro_f1 (mean F1) over the classes present in the split."""
    rows = [row for row in per_class(confusion, [""] * len(confusion)) if row["support"]]
    return {"balanced_accuracy": sum(row["recall"] for row in rows) / len(rows),
            "macro_f1": sum(row["f1"] for row in rows) / len(rows)}


def top_k_accuracy(results: dict, k: int) -> float:
    """Share of images whose true class is among the k most probable."""
    hits = (results["top_classes"][:, :k] == results["labels"].view(-1, 1)).any(dim=1)
    return hits.double().mean().item()


def evaluate_checkpoint(path: Path, device: torch.device, split: str = "test", batch_size: int | None = None,
                        *, tta: str | None = None, temperature: float | None = None) -> tuple[dict, Loader, dict]:
    """Load a checkpoint, rebuild its model and data split, and evaluate it as validation did (averaged
    over the views of the run's train.tta, or of `tta`), the probabilities with the checkpoint's temperature
    (or the one given): (checkpoint, loader, results)."""
    ckpt = load_checkpoint(path)
    cfg = config_of(ckpt)
    info = data_of(ckpt)
    model = with_tta(model_from_checkpoint(ckpt, device), tta or cfg.train.tta, info.multilabel)
    loader = make_eval_loader(cfg, info, split, batch_size or eval_batch_size(cfg.train, device), device)
    if info.multilabel:  # at the thresholds chosen on validation, stored in the checkpoint
        return ckpt, loader, evaluate_multilabel(model, loader, device, trained_dtype(ckpt, device),
                                                 class_weights(cfg.train, info.class_counts, device), info.thresholds)
    weight = class_weights(cfg.train, info.class_counts, device)
    results = evaluate(model, loader, len(info.class_names), device, trained_dtype(ckpt, device),
                       loss_for(cfg.train, weight, False, "sum"), weight,
                       temperature_of(ckpt, path) if temperature is None else temperature)
    return ckpt, loader, results
