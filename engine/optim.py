"""The optimizer and learning-rate schedule that train.* names."""
import functools

import torch

from engine.config import TrainConfig

def make_optimizer(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """On CUDA the fused kernels: one launch per step, and the fp16 scaler checks for inf without a host sync."""
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov, fused=fused)
    optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return optimizer(groups, cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A learning-rate schedule stepped after every batch."""
    schedulers = torch.optim.lr_scheduler
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "step":
        return schedulers.StepLR(optimizer, cfg.step_epochs * steps_per_epoch, cfg.step_gamma)
    if cfg.scheduler == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, total)
    if cfg.scheduler == "onecycle":  # each group's peak is its own rate
        return schedulers.OneCycleLR(optimizer, [group["lr"] for group in optimizer.param_groups], total_steps=total)
    if cfg.scheduler == "linear":
        return schedulers.LambdaLR(optimizer, functools.partial(linear_factor, total=total))
    return schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)


# airbench94's schedule: from lr * START up to lr over the first WARMUP of the steps, then straight down to lr * END.
LINEAR_START, LINEAR_WARMUP, LINEAR_END = 0.2, 0.23, 0.07


def linear_factor(step: int, total: int) -> float:
    """The factor on train.lr at optimizer step `step` (0 .. total) of the linear schedule."""
    warmup = max(1, int(total * LINEAR_WARMUP))
    if step < warmup:
        return LINEAR_START + (1 - LINEAR_START) * step / warmup
    return 1 + (LINEAR_END - 1) * (step - warmup) / max(1, total - warmup)

