"""Multi-label classification (data.multilabel): several labels per image, each a yes/no of its own.

The model's K outputs are K independent logits; the loss is binary cross-entropy per label
(BCEWithLogitsLoss), the probabilities are sigmoids, and label k is predicted when its probability
reaches its threshold, chosen on the validation split to maximise that label's F1 and stored in the
checkpoint. The metrics (per-label average precision, mAP, micro and macro F1, subset accuracy) are
written out here in a few lines rather than taken from torchmetrics, an optional extra that training
must not need; tests/test_multilabel.py checks them against scikit-learn.
"""
from typing import Iterable

import torch
from torch import nn

from engine.devices import autocast
from engine.distributed import all_reduce_sum, gather
from engine.escape import printable
from engine.losses import bce


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """AP = sum_n (R_n - R_n-1) P_n over the distinct scores, highest first (scikit-learn's definition);
    nan when no image has the label."""
    order = scores.double().argsort(descending=True)
    scores, hits = scores.double()[order], targets[order].double()
    if hits.sum() == 0:
        return float("nan")
    last = torch.ones(len(scores), dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]  # tied scores count as one threshold
    tp, seen = hits.cumsum(0)[last], torch.arange(1, len(scores) + 1, dtype=torch.float64)[last]
    recall = tp / tp[-1]
    return float((torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64)) * tp / seen).sum())


def best_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, the probability threshold (predict when p >= it) with the highest F1 on these images;
    0.5 for a label no image has."""
    thresholds = []
    for k in range(probs.shape[1]):
        scores, order = probs[:, k].double().sort(descending=True)
        tp = targets[order, k].double().cumsum(0)
        f1 = 2 * tp / (torch.arange(1, len(scores) + 1) + tp[-1])  # 2TP / (predicted + actual)
        f1[:-1][scores[1:] == scores[:-1]] = -1  # a threshold takes every image tied with it
        thresholds.append(float(scores[f1.argmax()]) if tp[-1] > 0 else 0.5)
    return thresholds


def scores_at(probs: torch.Tensor, targets: torch.Tensor, thresholds: list[float]) -> dict:
    """Per-label precision, recall, F1, support and the averages, at the given thresholds."""
    predicted = probs >= torch.tensor(thresholds, dtype=probs.dtype)  # (N, K)
    actual = targets > 0.5
    tp, fp, fn = [(a & b).sum(0).double() for a, b in ((predicted, actual), (predicted, ~actual),
                                                        (~predicted, actual))]
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    present = actual.sum(0) > 0
    return {"precision": (tp / (tp + fp).clamp_min(1)).tolist(), "recall": (tp / (tp + fn).clamp_min(1)).tolist(),
            "f1": f1.tolist(), "support": actual.sum(0).tolist(),
            "macro_f1": f1[present].mean().item() if present.any() else 0.0,
            "micro_f1": (2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp_min(1)).item(),
            "subset_accuracy": (predicted == actual).all(1).double().mean().item()}


def evaluate_multilabel(model: nn.Module, loader: Iterable, device: torch.device,
                        amp_dtype: torch.dtype | None = None, weight: torch.Tensor | None = None,
                        thresholds: list[float] | None = None) -> dict:
    """Mean loss, per-label AP, mAP (the mean AP of the labels present), F1s and subset accuracy at the
    thresholds (None: chosen here, as on the validation split), and the probabilities and targets (N, K).
    Under torchrun every process gathers all shares, so each computes the one-process numbers."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    probs, targets = [], []
    with torch.inference_mode(), autocast(device, amp_dtype):
        for images, labels in loader:
            logits = model(images).float()  # (B, K)
            loss_sum += bce(logits, labels, weight, reduction="sum").double()
            probs.append(logits.sigmoid())  # kept where they are: no host sync inside the loop
            targets.append(labels.float())
    all_reduce_sum(loss_sum)
    shares = gather((torch.cat(probs).cpu(), torch.cat(targets).cpu()))
    probs, targets = torch.cat([p for p, _ in shares]), torch.cat([t for _, t in shares])
    ap = [average_precision(probs[:, k], targets[:, k]) for k in range(probs.shape[1])]
    present = [a for a in ap if a == a]
    thresholds = best_thresholds(probs, targets) if thresholds is None else thresholds
    scores = scores_at(probs, targets, thresholds)
    return {"loss": loss_sum.item() / len(probs), "ap": ap, "map": sum(present) / max(1, len(present)),
            "thresholds": thresholds, **scores, "accuracy": scores["subset_accuracy"],
            "balanced_accuracy": sum(scores["recall"]) / len(ap), "probs": probs, "targets": targets}


def per_label(results: dict, class_names: list[str]) -> list[dict]:
    """One row per label: AP, F1, precision, recall, threshold, support."""
    return [{"class": name, "ap": None if results["ap"][k] != results["ap"][k] else results["ap"][k],
             "f1": results["f1"][k], "precision": results["precision"][k], "recall": results["recall"][k],
             "threshold": results["thresholds"][k], "support": int(results["support"][k])}
            for k, name in enumerate(class_names)]


def print_report(report: dict) -> None:
    """test.py's table for a multi-label checkpoint."""
    print(f"checkpoint: {report['checkpoint']} (epoch {report['epoch']}), {report['split']} split, multi-label")
    print(f"images: {report['num_images']}   loss {report['loss']:.4f}   mAP {100 * report['map']:.2f}%   "
          f"micro F1 {100 * report['micro_f1']:.2f}%   macro F1 {100 * report['macro_f1']:.2f}%   "
          f"subset accuracy {100 * report['subset_accuracy']:.2f}%")
    print(f"{'label':<16}{'AP':>8}{'F1':>8}{'precision':>11}{'recall':>8}{'threshold':>11}{'support':>9}")
    for row in report["per_label"]:
        ap = "-" if row["ap"] is None else f"{100 * row['ap']:.2f}%"
        print(f"{printable(row['class'])[:15]:<16}{ap:>8}{100 * row['f1']:>7.2f}%{100 * row['precision']:>10.2f}%"
              f"{100 * row['recall']:>7.2f}%{row['threshold']:>11.3f}{row['support']:>9}")
