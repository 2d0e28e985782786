"""PNG figures: training curves and confusion matrices."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.columns import is_validated
from engine.storage import replacing

if TYPE_CHECKING:
    import matplotlib.pyplot as plt


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported when the first figure is drawn: it takes ~0.7 s,
    which a process that draws nothing (--help, a refused config, torchrun's other ranks) need not pay."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    matplotlib.rcParams["text.parse_math"] = False  # a $ in a class name is a $, not TeX (which could fail to parse)
    import matplotlib.pyplot

    return matplotlib.pyplot


def save(fig: plt.Figure, path: Path | io.BytesIO, tight: bool = True) -> None:
    """Write the figure as a PNG through a temporary file (a crash never leaves half a PNG), then free it.
    tight=False keeps the figure's own margins: tight_layout draws the figure once more to measure it."""
    plt = pyplot()
    try:
        if tight:
            fig.tight_layout()
        if isinstance(path, io.BytesIO):  # the demo's in-memory picture
            fig.savefig(path, format="png", dpi=100)
        else:
            with replacing(path) as f:
                fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


def validated(history: list[dict]) -> list[dict]:
    """The rows of epochs that were validated (the others hold NaN: train.val_every)."""
    return [row for row in history if is_validated(row)]


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train vs val (the validated epochs: train.val_every)."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        rows = validated(history) if split == "val" else history
        ax_loss.plot([row["epoch"] for row in rows], [row[f"{split}_loss"] for row in rows], marker="o", label=split)
        ax_acc.plot([row["epoch"] for row in rows], [100 * row[f"{split}_acc"] for row in rows], marker="o",
                    label=split)
    ax_loss.set(xlabel="epoch", title="loss")  # titles name the y axes: fixed margins fit any tick labels
    ax_acc.set(xlabel="epoch", title="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.18)  # drawn every epoch: no tight_layout
    save(fig, path, tight=False)


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path, title: str,
                   normalise: bool = False) -> None:
    """Counts (or each true class's row as shares) with class names on both axes."""
    plt = pyplot()
    n = len(class_names)
    values = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1) if normalise else confusion
    size = max(5.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=1 if normalise else None)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if n <= 20:
        threshold = values.max().item() / 2
        for i in range(n):
            for j in range(n):
                value = values[i, j].item()
                ax.text(j, i, f"{value:.2f}" if normalise else str(int(value)), ha="center", va="center",
                        fontsize=8, color="white" if value > threshold else "black")
    save(fig, path)


def plot_reliability(panels: list[tuple[str, list[dict], float]], path: Path, title: str) -> None:
    """Reliability diagrams side by side, one per (label, bins, ECE): each bin's accuracy as a bar over its
    confidence range, the bin's mean confidence as a red line across it (on the diagonal when calibrated;
    below the bar's top: underconfident, above: overconfident), and the bin's image count above it
    (engine/calibration.py reliability)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    for ax, (label, bins, ece) in zip(axes[0], panels):
        width = bins[0]["upper"] - bins[0]["lower"]
        full = [row for row in bins if row["count"]]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        ax.bar([row["lower"] for row in full], [row["accuracy"] for row in full], width=width, align="edge",
               color="tab:blue", alpha=0.75, edgecolor="white", label="accuracy in the bin")
        ax.hlines([row["confidence"] for row in full], [row["lower"] for row in full],
                  [row["upper"] for row in full], color="tab:red", linewidth=2.5, label="mean confidence in the bin")
        for row in full:
            ax.text(row["lower"] + width / 2, max(row["accuracy"], row["confidence"]) + 0.015, f"{row['count']:,}",
                    ha="center", va="bottom", fontsize=7, rotation=90 if row["count"] >= 1000 else 0)
        ax.set(xlim=(0, 1), ylim=(0, 1.22), yticks=np.linspace(0, 1, 6), ylabel="accuracy",
               xlabel="top-1 confidence (the number over a bin: its images)", title=f"{label}: ECE {100 * ece:.2f}%")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", ncol=3, fontsize=6.5, handlelength=1.5, columnspacing=1)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def show(ax: plt.Axes, image: torch.Tensor, **placement) -> None:
    """One (C, H, W) image, grey or colour, without axes; placement (e.g. extent) is passed to imshow."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", **placement)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), **placement)
    ax.axis("off")


def plot_tiles(images: list[torch.Tensor], titles: list[str], path: Path, title: str, columns: int,
               cell: float, fontsize: float) -> None:
    """(C, H, W) images in rows of `columns`, each cell inches wide with its title above it.

    All tiles share one axes (each image placed by its extent): a figure of N axes takes N times as
    long to lay out and draw, and test.py draws one after every evaluation."""
    plt = pyplot()
    rows = max(1, -(-len(images) // columns))
    fig, ax = plt.subplots(figsize=(columns * cell, rows * cell + 0.6))
    for i, (image, label) in enumerate(zip(images, titles)):
        row, column = divmod(i, columns)
        show(ax, image, extent=(column + 0.1, column + 0.9, row + 0.98, row + 0.18))  # left, right, bottom, top
        ax.text(column + 0.5, row + 0.14, label, ha="center", va="bottom", fontsize=fontsize)
    ax.set(xlim=(0, columns), ylim=(rows, 0))
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.6 / (rows * cell + 0.6))
    save(fig, path, tight=False)


def plot_misclassified(images: torch.Tensor, captions: list[str], path: Path, title: str) -> None:
    """uint8 images (N, C, H, W) with a caption each (true, predicted, confidence)."""
    plot_tiles(list(images), captions, path, title, columns=min(6, len(images)), cell=1.9, fontsize=8)


def plot_maps(maps: torch.Tensor, path: Path, title: str, cell: float = 1.2) -> None:
    """Each (H, W) map of maps (N, H, W), or each RGB kernel of (N, 3, H, W), scaled to its own range."""
    tiles = []
    for item in maps:
        item = (item - item.min()) / (item.max() - item.min()).clamp_min(1e-12)
        tiles.append(item if item.ndim == 3 else item.unsqueeze(0))
    plot_tiles(tiles, [str(i) for i in range(len(maps))], path, title, columns=min(8, len(maps)), cell=cell,
               fontsize=7)


def plot_folds(rows: list[dict], path: Path, title: str) -> None:
    """Each fold's validation and test scores (rows of fold, val, test in %), with their means as lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    for offset, key, colour in ((-0.2, "val", "tab:blue"), (0.2, "test", "tab:orange")):
        values = [row[key] for row in rows]
        ax.bar(x + offset, values, width=0.4, color=colour, label=f"{key} (mean {np.mean(values):.2f} %)")
        ax.axhline(np.mean(values), color=colour, linestyle="--", linewidth=1)
    low = min(min(row["val"], row["test"]) for row in rows)
    ax.set(xticks=x, xticklabels=[f"fold {row['fold']}" for row in rows], ylabel="%", ylim=(max(0.0, low - 5), 100))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    save(fig, path)


def plot_comparison(runs: list[tuple[str, list[dict]]], path: Path, title: str,
                    metric: tuple[str, str] = ("val_acc", "accuracy")) -> None:
    """Validation loss and a validation metric (its metrics.csv column, its name) of several runs, a line each."""
    plt = pyplot()
    column, name = metric
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, history in runs:
        epochs = [row["epoch"] for row in history]
        ax_loss.plot(epochs, [row["val_loss"] for row in history], marker="o", ms=3, label=label)
        ax_acc.plot(epochs, [100 * row[column] for row in history], marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="validation loss", title="validation loss")
    ax_acc.set(xlabel="epoch", ylabel=f"validation {name} (%)", title=f"validation {name}")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    save(fig, path)


def plot_cam(image: torch.Tensor, cam_overlay: np.ndarray, path: Path, title: str) -> None:
    """The uint8 image (C, H, W) beside its Grad-CAM overlay (an RGB array from gradcam.overlay)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.9))
    show(left, image)
    left.set_title("input", fontsize=9)
    right.imshow(cam_overlay)
    right.axis("off")
    right.set_title("Grad-CAM (red: most evidence)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def plot_label_scores(class_names: list[str], probs: torch.Tensor, targets: torch.Tensor, rows: list[dict],
                      path: Path, title: str) -> None:
    """Multi-label: each label's AP and F1 as bars, and its precision-recall curve (the first ten labels)."""
    plt = pyplot()
    fig, (ax_bars, ax_pr) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.35 * len(class_names) + 1.5)))
    y = np.arange(len(class_names))
    ax_bars.barh(y - 0.2, [100 * (r["ap"] or 0) for r in rows], 0.4, label="AP")
    ax_bars.barh(y + 0.2, [100 * r["f1"] for r in rows], 0.4, label="F1 at its threshold")
    ax_bars.set(yticks=y, yticklabels=[name[:20] for name in class_names], xlim=(0, 100), title="per label (%)")
    ax_bars.invert_yaxis()
    ax_bars.legend(loc="lower right", fontsize=8)
    for k, name in enumerate(class_names[:10]):
        order = probs[:, k].argsort(descending=True)
        hits = targets[order, k].double()
        if hits.sum() > 0:
            tp = hits.cumsum(0)
            ax_pr.plot((tp / hits.sum()).numpy(), (tp / torch.arange(1, len(tp) + 1)).numpy(), label=name[:20])
    ax_pr.set(xlabel="recall", xlim=(0, 1.02), ylim=(0, 1.02), title="precision (y) against recall")
    ax_pr.legend(fontsize=8)
    ax_pr.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)
