"""The optimizers and learning-rate schedules train.optimizer and train.scheduler name: OPTIMIZERS and
SCHEDULERS, one function each with the train.* keys it reads declared beside it (docs/extend.md).

An optimizer is built as build(groups, cfg, fused) -> torch.optim.Optimizer, where groups are the
parameter groups (each with its own "lr" under model.pretrained) and fused asks for the fused CUDA kernels;
a schedule as build(optimizer, cfg, steps_per_epoch) -> LRScheduler, stepped after every optimizer step.
"""
import functools

import torch

from engine.registry import Part

DEFAULT_MOMENTUM = 0.9  # train.momentum=auto: SGD's momentum and Adam's beta1, cycled by onecycle


def momentum(cfg) -> float:
    return DEFAULT_MOMENTUM if cfg.momentum == "auto" else cfg.momentum


def sgd(groups: list[dict], cfg, fused: bool) -> torch.optim.Optimizer:
    """w <- w - lr * (dJ/dw + momentum buffer); momentum 0 is the notes' plain gradient descent."""
    return torch.optim.SGD(groups, cfg.lr, momentum=momentum(cfg), weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov, fused=fused)


def adam(groups: list[dict], cfg, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, cfg.lr, betas=(momentum(cfg), 0.999), weight_decay=cfg.weight_decay, fused=fused)


def adamw(groups: list[dict], cfg, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, cfg.lr, betas=(momentum(cfg), 0.999), weight_decay=cfg.weight_decay,
                             fused=fused)


OPTIMIZERS = {
    "sgd": Part(sgd, reads=("momentum", "nesterov")),
    "adam": Part(adam, reads=("momentum",)),  # as beta1, the average of the gradients
    "adamw": Part(adamw, reads=("momentum",)),
}


def make_optimizer(groups: list[dict], cfg, device: torch.device) -> torch.optim.Optimizer:
    """On CUDA the fused kernels: one launch per step, and the fp16 scaler checks for inf without a host sync."""
    return OPTIMIZERS[cfg.optimizer].build(groups, cfg, device.type == "cuda")


def constant(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def step(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_epochs * steps_per_epoch, cfg.step_gamma)


def cosine(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)


def onecycle(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """Each group's peak is its own rate. The momentum (Adam's beta1) cycles 0.95 -> 0.85 -> 0.95 only when
    train.momentum=auto leaves it to the schedule; a value the user set stays as set."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, [group["lr"] for group in optimizer.param_groups],
                                               total_steps=cfg.epochs * steps_per_epoch,
                                               cycle_momentum=cfg.momentum == "auto")


def linear(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(linear_factor,
                                                                          total=cfg.epochs * steps_per_epoch))


SCHEDULERS = {
    "none": Part(constant),
    "step": Part(step, reads=("step_epochs", "step_gamma")),
    "cosine": Part(cosine),
    "onecycle": Part(onecycle, reads=("momentum",)),
    "linear": Part(linear),
}
FIXED_SCHEDULES = ("cosine", "onecycle", "linear")  # laid out over train.epochs: epochs cannot change on --resume


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """The learning-rate schedule, stepped after every optimizer step (steps_per_epoch of them an epoch)."""
    return SCHEDULERS[cfg.scheduler].build(optimizer, cfg, steps_per_epoch)


# airbench94's schedule: from lr * START up to lr over the first WARMUP of the steps, then straight down to lr * END.
LINEAR_START, LINEAR_WARMUP, LINEAR_END = 0.2, 0.23, 0.07


def linear_factor(step: int, total: int) -> float:
    """The factor on train.lr at optimizer step `step` (0 .. total) of the linear schedule."""
    warmup = max(1, int(total * LINEAR_WARMUP))
    if step < warmup:
        return LINEAR_START + (1 - LINEAR_START) * step / warmup
    return 1 + (LINEAR_END - 1) * (step - warmup) / max(1, total - warmup)
