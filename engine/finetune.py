"""Starting from other weights: reading model.pretrained, which layers are new, freezing, learning rates."""
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from engine.checkpoint import FORMAT_VERSION, check_contents, data_of
from engine.config import Config, TrainConfig
from engine.datasets import source_of
from engine.datasource import DEFAULT_SIZE, DataInfo
from engine.devices import sync_batchnorm, wrap
from engine.errors import UserError, refusal, shown
from engine.loaders import Loader, make_train_loaders
from model import ModelConfig, TorchvisionModel, build_model, model_class


@dataclass
class Pretrained:
    """Weights to start from (model.pretrained), and the preprocessing they were trained with."""
    state: dict  # state-dict key -> tensor
    source: str  # the file, for messages
    mean: list[float] = field(default_factory=list)  # per channel; empty: use the data's own statistics
    std: list[float] = field(default_factory=list)
    image_size: int | None = None  # the size they were trained at, for data.image_size=auto
    class_names: list[str] | None = None  # the classes of a run of this template; None: unknown

    def stats(self) -> tuple[list[float], list[float]] | None:
        """(mean, std) to normalise the data with; None: the data's own."""
        return (self.mean, self.std) if self.mean else None


def read_pretrained(cfg: ModelConfig) -> Pretrained | None:
    """The weights model.pretrained names, read with weights_only=True; None for none."""
    if cfg.pretrained == "none":
        return None
    if cfg.pretrained == "imagenet":
        return read_imagenet(cfg.name)
    path = Path(cfg.pretrained).expanduser()
    if not path.is_file():
        raise UserError(f"model.pretrained: file {path} not found; use none | imagenet | PATH of a state dict "
                        "(.pt/.pth) or of a checkpoint of this template (e.g. checkpoints/<run>/best.pt)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, truncation and format errors all mean the same here
        if isinstance(err, OSError) and refusal(err):
            raise UserError(f"model.pretrained: {path} cannot be read ({refusal(err)}); check that it is "
                            "readable") from None
        raise UserError(f"model.pretrained: {path} is not a state dict or checkpoint readable with "
                        "weights_only=True; save one with torch.save(model.state_dict(), path)") from None
    if isinstance(loaded, dict) and loaded.get("format_version") == FORMAT_VERSION:  # a run of this template
        check_contents(loaded, path)  # what test.py checks: entries, data description, finite weights
        info = data_of(loaded)
        return Pretrained(loaded["model"], str(path), info.mean, info.std, info.image_size, info.class_names)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):  # e.g. Lightning's
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"model.pretrained: {path} holds no state dict (a mapping of layer names to tensors)")
    bad = next((str(k) for k, v in loaded.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UserError(f"model.pretrained: {path} has NaN or infinite weights in {shown(bad)}; use weights "
                        "saved before the run that made them diverged")
    return Pretrained(loaded, str(path))


def read_imagenet(name: str) -> Pretrained:
    """torchvision's DEFAULT weights for the model `name`, from torch's cache or downloaded into it once."""
    weights = imagenet_weights(name)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(weights.url)
    if not path.is_file():
        print(f"downloading {weights.url} to {folder} (once)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            hash_prefix = torch.hub.HASH_REGEX.search(path.name)  # torchvision's names end in -<sha256 prefix>.pth
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix and hash_prefix.group(1))
        except Exception as err:  # urllib, socket, HTTP and hash errors all mean the same to the user
            raise UserError(f"model.pretrained=imagenet: {path.name} is not in {folder} and could not be "
                            f"downloaded ({type(err).__name__}); download {weights.url} on a machine with "
                            f"internet and put it in that folder (TORCH_HOME sets its parent), or use a "
                            "PATH, or train from scratch: --config configs/photos.yaml") from None
    transforms = weights.transforms()  # the preprocessing the weights were trained with
    state = torch.load(path, map_location="cpu", weights_only=True)
    return Pretrained(state, str(path), list(transforms.mean), list(transforms.std), transforms.crop_size[0])


def with_image_size(cfg: Config, pretrained_size: int | None) -> Config:
    """data.image_size=auto resolved for sources that read it: the pretrained weights' size, else 32."""
    if cfg.data.image_size != "auto" or "image_size" not in source_of(cfg.data).reads:
        return cfg
    return replace(cfg, data=replace(cfg.data, image_size=pretrained_size or DEFAULT_SIZE))


def pretrained_size(cfg: ModelConfig) -> int | None:
    """The image size model.pretrained was trained at, without downloading ImageNet weights; None if unknown."""
    if cfg.pretrained == "imagenet":
        return imagenet_weights(cfg.name).transforms().crop_size[0]
    return read_pretrained(cfg).image_size if cfg.pretrained != "none" else None


def load_pretrained(model: nn.Module, pretrained: Pretrained, head: set[str], class_names: list[str]) -> list[str]:
    """Copy every tensor whose name and shape fit the model, except the head's (keys in `head`) when the
    file is a run of this template on classes other than class_names; returns the model's keys that
    start fresh (the new head), which a one-line note names."""
    own = model.state_dict()
    other_classes = pretrained.class_names is not None and pretrained.class_names != class_names
    state = {}
    for key, tensor in pretrained.state.items():
        key = key.removeprefix("module.").removeprefix("_orig_mod.")  # saved from DDP or torch.compile
        key = key if key in own or "net." + key not in own else "net." + key  # torchvision's own names
        state[key] = tensor
    fits = {k: v for k, v in state.items()
            if k in own and v.shape == own[k].shape and not (other_classes and k in head)}
    if not fits:
        raise UserError(f"model.pretrained: no tensor in {pretrained.source} fits a layer of the model (file: "
                        f"{', '.join(list(state)[:3])}, ...; model: {', '.join(list(own)[:3])}, ...); "
                        "use weights saved from the same architecture")
    model.load_state_dict(fits, strict=False)
    fresh = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    shapes = [f"{k} {tuple(own[k].shape)} vs file {tuple(state[k].shape)}" for k in fresh
              if k in state and state[k].shape != own[k].shape]
    why = [f"shapes differ: {'; '.join(shapes[:2])}"] if shapes else []
    why += ["the file's run had other classes"] if other_classes else []
    print(f"note: model.pretrained: {len(fits)} of {len(own)} tensors loaded from {pretrained.source}; new: "
          f"{', '.join(sorted({k.rpartition('.')[0] for k in fresh})) or 'none'}"
          + (f" ({'; '.join(why)})" if why else ""))
    return fresh


def imagenet_weights(name: str):
    """torchvision's DEFAULT ImageNet weights entry for the model `name` (url, transforms), or None."""
    if model_class(name) is not TorchvisionModel:
        return None
    from torchvision import models

    return models.get_model_weights(name).DEFAULT


def class_layers(cfg: ModelConfig, in_channels: int, image_size: int) -> set[str]:
    """The state-dict keys whose shapes depend on the number of classes: the output layer (the head)."""
    shapes = []
    for num_classes in (2, 3):
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                model = build_model(cfg, in_channels, num_classes, image_size)
        except NotImplementedError:  # a few models (RegNet) read values while initialising
            model = build_model(cfg, in_channels, num_classes, image_size)
        shapes.append({key: tensor.shape for key, tensor in model.state_dict().items()})
    return {key for key, shape in shapes[0].items() if shape != shapes[1][key]}


def param_groups(model: torch.nn.Module, new_layers: list[str] | None, cfg: TrainConfig) -> list[dict]:
    """One group of all parameters; with pretrained weights (new_layers not None) the new layers at
    train.lr and the pretrained ones at train.lr * train.backbone_lr (discriminative rates)."""
    if new_layers is None:
        return [{"params": list(model.parameters()), "lr": cfg.lr}]
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n in new_layers], "lr": cfg.lr},
              {"params": [p for n, p in named if n not in new_layers], "lr": cfg.lr * cfg.backbone_lr}]
    return [group for group in groups if group["params"]]


def freeze(model: torch.nn.Module, new_layers: list[str], is_frozen: bool) -> list[torch.nn.Module]:
    """Freeze (or unfreeze) the pretrained layers: no gradients, so the optimizer skips them; returns
    their batch norms, which train_one_epoch keeps in eval mode so their running statistics stay as loaded."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in new_layers or not is_frozen)
    return [module for name, module in model.named_modules() if is_frozen
            and isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and f"{name}.running_mean" not in new_layers]


def setup_model(cfg: Config, info: DataInfo, device: torch.device, resume: dict | None,
                pretrained: Pretrained | None) -> tuple[torch.nn.Module, list[str] | None, list[torch.nn.Module]]:
    """The model with its starting weights: (model, new_layers, batch norms to keep frozen).

    With model.pretrained, new_layers are the keys that did not come from it (the head); they train
    alone for train.freeze_epochs. A resumed run reads them from its checkpoint."""
    model = build_model(cfg.model, info.in_channels, len(info.class_names), info.image_size).to(device)
    model = sync_batchnorm(model, cfg, device)
    check_batch_size(model, cfg.train)
    if resume is not None:
        new_layers = resume.get("new_layers")
    elif pretrained is not None:
        head = class_layers(cfg.model, info.in_channels, info.image_size)
        new_layers = load_pretrained(model, pretrained, head, info.class_names)
    else:
        new_layers = None
    if new_layers is not None and cfg.train.freeze_epochs and len(new_layers) == 0:
        raise UserError("train.freeze_epochs: every layer came from model.pretrained, so no new layer is left to "
                        "train while the others are frozen; set train.freeze_epochs=0")
    is_frozen = (resume["epoch"] if resume else 0) < cfg.train.freeze_epochs
    return model, new_layers, freeze(model, new_layers, True) if is_frozen else []


def unfreeze(model: nn.Module, new_layers: list[str], cfg: Config, device: torch.device,
             epoch: int) -> tuple[list[nn.Module], nn.Module]:
    """After train.freeze_epochs: every layer trains; returns the (no) frozen norms and the model to call,
    wrapped again so that DDP averages the unfrozen parameters' gradients too."""
    print(f"epoch {epoch}: training all layers from now on (pretrained ones at train.lr x {cfg.train.backbone_lr})")
    return freeze(model, new_layers, False), wrap(model, cfg.run, device)


def check_batch_size(model: nn.Module, cfg: TrainConfig) -> None:
    """Batch norm needs two images per batch to compute statistics (a lone last image joins the batch before)."""
    if cfg.batch_size < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError("train.batch_size=1 with a batch-norm model: batch norm needs at least 2 images per batch; "
                        "raise train.batch_size (or, for model.name=cnn, set model.batch_norm=false)")


def without_finetuning(cfg: Config) -> Config:
    """Without model.pretrained the fine-tuning keys have nothing to act on: a note, and they are reset
    (so the run's saved config says what it did), rather than an error: recipes can be reused from scratch."""
    ignored = {key: value for key, value, default in (("freeze_epochs", cfg.train.freeze_epochs, 0),
                                                      ("backbone_lr", cfg.train.backbone_lr, 1.0)) if value != default}
    if not ignored:
        return cfg
    print(f"note: model.pretrained=none, so {', '.join(f'train.{k}={v}' for k, v in ignored.items())} "
          f"{'is' if len(ignored) == 1 else 'are'} ignored: every layer trains from scratch at train.lr")
    return replace(cfg, train=replace(cfg.train, freeze_epochs=0, backbone_lr=1.0))


def load_data(cfg: Config, resume: dict | None,
              device: torch.device) -> tuple[Config, Pretrained | None, Loader, Loader, DataInfo]:
    """model.pretrained read first (a bad file fails before the data loads), data.image_size resolved from it,
    and the loaders, normalised as the resumed run was, as the pretrained weights were, or by the train split."""
    pretrained = read_pretrained(cfg.model) if resume is None else None
    cfg = without_finetuning(cfg) if cfg.model.pretrained == "none" else cfg
    cfg = with_image_size(cfg, pretrained and pretrained.image_size)
    if resume is not None:
        stats = data_of(resume).mean, data_of(resume).std
    else:
        stats = pretrained.stats() if pretrained else None
    return cfg, pretrained, *make_train_loaders(cfg, device, stats)
