"""The one checkpoint format: plain types only, written atomically, read with weights_only=True.

A checkpoint is a dict with:
  format_version, model (state dict of the unwrapped model), optimizer, scheduler, scaler,
  amp (the precision run.amp resolved to: none | bf16 | fp16),
  epoch (completed epochs), best_score (of train.best_metric), bad_epochs, history (one dict per epoch),
  config (the resolved config as a dict), data (class_names, in_channels, image_size, mean, std,
  class_counts), new_layers (with model.pretrained: the state-dict keys that did not come from it),
  rng (per process, in rank order: torch's CPU random state, Python's, and CUDA's when used).

It also reads model.pretrained: torchvision's ImageNet weights, a state dict, or another run's checkpoint.
"""
import os
import pickle
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from config import Config, UserError, config_from_dict, with_defaults
from datasets import DEFAULT_SIZE, DataInfo
from model import ModelConfig, build_model, imagenet_weights

FORMAT_VERSION = 1


def unreadable(path: Path) -> str:
    return (f"checkpoint {path} is not a readable PyTorch checkpoint (empty, truncated or corrupted); "
            "use another checkpoint, e.g. last.pt of the same run")


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely; every failure becomes a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass a .pt file or a run folder under checkpoints/")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # the safe unpickler met a class or function
            raise UserError(f"checkpoint {path} was refused: it holds objects other than plain data "
                            "(tensors, numbers, strings, lists, dicts), so it could run code when loaded") from None
        raise UserError(unreadable(path)) from None
    except Exception:  # on a file that is not a checkpoint the unpickler raises almost any type (IndexError, ...)
        raise UserError(unreadable(path)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} was not written by this template (format version "
                        f"{FORMAT_VERSION}); train a new one with train.py")
    check_contents(ckpt, path)
    return ckpt


# The entries every reader relies on, and their types.
REQUIRED = {"model": dict, "config": dict, "data": dict, "epoch": int, "history": list, "best_score": float}


def check_contents(ckpt: dict, path: Path) -> None:
    """Every required entry present with its type, the data description complete, every weight finite."""
    if "best_score" not in ckpt and "best_val_acc" in ckpt:  # its name before train.best_metric existed
        ckpt["best_score"] = ckpt.pop("best_val_acc")
    for key, kind in REQUIRED.items():
        if not isinstance(ckpt.get(key), kind):
            raise UserError(f"checkpoint {path} lacks a valid '{key}' entry (damaged or edited); "
                            "use another checkpoint, e.g. last.pt of the same run")
    data_keys = {f.name for f in fields(DataInfo)}
    needed = data_keys - {"class_counts"}  # checkpoints from before train.class_weights lack class_counts
    if not needed <= set(ckpt["data"]) <= data_keys:
        raise UserError(f"checkpoint {path} has a 'data' entry with keys {sorted(ckpt['data'])}, not "
                        f"{sorted(data_keys)}; use another checkpoint")
    for name, weight in ckpt["model"].items():
        if not isinstance(weight, torch.Tensor):
            raise UserError(f"checkpoint {path}: model entry '{name}' is not a tensor; use another checkpoint")
        if weight.is_floating_point() and not torch.isfinite(weight).all():
            raise UserError(f"checkpoint {path} has NaN or infinite weights in '{name}': the run diverged before "
                            "it was saved; use an earlier checkpoint or train again with a lower train.lr")


def config_of(ckpt: dict) -> Config:
    """The run's config; keys added to config.yaml since the checkpoint was saved take their defaults."""
    return config_from_dict(with_defaults(ckpt["config"]))


def data_of(ckpt: dict) -> DataInfo:
    """The description of the data the checkpoint's model was trained on."""
    return DataInfo(**ckpt["data"])


def new_model(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    """A freshly initialised model for data shaped like info."""
    return build_model(cfg, info.in_channels, len(info.class_names), info.image_size)


def model_from_checkpoint(ckpt: dict, device: torch.device) -> nn.Module:
    """Rebuild the model from the config and data shape stored in the checkpoint, and load its weights."""
    model = new_model(config_of(ckpt).model, data_of(ckpt))
    check_shapes(model.state_dict(), ckpt["model"])
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def check_shapes(expected: dict, found: dict) -> None:
    """Name mismatched layers instead of PyTorch's long size-mismatch dump."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and expected[k].shape != found[k].shape]
    if missing or extra or wrong:
        parts = [f"{k}: model {tuple(expected[k].shape)} vs checkpoint {tuple(found[k].shape)}" for k in wrong[:3]]
        parts += [f"missing {', '.join(missing[:3])}"] if missing else []
        parts += [f"unexpected {', '.join(extra[:3])}"] if extra else []
        raise UserError(f"checkpoint weights do not fit the model ({'; '.join(parts)}); "
                        "was it trained with a different model.py or config?")


def latest_run(output_dir: str | Path) -> Path:
    """The run folder under output_dir whose last.pt was written most recently."""
    runs = [p.parent for p in Path(output_dir).glob("*/last.pt")]
    if not runs:
        raise UserError(f"no runs with a last.pt under {output_dir}/; train one with python train.py "
                        "or pass a checkpoint path")
    return max(runs, key=lambda run: (run / "last.pt").stat().st_mtime)


def resolve(path: str | None, output_dir: str | Path, filename: str) -> Path:
    """A checkpoint path from a file, a run folder (-> its filename), or nothing (-> the latest run's)."""
    if path is None:
        return latest_run(output_dir) / filename
    return Path(path) / filename if Path(path).is_dir() else Path(path)


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
    except Exception:  # unpickling, truncation and format errors all mean the same here
        raise UserError(f"model.pretrained: {path} is not a state dict or checkpoint readable with "
                        "weights_only=True; save one with torch.save(model.state_dict(), path)") from None
    if isinstance(loaded, dict) and loaded.get("format_version") == FORMAT_VERSION:  # a run of this template
        info = data_of(loaded)
        return Pretrained(loaded["model"], str(path), info.mean, info.std, info.image_size, info.class_names)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):  # e.g. Lightning's
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"model.pretrained: {path} holds no state dict (a mapping of layer names to tensors)")
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
                            "PATH") from None
    transforms = weights.transforms()  # the preprocessing the weights were trained with
    state = torch.load(path, map_location="cpu", weights_only=True)
    return Pretrained(state, str(path), list(transforms.mean), list(transforms.std), transforms.crop_size[0])


def with_image_size(cfg: Config, pretrained_size: int | None) -> Config:
    """data.image_size=auto resolved for folder data: the pretrained weights' size, else 32."""
    if cfg.data.image_size != "auto" or cfg.data.name != "folder":
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
