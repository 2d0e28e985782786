"""A web page to try a trained model: upload or draw an image; see the top classes, Grad-CAM and feature maps.
A multi-label model (data.multilabel) shows every label at or above its threshold, and Grad-CAM of the most probable.

    python tools/demo.py                              # best.pt of the most recent run, on http://127.0.0.1:7860
    python tools/demo.py checkpoints/<run> --port 8000
    python tools/demo.py --host 0.0.0.0               # reachable from other machines: anyone there can use it
    python tools/demo.py --min-confidence 0.9         # below 90 %: the verdict is unknown

Serves a Gradio page (pip install -r requirements-extras.txt). Its prediction is also an API
endpoint, /predict, that gradio_client can call.
"""
import argparse
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
from engine import needs  # noqa: E402
from engine.checkpoint import config_of, data_of, load_checkpoint, model_from_checkpoint, temperature_of  # noqa: E402
from engine.cli import add_checkpoint_arguments, checkpoint_and_config, run_cli  # noqa: E402
from engine.devices import autocast, select_device, trained_dtype  # noqa: E402
from engine.entry import Parser  # noqa: E402
from engine.errors import UserError, shown  # noqa: E402
from engine.explain import conv_outputs, grad_cam, overlay  # noqa: E402
from engine.imagefiles import (DAMAGED, NO_LABEL, UNKNOWN, above_thresholds,  # noqa: E402
                               min_confidence, to_array)
from engine.loaders import Batching, Loader  # noqa: E402
from engine.metrics import TOP_K, evaluate_checkpoint  # noqa: E402
from engine.plots import plot_maps  # noqa: E402
from engine.tta import with_tta  # noqa: E402

DISPLAY = 224  # pixels across the Grad-CAM overlay


@dataclass
class Demo:
    """The model behind the page and what the page says about it."""
    ckpt: dict
    model: nn.Module
    title: str
    device: torch.device
    max_pixels: int  # bigger uploads are refused before decoding (data.max_pixels)
    temperature: float = 1.0  # the checkpoint's: probabilities are softmax(logits / temperature)
    min_confidence: float | None = None  # below it the verdict is unknown
    classify: nn.Module | None = None  # model averaged over the run's train.tta views, as test.py; None: model


def load_demo(path: Path, device: torch.device, max_pixels: int, min_confidence: float | None = None) -> Demo:
    """The checkpoint's model, and its test accuracy (multi-label: mAP) when the test split is on this machine."""
    ckpt = load_checkpoint(path)
    needs.check(needs.for_checkpoint(needs.DEMO, ckpt, None, needs.option_names(min_confidence=min_confidence)))
    cfg, temperature, multilabel = config_of(ckpt), temperature_of(ckpt, path), data_of(ckpt).multilabel
    score = "test mAP" if multilabel else "test accuracy"
    try:
        accuracy = f"{score} {100 * evaluate_checkpoint(path, device)[2]['map' if multilabel else 'accuracy']:.2f}%"
    except UserError:
        accuracy = f"{score} unknown (the test split is not on this machine)"
    title = (f"**{path.parent.name}/{path.name}**: {cfg.model.name} trained on {cfg.data.name} "
             f"(epoch {ckpt['epoch']}), {accuracy}")
    model = model_from_checkpoint(ckpt, device).eval()
    return Demo(ckpt, model, title, device, max_pixels, temperature, min_confidence,
                with_tta(model, cfg.train.tta, multilabel))


def open_upload(upload: dict | None, max_pixels: int) -> Image.Image:
    """The uploaded file (Gradio's file data, not preprocessed) decoded; anything else is a message for the page."""
    import gradio as gr

    if not upload or not upload.get("path"):
        raise gr.Error("no image was uploaded")
    path = upload["path"]
    try:
        img = Image.open(path)
        size = img.width, img.height
        if size[0] * size[1] <= max_pixels:
            img.load()
    except (*DAMAGED, Image.DecompressionBombError):
        raise gr.Error(f"{upload.get('orig_name') or Path(path).name} is not a readable image; upload a PNG or JPEG"
                       ) from None
    if size[0] * size[1] > max_pixels:
        raise gr.Error(f"the image is {size[0]}x{size[1]} pixels, over the limit of {max_pixels:,}; "
                       "scale it down and upload it again")
    return img


def drawn(drawing: dict | None) -> Image.Image:
    """The canvas's picture (background and strokes flattened)."""
    import gradio as gr

    if not drawing or drawing.get("composite") is None:
        raise gr.Error("the canvas is empty; draw something first")
    return drawing["composite"]


def feature_map_image(conv: nn.Conv2d, maps: torch.Tensor) -> Image.Image:
    """The first conv layer's feature maps (C, H, W) as one picture."""
    buffer = io.BytesIO()
    plot_maps(maps, buffer, f"conv 1: {maps.shape[0]} feature maps of {maps.shape[1]}x{maps.shape[2]}",
              cell=1.0 if maps.shape[1] <= 8 else 1.4)
    return Image.open(buffer)


def analyse(demo: Demo, img: Image.Image) -> tuple[dict, np.ndarray, Image.Image, str]:
    """Top classes (multi-label: the labels at or above their thresholds), Grad-CAM overlay of the most probable,
    first-layer feature maps and a one-line verdict for one image."""
    info = data_of(demo.ckpt)
    image = torch.from_numpy(to_array(img, info.in_channels, info.image_size))  # uint8 (C, H, W)
    images, _ = next(iter(Loader(image[None], torch.zeros(1, dtype=torch.int64), Batching(1), info,
                                  demo.device)))
    with torch.inference_mode(), autocast(demo.device, trained_dtype(demo.ckpt, demo.device)):
        logits = (demo.classify or demo.model)(images).float()  # (1, K): as test.py, over the run's views
    probs = logits.sigmoid() if info.multilabel else (logits / demo.temperature).softmax(1)
    heat, _ = grad_cam(demo.model, images, probs.argmax(1), demo.temperature)  # of the most probable class
    conv, _, maps = conv_outputs(demo.model, images)[0]
    scores, verdict = labels_found(demo, probs.cpu()) if info.multilabel else top_classes(demo, probs[0].cpu())
    return scores, overlay(image, heat[0], max(1, DISPLAY // image.shape[-1])), feature_map_image(conv, maps), verdict


def top_classes(demo: Demo, probs: torch.Tensor) -> tuple[dict, str]:
    """The TOP_K most probable classes of the softmax probs (num_classes,) and the verdict."""
    names = data_of(demo.ckpt).class_names
    top = probs.topk(min(TOP_K, len(names)))
    scores = {names[c]: p for p, c in zip(top.values.tolist(), top.indices.tolist())}
    verdict = f"prediction: {names[top.indices[0]]} ({100 * top.values[0]:.1f}%)"
    if demo.min_confidence is not None and top.values[0] < demo.min_confidence:
        verdict = (f"prediction: {UNKNOWN} (the most probable, {names[top.indices[0]]} at {100 * top.values[0]:.1f}%, "
                   f"is below the minimum of {100 * demo.min_confidence:g}%)")
    return scores, verdict


def labels_found(demo: Demo, probs: torch.Tensor) -> tuple[dict, str]:
    """Multi-label: every label at or above its threshold with its sigmoid probability (probs (1, K)), and the
    verdict."""
    info = data_of(demo.ckpt)
    (found,) = above_thresholds(probs, info.thresholds, info.class_names)
    verdict = "labels: " + (", ".join(f"{name} ({100 * p:.1f}%)" for name, p in found) or NO_LABEL)
    return dict(found), verdict


def build_page(demo: Demo):
    """The Gradio page: inputs on the left, what the model makes of them on the right."""
    import gradio as gr

    info = data_of(demo.ckpt)
    with gr.Blocks(title="CNN template demo", analytics_enabled=False) as page:
        gr.Markdown(f"# Try the model\n{demo.title}. Digits and MNIST are light strokes on a dark background.")
        with gr.Row():
            with gr.Column():
                with gr.Tab("Upload"):
                    upload = gr.Image(type="filepath", sources=["upload", "clipboard"], label="image")
                with gr.Tab("Draw"):
                    sketch = gr.Sketchpad(type="pil", image_mode="RGB", canvas_size=(280, 280),
                                          value=Image.new("RGB", (280, 280)), label="canvas",
                                          brush=gr.Brush(colors=["#ffffff"], default_size=24))
                    classify = gr.Button("Classify the drawing")
            with gr.Column():
                verdict = gr.Markdown(elem_id="verdict")
                scores = gr.Label(num_top_classes=len(info.class_names) if info.multilabel else TOP_K,
                                  label="labels at or above their thresholds" if info.multilabel else "top classes")
                cam = gr.Image(label="Grad-CAM: where the last conv layer's evidence for the prediction lies")
                maps = gr.Image(label="first conv layer's feature maps")
        outputs = [scores, cam, maps, verdict]
        # Not preprocessed, so that a file that is not an image reaches open_upload and gets its message.
        upload.upload(lambda file: analyse(demo, open_upload(file, demo.max_pixels)), upload, outputs,
                      api_name="predict", preprocess=False)
        classify.click(lambda drawing: analyse(demo, drawn(drawing)), sketch, outputs, api_name="predict_drawing")
    return page


def port_number(text: str) -> int:
    """argparse type for --port: a TCP port, 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {shown(text)}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=port_number, default=7860, help="port to serve on (1 to 65535)")
    parser.add_argument("--min-confidence", type=min_confidence, metavar="P",
                        help="answer unknown when the top probability is below P, in (0, 1]")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("demo.py needs gradio; pip install -r requirements-extras.txt") from None
    path, cfg = checkpoint_and_config(args)
    demo = load_demo(path, select_device(cfg.run.device), cfg.data.max_pixels, args.min_confidence)
    build_page(demo).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    run_cli(main)
