"""Evaluate a saved checkpoint, predict on image files, or look at its kernels and feature maps.

The model is rebuilt from the config stored in the checkpoint, so no config file is needed.
Outputs go to the checkpoint's run folder.

    python test.py                                  # best.pt of the most recent run, test split
    python test.py checkpoints/<run> --split val    # best.pt of that run, validation split
    python test.py --predict my_digit.png photos/ --output predictions.csv
    python test.py --feature-maps my_digit.png      # first-layer kernels and every conv's feature maps
    python test.py run.device=cpu run.output_dir=runs   # the latest run under runs/, on the CPU
"""
import argparse
import csv
import json
import re
import sys
from pathlib import Path

import torch
from torch import nn

from checkpoint import config_of, data_of, load_checkpoint, model_from_checkpoint, resolve
from cli import Parser, autocast_dtype, run_cli, select_device
from config import UserError, load_config
from datasets import Batching, DataInfo, Loader, read_image
from metrics import TOP_K, evaluate, evaluate_checkpoint, make_loss, per_class, top_k_accuracy
from plots import plot_confusion, plot_maps, plot_misclassified

NUM_MISCLASSIFIED = 36  # images in the misclassified grid


def write_confusion_csv(confusion: torch.Tensor, class_names: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion.tolist()):
            writer.writerow([name, *row])


def print_report(report: dict) -> None:
    print(f"checkpoint: {report['checkpoint']} (epoch {report['epoch']}), {report['split']} split")
    print(f"images: {report['num_images']}   loss {report['loss']:.4f}   accuracy {100 * report['accuracy']:.2f}%"
          f"   top-{report['top_k']} accuracy {100 * report['top_k_accuracy']:.2f}%")
    print(f"balanced accuracy (mean recall) {100 * report['balanced_accuracy']:.2f}%   "
          f"macro F1 {100 * report['macro_f1']:.2f}%")
    print(f"{'class':<16}{'accuracy/recall':>16}{'precision':>11}{'f1':>8}{'support':>9}")
    for row in report["per_class"]:
        print(f"{row['class'][:15]:<16}{100 * row['recall']:>15.2f}%{100 * row['precision']:>10.2f}%"
              f"{100 * row['f1']:>7.2f}%{row['support']:>9}")


def most_confident_mistakes(results: dict, count: int) -> torch.Tensor:
    """Positions of the wrongly classified images, most confident first."""
    wrong = (results["top_classes"][:, 0] != results["labels"]).nonzero().flatten()
    order = results["top_probs"][wrong, 0].argsort(descending=True)
    return wrong[order[:count]]


def report(path: Path, split: str, top_k: int, device: torch.device, batch_size: int | None) -> None:
    """Metrics, confusion matrices and the misclassified grid for one split."""
    ckpt, loader, results = evaluate_checkpoint(path, device, split, batch_size)
    names, confusion = data_of(ckpt).class_names, results["confusion"]
    summary = {"checkpoint": str(path), "epoch": ckpt["epoch"], "data": ckpt["config"]["data"]["name"],
               "split": split, "num_images": int(confusion.sum()), "loss": results["loss"],
               "accuracy": results["accuracy"], "balanced_accuracy": results["balanced_accuracy"],
               "macro_f1": results["macro_f1"], "top_k": top_k, "top_k_accuracy": top_k_accuracy(results, top_k),
               "per_class": per_class(confusion, names), "confusion": confusion.tolist()}
    print_report(summary)

    run_dir, prefix = path.parent, "" if split == "test" else f"{split}_"
    title = f"{summary['data']} {split}: accuracy {100 * summary['accuracy']:.2f}%"
    (run_dir / f"{split}_report.json").write_text(json.dumps(summary, indent=2))
    write_confusion_csv(confusion, names, run_dir / f"{prefix}confusion_matrix.csv")
    plot_confusion(confusion, names, run_dir / f"{prefix}confusion_matrix.png", title + " (counts)")
    plot_confusion(confusion, names, run_dir / f"{prefix}confusion_matrix_normalised.png",
                   title + " (share of each true class)", normalise=True)
    written = [f"{split}_report.json", f"{prefix}confusion_matrix.csv", f"{prefix}confusion_matrix.png",
               f"{prefix}confusion_matrix_normalised.png"]
    mistakes = most_confident_mistakes(results, NUM_MISCLASSIFIED)
    if len(mistakes):
        captions = [f"true {names[results['labels'][i]]}\npred {names[results['top_classes'][i, 0]]} "
                    f"{100 * results['top_probs'][i, 0]:.0f}%" for i in mistakes.tolist()]
        plot_misclassified(loader.raw_images(mistakes), captions, run_dir / f"{prefix}misclassified.png",
                           f"most confident mistakes ({split}, {len(mistakes)} of "
                           f"{summary['num_images'] - int(confusion.diag().sum())})")
        written.append(f"{prefix}misclassified.png")
    print(f"wrote to {run_dir}/: {', '.join(written)}")


def image_files(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files named directly, plus every file inside named folders; and errors for missing paths."""
    files, errors = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path} not found")
    return files, errors


def read_all(files: list[Path], info: DataInfo) -> tuple[list[Path], list[torch.Tensor], list[str]]:
    """Decode each file at the checkpoint's channels and size; one error line per unreadable file."""
    good, images, errors = [], [], []
    for path in files:
        try:
            images.append(read_image(path, info.in_channels, info.image_size))
            good.append(path)
        except UserError as err:
            errors.append(str(err))
    return good, images, errors


def predict(path: Path, inputs: list[str], top_k: int, output: str | None, device: torch.device) -> int:
    """Print the top-k classes of every image; returns the number of files that could not be read."""
    ckpt = load_checkpoint(path)
    info = data_of(ckpt)
    names = info.class_names
    files, errors = image_files(inputs)
    files, images, read_errors = read_all(files, info)
    for message in errors + read_errors:
        print(f"error: {message}", file=sys.stderr)
    rows = []
    if images:
        loader = Loader(torch.stack(images), torch.zeros(len(images), dtype=torch.int64), Batching(256), info, device)
        model = model_from_checkpoint(ckpt, device)
        cfg = config_of(ckpt)
        results = evaluate(model, loader, make_loss(cfg.train.loss), len(names), device,
                           autocast_dtype(cfg.run.amp, device))
        for file, probs, classes in zip(files, results["top_probs"].tolist(), results["top_classes"].tolist()):
            ranked = [(names[c], p) for c, p in zip(classes[:top_k], probs[:top_k])]
            print(f"{file}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in ranked))
            rows.append([str(file)] + [v for name, p in ranked for v in (name, f"{p:.6f}")])
    if output:
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file"] + [f"{key}_{i + 1}" for i in range(top_k) for key in ("class", "prob")])
            writer.writerows(rows)
        print(f"wrote {len(rows)} predictions to {output}")
    return len(errors) + len(read_errors)


def formula(conv: nn.Conv2d, size: int) -> str:
    """The notes' OH = (H + 2P - FH)/S + 1 with this layer's numbers."""
    (kernel, _), (stride, _), (padding, _) = conv.kernel_size, conv.stride, conv.padding
    return (f"OH = (H + 2P - FH)/S + 1 = ({size} + 2*{padding} - {kernel})/{stride} + 1 "
            f"= {(size + 2 * padding - kernel) // stride + 1}")


def feature_maps(path: Path, image_path: str, device: torch.device) -> None:
    """One PNG of the first conv layer's kernels, and one PNG of each conv layer's feature maps."""
    ckpt = load_checkpoint(path)
    model, info = model_from_checkpoint(ckpt, device).eval(), data_of(ckpt)
    image = read_image(Path(image_path), info.in_channels, info.image_size)
    images, _ = next(iter(Loader(image[None], torch.zeros(1, dtype=torch.int64), Batching(1), info, device)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"model {ckpt['config']['model']['name']} has no conv layers to show")
    seen: list[tuple[int, torch.Tensor]] = []  # (input size, output (C, H, W)) per conv
    hooks = [c.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[-1], o[0].float().cpu())))
             for c in convs]
    with torch.inference_mode():
        model(images)
    for hook in hooks:
        hook.remove()

    run_dir, written = path.parent, ["kernels.png"]
    kernels = convs[0].weight.detach().float().cpu()  # (out, in, FH, FW)
    plot_maps(kernels if kernels.shape[1] == 3 else kernels.mean(1), run_dir / "kernels.png",
              f"conv 1: {kernels.shape[0]} kernels of {kernels.shape[1]}x{kernels.shape[2]}x{kernels.shape[3]}")
    for i, (conv, (size, maps)) in enumerate(zip(convs, seen), 1):
        name = f"feature_maps_conv{i}.png"
        plot_maps(maps, run_dir / name, f"conv {i}: {maps.shape[0]} feature maps of {maps.shape[1]}x{maps.shape[2]}"
                  f"  ({formula(conv, size)})", cell=1.0 if maps.shape[1] <= 8 else 1.4)
        written.append(name)
    print(f"{image_path} through {path}: wrote to {run_dir}/: {', '.join(written)}")


# The only settings test.py takes from the config; everything else comes from the checkpoint.
CONFIG_KEYS = ("run.output_dir", "run.device")


def split_inputs(inputs: list[str]) -> tuple[str | None, list[str]]:
    """[CHECKPOINT] [key=value ...] -> (checkpoint or None, overrides of CONFIG_KEYS)."""
    overrides = [text for text in inputs if re.match(r"^\w+(\.\w+)+=", text)]
    paths = [text for text in inputs if text not in overrides]
    for text in overrides:
        if text.partition("=")[0] not in CONFIG_KEYS:
            raise UserError(f"override {text!r}: test.py reads only {' and '.join(CONFIG_KEYS)} from the config; "
                            "the model and data come from the checkpoint")
    if len(paths) > 1:
        raise UserError(f"give at most one checkpoint or run folder, got {len(paths)}: {' '.join(paths)}")
    return (paths[0] if paths else None), overrides


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="[CHECKPOINT_OR_RUN_FOLDER] [key=value]",
                        help="a .pt file or a run folder (default: the most recent run under run.output_dir); "
                             f"overrides of {', '.join(CONFIG_KEYS)}")
    parser.add_argument("--config", metavar="FILE", help="config file for run.output_dir and run.device "
                        "(default: config.yaml)")
    parser.add_argument("--split", choices=["test", "val"], default="test", help="which split to evaluate")
    parser.add_argument("--top-k", type=int, default=TOP_K, choices=range(1, TOP_K + 1), metavar=f"1..{TOP_K}",
                        help="k for top-k accuracy and predictions")
    parser.add_argument("--predict", nargs="+", metavar="IMG_OR_DIR", help="predict the class of image files")
    parser.add_argument("--output", metavar="CSV", help="with --predict: write the predictions to this CSV file")
    parser.add_argument("--feature-maps", metavar="IMG", help="draw kernels and feature maps for this image")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    args = parser.parse_args(argv)

    checkpoint, overrides = split_inputs(args.inputs)
    run_cfg = load_config(args.config, overrides).run
    path = resolve(checkpoint, run_cfg.output_dir, "best.pt")
    device = select_device(run_cfg.device)
    if args.predict:
        sys.exit(1 if predict(path, args.predict, args.top_k, args.output, device) else 0)
    if args.feature_maps:
        feature_maps(path, args.feature_maps, device)
        return
    report(path, args.split, args.top_k, device, args.batch_size)


if __name__ == "__main__":
    run_cli(main)
