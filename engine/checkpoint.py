"""The one checkpoint format: plain types only, written atomically, read with weights_only=True.

A checkpoint is a dict with:
  format_version, model (state dict of the unwrapped model), optimizer, scheduler, scaler,
  amp (the precision run.amp resolved to: none | bf16 | fp16),
  epoch (completed epochs), best_score (of train.best_metric), bad_epochs, history (one dict per epoch),
  config (the resolved config as a dict), data (class_names, in_channels, image_size, mean, std,
  class_counts), new_layers (with model.pretrained: the state-dict keys that did not come from it),
  rng (per process, in rank order: torch's CPU random state, Python's, and CUDA's when used),
  calibration (best.pt once training ended, or after test.py --calibrate; absent before: temperature 1):
  temperature (T > 0, the logits are divided by it before the softmax) and the fit's numbers
  (engine/calibration.py calibration_entry).

engine/finetune.py reads other people's weights (model.pretrained).
"""
import pickle
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from engine.config import Config, config_from_dict, to_dict, with_defaults
from engine.datasets import DataInfo
from engine.devices import AMP_NAMES
from engine.distributed import gather, rank_and_world
from engine.errors import UserError, refusal, shown
from engine.storage import RunLock, atomic_save
from model import build_model

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
    except OSError as err:
        reason = refusal(err)
        raise UserError(f"checkpoint {path} cannot be read ({reason}); check that it is readable" if reason
                        else unreadable(path)) from None
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
    needed = data_keys - {"class_counts", "held_out", "multilabel", "thresholds"}  # older checkpoints lack these
    if not needed <= set(ckpt["data"]) <= data_keys:
        raise UserError(f"checkpoint {path} has a 'data' entry with keys {shown(sorted(map(str, ckpt['data'])))}, "
                        f"not {sorted(data_keys)}; use another checkpoint")
    check_data(ckpt["data"], path)
    for name, weight in ckpt["model"].items():
        if not isinstance(weight, torch.Tensor):
            raise UserError(f"checkpoint {path}: model entry '{name}' is not a tensor; use another checkpoint")
        if weight.is_floating_point() and not torch.isfinite(weight).all():
            raise UserError(f"checkpoint {path} has NaN or infinite weights in '{name}': the run diverged before "
                            "it was saved; use an earlier checkpoint or train again with a lower train.lr")


def check_data(data: dict, path: Path) -> None:
    """The data description's types: what every reader indexes, sizes and normalises with."""
    def numbers(values, count=None) -> bool:
        return isinstance(values, list) and all(type(v) in (int, float) for v in values) and (
            count is None or len(values) == count)
    channels, names = data["in_channels"], data["class_names"]
    fine = (type(channels) is int and channels in (1, 3) and type(data["image_size"]) is int
            and 1 <= data["image_size"] <= 65535 and isinstance(names, list) and len(names) >= 2
            and all(isinstance(n, str) for n in names) and numbers(data["mean"], channels)
            and numbers(data["std"], channels) and all(v > 0 for v in data["std"])
            and numbers(data.get("class_counts", []), None))
    if not fine:
        raise UserError(f"checkpoint {path} has a damaged 'data' entry (class names, channels, image size, mean "
                        "and std); use another checkpoint, e.g. last.pt of the same run")


def config_of(ckpt: dict) -> Config:
    """The run's config; keys added to config.yaml since the checkpoint was saved take their defaults."""
    return config_from_dict(with_defaults(ckpt["config"]))


def data_of(ckpt: dict) -> DataInfo:
    """The description of the data the checkpoint's model was trained on."""
    return DataInfo(**ckpt["data"])


def model_from_checkpoint(ckpt: dict, device: torch.device) -> nn.Module:
    """Rebuild the model from the config and data shape stored in the checkpoint, and load its weights."""
    info = data_of(ckpt)
    model = build_model(config_of(ckpt).model, info.in_channels, len(info.class_names), info.image_size)
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


def run_checkpoints(folder: str | Path) -> list[str]:
    """The checkpoint files (*.pt) in folder: the one test of whether a folder holds a run, which nothing
    may overwrite (train.py) and which a command line takes as the checkpoint (test.py --predict)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.glob("*.pt") if p.is_file()) if folder.is_dir() else []


def resolve(path: str | None, output_dir: str | Path, filename: str) -> Path:
    """A checkpoint path from a file, a run folder (-> its filename), or nothing (-> the latest run's)."""
    if path is None:
        return latest_run(output_dir) / filename
    return Path(path) / filename if Path(path).is_dir() else Path(path)


@dataclass
class RunState:
    """The run's progress; stored at the top level of every checkpoint."""
    epoch: int = 0  # completed epochs
    best_score: float = -1.0  # the best validation value of train.best_metric so far
    bad_epochs: int = 0  # epochs since the last improvement, for early stopping
    history: list[dict] = field(default_factory=list)  # one metrics row per epoch


def checkpoint_dict(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, state: RunState, **about) -> dict:
    """The checkpoint of this moment, as plain data; about: amp (autocast dtype), config, data, new_layers.
    Every process calls it (it gathers each one's random state, in rank order)."""
    device = next(model.parameters()).device
    rng = {"torch": gather(torch.get_rng_state()), "python": gather(random.getstate()),
           "cuda": gather(torch.cuda.get_rng_state(device) if device.type == "cuda" else None)}
    return {"format_version": FORMAT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "amp": AMP_NAMES[about["amp"]],
            **asdict(state), "config": to_dict(about["config"]), "data": asdict(about["data"]),
            "new_layers": about["new_layers"], "rng": rng}


def save_checkpoint(ckpt: dict, run_dir: Path, improved: bool) -> None:
    """best.pt if improved, then last.pt (always last: the file --resume continues from)."""
    if improved:
        atomic_save(ckpt, run_dir / "best.pt")
    atomic_save(ckpt, run_dir / "last.pt")


def restore(ckpt: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler) -> RunState:
    """Load everything the next epoch depends on from a checkpoint; returns the run's progress."""
    model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))  # with EMA, `model` is the average
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"]:  # empty when the scaler was disabled
        scaler.load_state_dict(ckpt["scaler"])
    rng, (rank, world) = ckpt["rng"], rank_and_world()  # rng holds one state per process
    if len(rng["torch"]) != world:
        print(f"note: resuming a {len(rng['torch'])}-process run with {world}: each process's share of the "
              "data changes and dropout is reseeded, so the numbers differ from an uninterrupted run")
    else:
        torch.set_rng_state(rng["torch"][rank])
        random.setstate(rng["python"][rank])
        cuda_state, device = rng["cuda"][rank], next(model.parameters()).device  # a list in old checkpoints: skipped
        if isinstance(cuda_state, torch.Tensor) and device.type == "cuda":
            torch.cuda.set_rng_state(cuda_state, device)
    return RunState(**{f.name: ckpt[f.name] for f in fields(RunState)})


def temperature_of(ckpt: dict, path: Path) -> float:
    """The temperature that divides the checkpoint's logits: its fitted one, or 1 when it was never fitted."""
    calibration = ckpt.get("calibration")
    if calibration is None:
        return 1.0
    value = calibration.get("temperature") if isinstance(calibration, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        shown = repr(value)[:40]
        raise UserError(f"checkpoint {path} has calibration temperature {shown}; it must be a number above 0 "
                        f"(the logits are divided by it); fit it again with python test.py {path} --calibrate")
    return float(value)


def store_calibration(path: Path, entry: dict) -> None:
    """Write the calibration entry into the checkpoint at path (atomically), under the run folder's lock."""
    with RunLock(path.parent):
        ckpt = load_checkpoint(path)
        ckpt["calibration"] = entry
        atomic_save(ckpt, path)
