"""An exponential moving average of the weights (train.ema_decay): torch.optim.swa_utils.AveragedModel
with a warmed-up EMA averaging function, batch-norm statistics averaged with the weights (use_buffers=True).

    ema_t = d_t * ema_(t-1) + (1 - d_t) * w_t     every train.ema_every steps (the first copies w),
    d_t = min(decay, (1 + t) / (10 + t))          t = the updates so far (timm's and TensorFlow's warm-up)

Without the warm-up a short run evaluates mostly its random start: 0.99^32 = 72 % of a 33-step average is its
first weights. A run with fewer optimizer steps than train.ema_every would never update the average, so it is
refused before it starts (engine/needs.py).

With it on, validation, best.pt and everything that reads a checkpoint's `model` use the average;
the checkpoint keeps the trained weights in `trained_model` for --resume.
"""
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from engine.config import TrainConfig


def make_ema(model: nn.Module, cfg: TrainConfig, resume: dict | None) -> AveragedModel | None:
    """The average of model's weights (as the resumed run left it), or None when train.ema_decay is 0."""
    if cfg.ema_decay == 0:
        return None
    ema = AveragedModel(model, multi_avg_fn=warmed_up(cfg.ema_decay), use_buffers=True)
    if resume is not None and "ema_updates" in resume:
        ema.module.load_state_dict(resume["model"])
        ema.n_averaged.fill_(resume["ema_updates"])
    return ema


def decay_at(decay: float, updates: int) -> float:
    """The decay of the update after `updates` earlier ones: (1 + t) / (10 + t) until it reaches train.ema_decay."""
    return min(decay, (1 + updates) / (10 + updates))


def warmed_up(decay: float):
    """AveragedModel's multi_avg_fn: ema <- d_t * ema + (1 - d_t) * w for each tensor of one device and dtype."""
    @torch.no_grad()
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        weight = 1 - decay_at(decay, int(updates))  # AveragedModel has synced on its count already
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, weight)
        else:  # num_batches_tracked
            for mean, value in zip(averaged, current):
                mean.copy_(mean * (1 - weight) + value * weight)
    return average


def update(ema: AveragedModel | None, model: nn.Module, step: int, every: int) -> None:
    """Fold the weights after optimizer step number `step` (1, 2, ...) into the average, every `every` steps."""
    if ema is not None and step % every == 0:
        ema.update_parameters(model)


def evaluated(model: nn.Module, ema: AveragedModel | None) -> nn.Module:
    """What validation evaluates and the checkpoint's `model` holds: the average when there is one."""
    return model if ema is None else ema.module


def checkpoint_entries(model: nn.Module, ema: AveragedModel | None) -> dict:
    """With EMA on, the trained weights and the update count beside the average in `model`."""
    if ema is None:
        return {}
    return {"trained_model": model.state_dict(), "ema_updates": int(ema.n_averaged)}
