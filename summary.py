"""Print a model's layers, output shapes and parameter counts, for the config or a trained checkpoint.

    python summary.py                                  # the default model on the default data
    python summary.py data.name=mnist model.name=lenet5
    python summary.py model.name=resnet18 data.name=cifar10   # any torchvision model name
    python summary.py --checkpoint checkpoints/<run>   # a run folder or a .pt file
"""
from checkpoint import config_of, data_of, load_checkpoint, new_model, pretrained_size, resolve, with_image_size
from cli import make_parser, run_cli
from config import UserError, load_config
from datasets import describe
from model import summary


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
        if cfg.data.name == "folder" and cfg.data.image_size == "auto":  # the size the pretrained weights want
            cfg = with_image_size(cfg, pretrained_size(cfg.model))
        info = describe(cfg.data)
    print(f"model: {cfg.model.name}   data: {cfg.data.name}")
    print(summary(new_model(cfg.model, info), info.in_channels, info.image_size))


if __name__ == "__main__":
    run_cli(main)
