"""Evaluate a saved checkpoint, predict on image files, or look at its kernels, feature maps and Grad-CAM.

The model is rebuilt from the config stored in the checkpoint, so no config file is needed.
Outputs go to the checkpoint's run folder.

    python test.py                                  # best.pt of the most recent run, test split
    python test.py checkpoints/<run> --split val    # best.pt of that run, validation split
    python test.py --predict my_digit.png photos/ --output checkpoints/predictions.csv
    python test.py --feature-maps my_digit.png      # first-layer kernels and every conv's feature maps
    python test.py --cam my_digit.png checkpoints/<run>   # Grad-CAM: where the evidence for the prediction lies
    python test.py run.device=cpu run.output_dir=runs   # the latest run under runs/, on the CPU
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from torch import nn

from engine.checkpoint import config_of, data_of, load_checkpoint, model_from_checkpoint
from engine.cli import (Parser, add_checkpoint_arguments, checkpoint_among, checkpoint_and_config,
                        is_checkpoint_argument, positive_int, run_cli)
from engine.datasets import read_image
from engine.devices import autocast_dtype, select_device
from engine.errors import UserError, shown
from engine.explain import conv_outputs, grad_cam, last_conv, overlay
from engine.imagefiles import read_inputs, report_predictions
from engine.loaders import Batching, Loader
from engine.metrics import TOP_K, evaluate, evaluate_checkpoint, per_class, top_k_accuracy
from engine.plots import plot_cam, plot_confusion, plot_maps, plot_misclassified
from engine.storage import replacing, write_text

NUM_MISCLASSIFIED = 36  # images in the misclassified grid


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--split", choices=["test", "val"], default="test", help="which split to evaluate")
    parser.add_argument("--top-k", type=int, default=TOP_K, choices=range(1, TOP_K + 1), metavar=f"1..{TOP_K}",
                        help="k for top-k accuracy and predictions")
    parser.add_argument("--predict", nargs="+", metavar="IMG_OR_DIR", help="predict the class of image files")
    parser.add_argument("--output", metavar="CSV", help="with --predict: write the predictions to this CSV file")
    parser.add_argument("--feature-maps", metavar="IMG", help="draw kernels and feature maps for this image")
    parser.add_argument("--cam", metavar="IMG", help="draw the Grad-CAM heatmap of the predicted class for this image")
    parser.add_argument("--batch-size", type=positive_int, help="evaluation batch size (default: the run's)")
    args = parser.parse_args(argv)
    if args.predict:
        args.predict, args.inputs = checkpoint_among(args.predict, args.inputs)
        if not args.predict:
            raise UserError(f"--predict names no image file or folder, only the checkpoint {shown(args.inputs[-1])}; "
                            "add the images to predict")
    for option, image in (("--feature-maps", args.feature_maps), ("--cam", args.cam)):
        if image and is_checkpoint_argument(image):
            raise UserError(f"{option} takes an image; {shown(image)} is a checkpoint or run folder: put it "
                            f"before {option} (python test.py {image} {option} IMG)")

    path, cfg = checkpoint_and_config(args)
    device = select_device(cfg.run.device)
    if args.predict:
        sys.exit(1 if predict(path, args, device, cfg.data.max_pixels) else 0)
    if args.feature_maps:
        feature_maps(path, args.feature_maps, device, cfg.data.max_pixels)
        return
    if args.cam:
        cam(path, args.cam, device, cfg.data.max_pixels)
        return
    report(path, args.split, args.top_k, device, args.batch_size)


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
    write_text(run_dir / f"{split}_report.json", json.dumps(summary, indent=2))
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


def write_confusion_csv(confusion: torch.Tensor, class_names: list[str], path: Path) -> None:
    with replacing(path, binary=False) as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion.tolist()):
            writer.writerow([name, *row])


def most_confident_mistakes(results: dict, count: int) -> torch.Tensor:
    """Positions of the wrongly classified images, most confident first."""
    wrong = (results["top_classes"][:, 0] != results["labels"]).nonzero().flatten()
    order = results["top_probs"][wrong, 0].argsort(descending=True)
    return wrong[order[:count]]


def predict(path: Path, args: argparse.Namespace, device: torch.device, max_pixels: int) -> int:
    """Print the top-k classes of every image in args.predict; returns the number of files that could not be read."""
    ckpt = load_checkpoint(path)
    info = data_of(ckpt)
    names, top_k = info.class_names, min(args.top_k, len(info.class_names))
    files, images, failures = read_inputs(args.predict, info.in_channels, info.image_size, max_pixels)
    predictions = []
    if len(files):
        loader = Loader(torch.from_numpy(images), torch.zeros(len(files), dtype=torch.int64), Batching(256), info,
                        device)
        model = model_from_checkpoint(ckpt, device)
        results = evaluate(model, loader, len(names), device, autocast_dtype(config_of(ckpt).run.amp, device))
        predictions = [[(names[c], p) for c, p in zip(classes[:top_k], probs[:top_k])]
                       for probs, classes in zip(results["top_probs"].tolist(), results["top_classes"].tolist())]
    cfg = config_of(ckpt)
    table = report_predictions(files, predictions, top_k, f"{path} ({cfg.model.name} on {cfg.data.name}, epoch "
                                                        f"{ckpt['epoch']})")
    if args.output:
        write_text(args.output, table)
        print(f"wrote {len(files)} predictions of {path} to {args.output}")
    return failures


def feature_maps(path: Path, image_path: str, device: torch.device, max_pixels: int) -> None:
    """One PNG of the first conv layer's kernels, and one PNG of each conv layer's feature maps."""
    _, model, _, images = one_image(path, image_path, device, max_pixels)
    seen = conv_outputs(model, images)
    run_dir, written = path.parent, ["kernels.png"]
    kernels = seen[0][0].weight.detach().float().cpu()  # (out, in, FH, FW)
    plot_maps(kernels if kernels.shape[1] == 3 else kernels.mean(1), run_dir / "kernels.png",
              f"conv 1: {kernels.shape[0]} kernels of {kernels.shape[1]}x{kernels.shape[2]}x{kernels.shape[3]}")
    for i, (conv, size, maps) in enumerate(seen, 1):
        name = f"feature_maps_conv{i}.png"
        plot_maps(maps, run_dir / name, f"conv {i}: {maps.shape[0]} feature maps of {maps.shape[1]}x{maps.shape[2]}"
                  f"  ({formula(conv, size)})", cell=1.0 if maps.shape[1] <= 8 else 1.4)
        written.append(name)
    print(f"{image_path} through {path}: wrote to {run_dir}/: {', '.join(written)}")


def formula(conv: nn.Conv2d, size: int) -> str:
    """The notes' OH = (H + 2P - FH)/S + 1 with this layer's numbers."""
    (kernel, _), (stride, _), (padding, _) = conv.kernel_size, conv.stride, conv.padding
    return (f"OH = (H + 2P - FH)/S + 1 = ({size} + 2*{padding} - {kernel})/{stride} + 1 "
            f"= {(size + 2 * padding - kernel) // stride + 1}")


def one_image(path: Path, image_path: str, device: torch.device,
              max_pixels: int) -> tuple[dict, nn.Module, torch.Tensor, torch.Tensor]:
    """The checkpoint, its model in eval mode, the image as uint8 (C, H, W) and normalised (1, C, H, W)."""
    ckpt = load_checkpoint(path)
    model, info = model_from_checkpoint(ckpt, device).eval(), data_of(ckpt)
    image = read_image(Path(image_path), info.in_channels, info.image_size, max_pixels)
    images, _ = next(iter(Loader(image[None], torch.zeros(1, dtype=torch.int64), Batching(1), info, device)))
    return ckpt, model, image, images


def cam(path: Path, image_path: str, device: torch.device, max_pixels: int) -> None:
    """gradcam.png: the image, and where the last conv layer's evidence for the predicted class lies."""
    ckpt, model, image, images = one_image(path, image_path, device, max_pixels)
    heat, probs = grad_cam(model, images)
    name, _ = last_conv(model)
    predicted = int(probs[0].argmax())
    label = f"{data_of(ckpt).class_names[predicted]} ({100 * probs[0, predicted]:.1f}%)"
    plot_cam(image.cpu(), overlay(image, heat[0], scale=max(1, 224 // image.shape[-1])), path.parent / "gradcam.png",
             f"Grad-CAM of the last conv layer ({name}) for the predicted class {label}")
    print(f"{image_path} through {path}: predicted {label}; wrote {path.parent / 'gradcam.png'}")


if __name__ == "__main__":
    run_cli(main)
