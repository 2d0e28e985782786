"""How far to trust a probability: expected calibration error, reliability bins and temperature scaling.

A model is calibrated when, of the images it gives 90 % top-1 confidence, 90 % are right. The top-1
confidences are cut into BINS equal-width bins; ECE is the bins' |accuracy - mean confidence| weighed
by their share of the images (Guo et al., 2017, "On Calibration of Modern Neural Networks").
Temperature scaling divides every logit by one scalar T > 0 before the softmax: T > 1 softens
overconfident probabilities, T < 1 sharpens underconfident ones, and since it keeps the order of the
logits no prediction (and so no accuracy) changes. T is fitted on the validation split by minimising
its negative log-likelihood; train.py stores it in best.pt, test.py --calibrate in any checkpoint.
"""
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import store_calibration
from engine.metrics import evaluate_checkpoint

BINS = 15  # equal-width bins of the top-1 confidence, as in Guo et al.
THRESHOLDS = (0.5, 0.9)  # confidences the report counts the images below (and --min-confidence's usual values)
T_RANGE = (0.05, 20.0)  # the fit stays inside; beyond it the softmax is a hard argmax or nearly uniform
FEW_ERRORS = 10  # misclassified validation images below which a fitted temperature gets a note


class TemperatureScale(nn.Module):
    """logits (N, K) -> logits / temperature: the exported graphs' calibration, before their softmax."""

    def __init__(self, temperature: float):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


def confidences(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Top-1 probabilities (N,) of logits (N, K) divided by the temperature."""
    return (logits.float() / temperature).softmax(1).amax(1)


def reliability(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> list[dict]:
    """Per equal-width bin of (lower, upper]: the image count, mean confidence and accuracy (None when empty)."""
    index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1  # (N,): 0 holds (0, 1/bins], ...
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                     "confidence": confidence[members].double().mean().item() if count else None,
                     "accuracy": correct[members].double().mean().item() if count else None})
    return rows


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> float:
    """sum over bins of (bin count / N) * |accuracy - mean confidence|, in 0..1."""
    total = len(confidence)
    return sum(row["count"] / total * abs(row["accuracy"] - row["confidence"])
               for row in reliability(confidence, correct, bins) if row["count"])


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / temperature)."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in T_RANGE that minimises the NLL of softmax(logits / T) on (logits (N, K), labels (N,)).

    LBFGS on log T (so T stays positive), in float64. A split without a single mistake has no finite
    optimum (the NLL keeps falling as T -> 0), and 1 is returned: it gives no evidence either way."""
    logits = logits.double()
    if bool((logits.argmax(1) == labels).all()):
        return 1.0
    low, high = (math.log(t) for t in T_RANGE)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.clamp(low, high).exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return math.exp(min(max(log_t.item(), low), high))


def calibration_entry(logits: torch.Tensor, labels: torch.Tensor, split: str) -> dict:
    """Fit T on one split's logits and labels; the checkpoint's 'calibration' entry (plain data)."""
    temperature = fit_temperature(logits, labels)
    correct = logits.argmax(1) == labels
    return {"temperature": temperature, "split": split, "images": len(labels), "errors": int((~correct).sum()),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature),
            "ece_before": expected_calibration_error(confidences(logits), correct),
            "ece_after": expected_calibration_error(confidences(logits, temperature), correct),
            "fitted": time.strftime("%Y-%m-%d %H:%M")}


def below(confidence: torch.Tensor, correct: torch.Tensor, threshold: float) -> dict:
    """The share of images whose top-1 confidence is below threshold, their accuracy and the others'."""
    low = confidence < threshold
    share = low.double().mean().item()
    return {"threshold": threshold, "share_below": share, "count_below": int(low.sum()),
            "accuracy_below": correct[low].double().mean().item() if low.any() else None,
            "accuracy_at_or_above": correct[~low].double().mean().item() if (~low).any() else None}


def describe_fit(entry: dict) -> str:
    """One line on a fitted temperature, for train.py and test.py --calibrate."""
    if entry["errors"] == 0:
        return (f"calibration: no misclassified image among the {entry['images']} of the {entry['split']} split, "
                "so it cannot tell how far to trust the probabilities; temperature 1 kept")
    line = (f"calibration: temperature {entry['temperature']:.3f} fitted on the {entry['split']} split "
            f"({entry['images']} images): NLL {entry['nll_before']:.4f} -> {entry['nll_after']:.4f}, "
            f"ECE {100 * entry['ece_before']:.2f}% -> {100 * entry['ece_after']:.2f}%")
    if entry["temperature"] in T_RANGE or entry["errors"] < FEW_ERRORS:  # the fit rests on too little to trust
        line += (f"\nnote: the temperature rests on {entry['errors']} misclassified validation image(s)"
                 f"{' and stopped at its bound' if entry['temperature'] in T_RANGE else ''}; a larger "
                 "data.val_fraction gives a fit to trust")
    return line


def calibrate(path: Path, device: torch.device, batch_size: int | None = None) -> dict:
    """Fit the temperature of the checkpoint at path on its validation split, store it there, and return
    the entry (an earlier temperature, valid or not, is replaced)."""
    _, _, results = evaluate_checkpoint(path, device, "val", batch_size, temperature=1.0)
    entry = calibration_entry(results["logits"], results["labels"], "val")
    store_calibration(path, entry)
    return entry


def split_calibration(results: dict, temperature: float, min_confidence: float | None = None) -> dict:
    """ECE and reliability bins of evaluate()'s results before and after the temperature, and how many
    images fall below each of THRESHOLDS (and min_confidence) with their accuracy, after the temperature:
    the probabilities users see."""
    logits, labels = results["logits"], results["labels"]
    correct = results["top_classes"][:, 0] == labels
    before, after = confidences(logits), results["top_probs"][:, 0]  # after: evaluate()'s, with the temperature
    return {"temperature": temperature, "bins": BINS,
            "ece_before": expected_calibration_error(before, correct),
            "ece_after": expected_calibration_error(after, correct),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature),
            "reliability_before": reliability(before, correct), "reliability_after": reliability(after, correct),
            "thresholds": [below(after, correct, t) for t in sorted({*THRESHOLDS, min_confidence or 0.5})]}


def describe_thresholds(rows: list[dict]) -> str:
    """'below 50%: 0.8% of the images (3), accuracy 33.3%; ...' for split_calibration's thresholds."""
    parts = []
    for row in rows:
        accuracy = "-" if row["accuracy_below"] is None else f"{100 * row['accuracy_below']:.1f}%"
        above = "-" if row["accuracy_at_or_above"] is None else f"{100 * row['accuracy_at_or_above']:.1f}%"
        parts.append(f"below {100 * row['threshold']:g}%: {100 * row['share_below']:.1f}% of the images "
                     f"({row['count_below']}), accuracy {accuracy} (the others {above})")
    return "; ".join(parts)
