"""The one checkpoint format: plain types only, written atomically, read with weights_only=True.

A checkpoint is a dict with:
  format_version, model (state dict of the unwrapped model), optimizer, scheduler, scaler,
  amp (the precision run.amp resolved to: none | bf16 | fp16),
  epoch (completed epochs), best_val_acc, bad_epochs, history (one dict per epoch),
  config (the resolved config as a dict), data (class_names, in_channels, image_size, mean, std),
  rng (per process, in rank order: torch's CPU random state, Python's, and CUDA's when used).
"""
import pickle
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from config import Config, UserError, config_from_dict, with_defaults
from datasets import DataInfo
from model import ModelConfig, build_model

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
REQUIRED = {"model": dict, "config": dict, "data": dict, "epoch": int, "history": list, "best_val_acc": float}


def check_contents(ckpt: dict, path: Path) -> None:
    """Every required entry present with its type, the data description complete, every weight finite."""
    for key, kind in REQUIRED.items():
        if not isinstance(ckpt.get(key), kind):
            raise UserError(f"checkpoint {path} lacks a valid '{key}' entry (damaged or edited); "
                            "use another checkpoint, e.g. last.pt of the same run")
    data_keys = {f.name for f in fields(DataInfo)}
    if set(ckpt["data"]) != data_keys:
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
