"""The optimizer and learning-rate schedule that train.* names."""
import torch

from engine.config import TrainConfig

def make_optimizer(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """On CUDA the fused kernels: one launch per step, and the fp16 scaler checks for inf without a host sync."""
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
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
    return schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)

