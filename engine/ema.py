"""An exponential moving average of the weights (train.ema_decay): torch.optim.swa_utils.AveragedModel
with its EMA averaging function, batch-norm statistics averaged with the weights (use_buffers=True).

    ema_t = decay * ema_(t-1) + (1 - decay) * w_t     every train.ema_every steps (the first copies w)

With it on, validation, best.pt and everything that reads a checkpoint's `model` use the average;
the checkpoint keeps the trained weights in `trained_model` for --resume.
"""
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from engine.config import TrainConfig


def make_ema(model: nn.Module, cfg: TrainConfig, resume: dict | None) -> AveragedModel | None:
    """The average of model's weights (as the resumed run left it), or None when train.ema_decay is 0."""
    if cfg.ema_decay == 0:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    if resume is not None and "ema_updates" in resume:
        ema.module.load_state_dict(resume["model"])
        ema.n_averaged.fill_(resume["ema_updates"])
    return ema


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
