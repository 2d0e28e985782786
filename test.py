"""Evaluate a saved checkpoint, predict on image files, or look at its kernels, feature maps and Grad-CAM.

The model is rebuilt from the config stored in the checkpoint, so no config file is needed.
Outputs go to the checkpoint's run folder.

    python test.py                                  # best.pt of the most recent run, test split
    python test.py checkpoints/<run> --split val    # best.pt of that run, validation split
    python test.py --predict my_digit.png photos/ --output checkpoints/predictions.csv
    python test.py --feature-maps my_digit.png      # first-layer kernels and every conv's feature maps
    python test.py --cam my_digit.png checkpoints/<run>   # Grad-CAM: where the evidence for the prediction lies
    python test.py checkpoints/<run> --calibrate    # fit the temperature of an older run, then report
    python test.py --predict photos/ --min-confidence 0.9   # below 90 %: answer unknown
    python test.py run.device=cpu run.output_dir=runs   # the latest run under runs/, on the CPU
"""
import argparse
import json
import sys
from pathlib import Path

import engine  # noqa: F401 -- first: it sets how OpenMP threads wait, before torch loads OpenMP
import torch
from torch import nn

from engine import needs
from engine.calibration import calibrate, describe_fit, describe_thresholds, split_calibration
from engine.card import write_card
from engine.checkpoint import config_of, data_of, load_checkpoint, model_from_checkpoint, temperature_of
from engine.cli import (add_checkpoint_arguments, checkpoint_among, checkpoint_and_config, is_checkpoint_argument,
                        positive_int, run_cli)
from engine.datasource import read_image
from engine.devices import select_device, trained_dtype
from engine.entry import Parser
from engine.errors import UserError, shown
from engine.escape import CsvWriter, printable
from engine.explain import conv_outputs, grad_cam, last_conv, overlay
from engine.imagefiles import min_confidence, read_inputs, report_labels, report_predictions
from engine.loaders import Batching, Loader
from engine.metrics import TOP_K, evaluate, evaluate_checkpoint, per_class, top_k_accuracy
from engine.multilabel import evaluate_multilabel, per_label, print_report as print_multilabel
from engine.plots import (plot_cam, plot_confusion, plot_label_scores, plot_maps, plot_misclassified,
                          plot_reliability)
from engine.storage import replacing, write_text
from engine.tta import VIEWS, with_tta

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
    parser.add_argument("--tta", choices=list(VIEWS), help="average the report and --predict over these views of each "
                        "image (default: the run's train.tta); flip is wrong for digits and text")
    parser.add_argument("--calibrate", action="store_true",
                        help="first fit the temperature on the validation split and store it in the checkpoint")
    parser.add_argument("--min-confidence", type=min_confidence, metavar="P",
                        help="with --predict: answer unknown when the top probability is below P, in (0, 1]")
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
    options = needs.option_names(calibrate=args.calibrate, min_confidence=args.min_confidence)
    needs.check(needs.for_checkpoint(needs.PREDICT if args.predict else needs.TEST, load_checkpoint(path), args.tta,
                                     options))  # what each feature needs (engine/needs.py), before any work
    device = select_device(cfg.run.device)
    if args.calibrate:
        print(describe_fit(calibrate(path, device, args.batch_size)))
    if args.predict:
        sys.exit(1 if predict(path, args, device, cfg.data.max_pixels) else 0)
    if args.feature_maps:
        feature_maps(path, args.feature_maps, device, cfg.data.max_pixels)
        return
    if args.cam:
        cam(path, args.cam, device, cfg.data.max_pixels)
        return
    report(path, args, device)


def report(path: Path, args: argparse.Namespace, device: torch.device) -> None:
    """Metrics, confusion matrices, the misclassified grid and the reliability diagram for one split (args.split)."""
    split = args.split
    ckpt, loader, results = evaluate_checkpoint(path, device, split, args.batch_size, tta=args.tta)
    if data_of(ckpt).multilabel:
        report_multilabel(path, ckpt, split, results)
        return
    names, confusion = data_of(ckpt).class_names, results["confusion"]
    top_k = min(args.top_k, len(names))  # top-5 of 3 classes would be trivially 100 %
    summary = {"checkpoint": str(path), "epoch": ckpt["epoch"], "data": ckpt["config"]["data"]["name"],
               "split": split, **tta_summary(path, args, device, ckpt),
               "num_images": int(confusion.sum()), "loss": results["loss"],
               "accuracy": results["accuracy"], "balanced_accuracy": results["balanced_accuracy"],
               "macro_f1": results["macro_f1"], "top_k": top_k, "top_k_accuracy": top_k_accuracy(results, top_k),
               "per_class": per_class(confusion, names), "confusion": confusion.tolist()}
    summary["calibration"] = split_calibration(results, temperature_of(ckpt, path), args.min_confidence)
    print_report(summary)
    print_calibration(summary["calibration"], ckpt, path)

    run_dir, prefix, report_name = output_names(path, split)
    title = f"{summary['data']} {split} ({path.name}): accuracy {100 * summary['accuracy']:.2f}%"
    write_text(run_dir / report_name, json.dumps(summary, indent=2))
    write_confusion_csv(confusion, names, run_dir / f"{prefix}confusion_matrix.csv")
    plot_confusion(confusion, names, run_dir / f"{prefix}confusion_matrix.png", title + " (counts)")
    plot_confusion(confusion, names, run_dir / f"{prefix}confusion_matrix_normalised.png",
                   title + " (share of each true class)", normalise=True)
    written = [report_name, f"{prefix}confusion_matrix.csv", f"{prefix}confusion_matrix.png",
               f"{prefix}confusion_matrix_normalised.png"]
    mistakes = most_confident_mistakes(results, NUM_MISCLASSIFIED)
    if len(mistakes):
        captions = [f"true {names[results['labels'][i]]}\npred {names[results['top_classes'][i, 0]]} "
                    f"{100 * results['top_probs'][i, 0]:.0f}%" for i in mistakes.tolist()]
        plot_misclassified(loader.raw_images(mistakes), captions, run_dir / f"{prefix}misclassified.png",
                           f"most confident mistakes ({split}, {len(mistakes)} of "
                           f"{summary['num_images'] - int(confusion.diag().sum())})")
        written.append(f"{prefix}misclassified.png")
    written.append(plot_calibration(summary["calibration"], run_dir / f"{prefix}reliability.png", title))
    if split == "test" and path.name == "best.pt":  # the card describes the run's best.pt
        written.append(write_card(run_dir, ckpt, results).name)
    print(f"wrote to {run_dir}/: {', '.join(written)}")


def output_names(path: Path, split: str) -> tuple[Path, str, str]:
    """Where a report goes and how its files are named: best.pt's test split plainly (test_report.json,
    confusion_matrix.png, ...), another split or checkpoint with its name in front (val_..., last_...), so
    that evaluating last.pt never replaces best.pt's files."""
    checkpoint = "" if path.name == "best.pt" else f"{path.stem}_"
    prefix = checkpoint + ("" if split == "test" else f"{split}_")
    return path.parent, prefix, f"{checkpoint}{split}_report.json"


def tta_summary(path: Path, args: argparse.Namespace, device: torch.device, ckpt: dict) -> dict:
    """Which views the report averages over (--tta, default the run's train.tta), their cost in forward
    passes per image, and the accuracy without them."""
    tta = args.tta or config_of(ckpt).train.tta
    if tta == "none":
        return {"tta": tta}
    plain = evaluate_checkpoint(path, device, args.split, args.batch_size, tta="none")[2]
    return {"tta": tta, "tta_cost": VIEWS[tta], "accuracy_without_tta": plain["accuracy"]}


def print_calibration(calibration: dict, ckpt: dict, path: Path) -> None:
    """ECE before and after the temperature, and how many images fall below the confidence thresholds."""
    ece = f"calibration (top-1 confidence, {calibration['bins']} bins): ECE {100 * calibration['ece_before']:.2f}%"
    fit = ckpt.get("calibration")
    if fit is not None and fit.get("errors") == 0:
        print(f"{ece}; temperature 1: the {fit['split']} split ({fit['images']} images) had no mistake to fit it on")
    elif fit is not None:
        print(f"{ece} before, {100 * calibration['ece_after']:.2f}% after temperature "
              f"{calibration['temperature']:.3f} (fitted on {fit['split']}, {fit['images']} images)")
    else:
        print(f"{ece}; not calibrated: python test.py {path} --calibrate fits a temperature on the validation split")
    print(f"confidence {describe_thresholds(calibration['thresholds'])}")


def plot_calibration(calibration: dict, path: Path, title: str) -> str:
    """The reliability diagram: before the temperature, and after it when there is one; returns the file name."""
    panels = [("without temperature", calibration["reliability_before"], calibration["ece_before"])]
    if calibration["temperature"] != 1.0:
        panels.append((f"temperature {calibration['temperature']:.3f}", calibration["reliability_after"],
                       calibration["ece_after"]))
    plot_reliability(panels, path, f"{title}: reliability of the top-1 confidence")
    return path.name


def report_multilabel(path: Path, ckpt: dict, split: str, results: dict) -> None:
    """Per-label AP, F1, threshold and support, and label_scores.png, for a data.multilabel checkpoint."""
    names = data_of(ckpt).class_names
    summary = {"checkpoint": str(path), "epoch": ckpt["epoch"], "data": ckpt["config"]["data"]["name"],
               "split": split, "num_images": len(results["probs"]),
               **{key: results[key] for key in ("loss", "map", "micro_f1", "macro_f1", "subset_accuracy")},
               "per_label": per_label(results, names)}
    print_multilabel(summary)
    run_dir, prefix, report_name = output_names(path, split)
    write_text(run_dir / report_name, json.dumps(summary, indent=2))
    title = f"{summary['data']} {split} ({path.name}): mAP {100 * summary['map']:.2f}%"
    plot_label_scores(names, results["probs"], results["targets"], summary["per_label"],
                      run_dir / f"{prefix}label_scores.png", title)
    print(f"wrote to {run_dir}/: {report_name}, {prefix}label_scores.png")


def print_report(report: dict) -> None:
    print(f"checkpoint: {report['checkpoint']} (epoch {report['epoch']}), {report['split']} split")
    print(f"images: {report['num_images']}   loss {report['loss']:.4f}   accuracy {100 * report['accuracy']:.2f}%"
          f"   top-{report['top_k']} accuracy {100 * report['top_k_accuracy']:.2f}%")
    if report["tta"] != "none":
        print(f"test-time augmentation {report['tta']} ({report['tta_cost']} forward passes per image): accuracy "
              f"{100 * report['accuracy']:.2f}% with it, {100 * report['accuracy_without_tta']:.2f}% without")
    print(f"balanced accuracy (mean recall) {100 * report['balanced_accuracy']:.2f}%   "
          f"macro F1 {100 * report['macro_f1']:.2f}%")
    print(f"{'class':<16}{'accuracy/recall':>16}{'precision':>11}{'f1':>8}{'support':>9}")
    for row in report["per_class"]:
        print(f"{printable(row['class'])[:15]:<16}{100 * row['recall']:>15.2f}%{100 * row['precision']:>10.2f}%"
              f"{100 * row['f1']:>7.2f}%{row['support']:>9}")


def write_confusion_csv(confusion: torch.Tensor, class_names: list[str], path: Path) -> None:
    with replacing(path, binary=False) as f:
        writer = CsvWriter(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion.tolist()):
            writer.writerow([name, *row])


def most_confident_mistakes(results: dict, count: int) -> torch.Tensor:
    """Positions of the wrongly classified images, most confident first."""
    wrong = (results["top_classes"][:, 0] != results["labels"]).nonzero().flatten()
    order = results["top_probs"][wrong, 0].argsort(descending=True)
    return wrong[order[:count]]


def predict(path: Path, args: argparse.Namespace, device: torch.device, max_pixels: int) -> int:
    """Print the top-k classes (multi-label: every label at or above its threshold) of every image in
    args.predict; returns the number of files that could not be read."""
    ckpt = load_checkpoint(path)
    info, temperature, cfg = data_of(ckpt), temperature_of(ckpt, path), config_of(ckpt)
    threshold, tta = getattr(args, "min_confidence", None), getattr(args, "tta", None) or cfg.train.tta
    names, top_k = info.class_names, min(args.top_k, len(info.class_names))
    files, images, failures = read_inputs(args.predict, info.in_channels, info.image_size, max_pixels)
    model = with_tta(model_from_checkpoint(ckpt, device), tta, info.multilabel)  # the views test.py's report takes
    amp = trained_dtype(ckpt, device)
    views = f", views {tta}" if tta != "none" else ""
    model_name = f"{path} ({cfg.model.name} on {cfg.data.name}, epoch {ckpt['epoch']}{views})"
    if info.multilabel:
        probs = torch.zeros(0, len(names))  # (N, K) sigmoids
        if len(files):
            loader = Loader(torch.from_numpy(images), torch.zeros(len(files), len(names)), Batching(256), info, device)
            probs = evaluate_multilabel(model, loader, device, amp, thresholds=info.thresholds)["probs"]
        table = report_labels(files, probs, info.thresholds, names, model_name)
    else:
        predictions = []
        if len(files):
            loader = Loader(torch.from_numpy(images), torch.zeros(len(files), dtype=torch.int64), Batching(256),
                            info, device)
            results = evaluate(model, loader, len(names), device, amp, temperature=temperature)
            predictions = [[(names[c], p) for c, p in zip(classes[:top_k], probs[:top_k])]
                           for probs, classes in zip(results["top_probs"].tolist(), results["top_classes"].tolist())]
        table = report_predictions(files, predictions, top_k, model_name, threshold)
    if args.output and files:  # nothing predicted: an earlier CSV stays as it was
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
    heat, probs = grad_cam(model, images, temperature=temperature_of(ckpt, path))
    name, _ = last_conv(model)
    predicted = int(probs[0].argmax())
    label = f"{data_of(ckpt).class_names[predicted]} ({100 * probs[0, predicted]:.1f}%)"
    plot_cam(image.cpu(), overlay(image, heat[0], scale=max(1, 224 // image.shape[-1])), path.parent / "gradcam.png",
             f"Grad-CAM of the last conv layer ({name}) for the predicted class {label}")
    print(f"{image_path} through {path}: predicted {label}; wrote {path.parent / 'gradcam.png'}")


if __name__ == "__main__":
    run_cli(main)
