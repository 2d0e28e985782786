"""Print a model's layers, output shapes and parameter counts, for the config or a trained checkpoint.

    python tools/summary.py                                  # the default model on the default data
    python tools/summary.py data.name=mnist model.name=lenet5
    python tools/summary.py model.name=resnet18 data.name=cifar10   # any torchvision model name
    python tools/summary.py --checkpoint checkpoints/<run>   # a run folder or a .pt file
"""
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: runs from any folder
from engine.checkpoint import config_of, data_of, load_checkpoint, resolve  # noqa: E402
from engine.cli import make_parser, run_cli  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.datasets import describe, source_of  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.finetune import pretrained_size, with_image_size  # noqa: E402
from model import build_model  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", metavar="PATH", help="summarise this checkpoint or run folder instead")
    args = parser.parse_args(argv)
    if args.checkpoint and (args.overrides or args.config):
        raise UserError("--checkpoint takes no config or overrides: the model comes from the checkpoint")
    if args.checkpoint:
        ckpt = load_checkpoint(resolve(args.checkpoint, "", "best.pt"))
        cfg, info = config_of(ckpt), data_of(ckpt)
    else:
        cfg = load_config(args.config, args.overrides)
        if "image_size" in source_of(cfg.data).reads and cfg.data.image_size == "auto":  # the size the pretrained weights want
            cfg = with_image_size(cfg, pretrained_size(cfg.model))
        info = describe(cfg.data)
    print(f"model: {cfg.model.name}   data: {cfg.data.name}")
    model = build_model(cfg.model, info.in_channels, len(info.class_names), info.image_size)
    print(summary(model, info.in_channels, info.image_size))


def summary(model: nn.Module, in_channels: int, image_size: int) -> str:
    """A table of each layer's output shape and parameter count, and the notes' fully connected comparison."""
    rows: list[tuple[str, str, int]] = []
    fc_params = 0  # a Linear layer in place of every conv, with the same number of units in and out

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal fc_params
        params = sum(p.numel() for p in module.parameters())
        rows.append((type(module).__name__, "x".join(str(d) for d in output.shape[1:]), params))
        if isinstance(module, nn.Conv2d):
            fc_params += (inputs[0][0].numel() + 1) * output[0].numel()
        elif isinstance(module, nn.Linear):
            fc_params += params

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        model(torch.zeros(1, in_channels, image_size, image_size, device=next(model.parameters()).device))
    model.train(was_training)
    for hook in hooks:
        hook.remove()

    total = sum(p.numel() for p in model.parameters())
    width = max([14] + [len(name) + 2 for name, _, _ in rows])
    ratio = f"{fc_params / total:,.0f}x" if fc_params >= 10 * total else f"{fc_params / total:.1f}x"
    lines = [f"input: {in_channels}x{image_size}x{image_size} (C x H x W)",
             f"{'layer':<{width}}{'output (C x H x W)':>20}{'parameters':>12}"]
    lines += [f"{name:<{width}}{shape:>20}{params:>12,}" for name, shape, params in rows]
    lines.append(f"{'total':<{width}}{'':>20}{total:>12,}")
    if any(isinstance(m, nn.Conv2d) for m in leaves):  # the comparison is about convolutions: only where there are some
        lines.append(f"Fully connected layers with the same number of units in place of the convolutions "
                     f"would need {fc_params:,} parameters ({ratio}): a conv kernel is shared across all positions.")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
