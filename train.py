"""Train a model: data, forward pass, loss, backpropagation, gradient step; log, checkpoint, test.

    python train.py                                          # default CNN on the embedded digits
    python train.py train.lr=0.01 model.activation=tanh      # dotted overrides of config.yaml
    python train.py data.name=mnist data.root=../shared/datasets train.epochs=2
    python train.py --resume                                 # continue the most recent run
"""
import csv
import itertools
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import distributed
from checkpoint import (FORMAT_VERSION, Pretrained, data_of, load_checkpoint, load_pretrained, new_model,
                        read_pretrained, resolve, with_image_size)
from cli import (AMP_DTYPES, check_interrupted, make_parser, require_deterministic_cublas, resolve_amp, run_cli,
                 seed_everything, select_device)
from config import (Config, RunConfig, TrainConfig, UserError, apply_override, changed_keys, config_from_dict,
                    load_config, read_yaml, to_dict, to_yaml, with_defaults)
from datasets import DataInfo, Loader, make_train_loaders
from distributed import all_reduce_sum, broadcast_buffers, from_main, gather, is_main, rank_and_world
from metrics import LossFn, class_weights, evaluate, evaluate_checkpoint, make_loss
from model import class_layers
from plots import plot_curves
from storage import RunFolderInUse, RunLock, atomic_save, make_folder, remove_stale_temporaries, \
    replacing, write_text

# Keys a resumed run may change; anything else would make it a different experiment.
RESUMABLE = ("train.epochs", "train.patience", "train.log_interval", "train.eval_batch_size", "run.device",
             "log.tensorboard")


def param_groups(model: torch.nn.Module, new_layers: list[str] | None, cfg: TrainConfig) -> list[dict]:
    """One group of all parameters; with pretrained weights (new_layers not None) the new layers at
    train.lr and the pretrained ones at train.lr * train.backbone_lr (discriminative rates)."""
    if new_layers is None:
        return [{"params": list(model.parameters()), "lr": cfg.lr}]
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n in new_layers], "lr": cfg.lr},
              {"params": [p for n, p in named if n not in new_layers], "lr": cfg.lr * cfg.backbone_lr}]
    return [group for group in groups if group["params"]]


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


@dataclass
class Stepper:
    """Turns a batch's loss into a weight update: backpropagation, clipping, optimizer and schedule."""
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # fp16 only; a pass-through when disabled
    amp_dtype: torch.dtype | None
    grad_clip: float
    frozen_norms: list[torch.nn.Module] = field(default_factory=list)  # batch norms kept in eval mode (frozen)

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def update(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # backpropagation: dJ/dw for every weight
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)  # w <- w - lr * dJ/dw (plus momentum / Adam's scaling)
        self.scaler.update()
        self.scheduler.step()


def train_one_epoch(model: torch.nn.Module, loader: Loader, step: Stepper, cfg: TrainConfig,
                    epoch: int) -> tuple[float, float]:
    """One pass over the training batches; returns mean loss and accuracy."""
    model.train()
    for norm in step.frozen_norms:  # frozen layers keep their running statistics
        norm.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None if is_main() else True)
    for batch, (images, targets) in enumerate(bar, 1):
        with step.autocast(device):
            logits = model(images)  # forward pass: (B, num_classes)
            loss = step.loss_fn(logits, targets)  # error
        step.update(loss, model)
        check_interrupted()
        labels = targets if targets.ndim == 1 else targets.argmax(1)  # MixUp/CutMix: the larger share
        loss_sum += loss.detach().float() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if batch % cfg.log_interval == 0 or batch == len(loader):  # the only host syncs in the loop
            check_finite(loss_sum.item(), epoch, batch, step.optimizer)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
    totals = all_reduce_sum(torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen, device=device)]))
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()  # over all processes' shares


AMP_NAMES = {dtype: name for name, dtype in AMP_DTYPES.items()}


def apply_switches(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Module,
                                                                                         torch.dtype | None]:
    """Speed switches and DDP: returns the model to call (wrapped, compiled or itself) and the autocast dtype."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    is_cuda = device.type == "cuda"
    if cfg.cudnn_benchmark and not is_cuda:
        print(f"note: run.cudnn_benchmark has no effect on {device.type.upper()}; ignored")
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and is_cuda
    amp, reason = resolve_amp(cfg.amp, device)
    print(f"amp: {cfg.amp} -> {amp} ({reason})")
    return wrap(model, cfg, device), AMP_DTYPES[amp]


def wrap(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """What the training step calls: DDP under torchrun (over the parameters that train now), compiled if asked."""
    if rank_and_world()[1] > 1:  # under torchrun: average gradients across processes
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # dynamic=False: one graph for the one batch shape (the loader drops the short last batch when compiling)
    return torch.compile(model, dynamic=False) if cfg.compile else model


def check_finite(loss_sum: float, epoch: int, step: int, optimizer: torch.optim.Optimizer) -> None:
    if not math.isfinite(loss_sum):
        lr = optimizer.param_groups[0]["lr"]
        raise UserError(f"the loss became NaN or infinite in epoch {epoch} by batch {step} (lr {lr:.2e}); "
                        "lower train.lr or set train.grad_clip; best.pt is unchanged")


def claim(run_dir: Path) -> RunLock:
    """Lock the run folder for this process, and remove temporary files a killed run left in it."""
    lock = RunLock(run_dir).acquire()
    removed = remove_stale_temporaries(run_dir)
    if removed:
        print(f"note: removed {', '.join(removed)} left in {run_dir} by an interrupted run")
    return lock


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists()


def make_run_dir(cfg: Config, explicit_name: bool = False) -> tuple[Path, RunLock]:
    """A new run folder, locked. A name given on the command line that already holds a run is refused;
    any other name (the default, or one from a config file such as a run's saved config.yaml) gets the
    next free -2, -3, ... suffix instead, so nothing is ever overwritten."""
    output_dir = make_folder(cfg.run.output_dir, "run.output_dir")
    name = cfg.run.name or f"{cfg.data.name}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in itertools.count(1):
        run_dir = output_dir / (name if suffix == 1 else f"{name}-{suffix}")
        make_folder(run_dir, "run.output_dir")
        if run_dir.resolve().parent != output_dir.resolve():
            raise UserError(f"run folder {run_dir} is a link to {run_dir.resolve()}, outside run.output_dir; "
                            "remove the link or pick another run.name")
        try:
            lock = claim(run_dir)
        except RunFolderInUse:
            if explicit_name:
                raise
            continue
        if not holds_run(run_dir):
            if suffix > 1:
                print(f"note: {output_dir / name} already holds a run; this one goes to {run_dir}")
            return run_dir, lock
        lock.release()
        if explicit_name:
            raise UserError(f"run folder {run_dir} already holds a run; pick another run.name "
                            f"or continue it with --resume {run_dir}")


def resumed_config(ckpt: dict, overrides: list[str]) -> Config:
    """The checkpoint's config plus overrides that do not change the experiment."""
    return overridden(ckpt["config"], overrides)


def overridden(saved: dict, overrides: list[str]) -> Config:
    """A run's saved config plus overrides of the keys a resumed run may change."""
    if not isinstance(saved, dict):
        raise UserError("the run's saved config is not a mapping of keys; start a new run instead")
    raw = with_defaults(saved)
    for text in overrides:
        key = text.partition("=")[0]
        if key not in RESUMABLE:
            raise UserError(f"override {key!r} cannot change on --resume (it would be a different run); "
                            f"allowed: {', '.join(RESUMABLE)}")
        apply_override(raw, text)
    cfg = config_from_dict(raw)
    if cfg.train.epochs != saved["train"]["epochs"] and cfg.train.scheduler in ("cosine", "onecycle"):
        raise UserError(f"train.epochs cannot change on --resume with train.scheduler={cfg.train.scheduler}: its "
                        "schedule is laid out over the original epochs; start a new run instead")
    if overrides:
        print(f"resuming with {' '.join(overrides)} (recorded in the run's config.yaml)")
    return cfg


def write_metrics(history: list[dict], run_dir: Path) -> None:
    """metrics.csv and curves.png, rewritten from the full history every epoch.

    The columns are the latest row's: epochs resumed from an older checkpoint leave the newer columns empty."""
    with replacing(run_dir / "metrics.csv", binary=False) as f:
        writer = csv.DictWriter(f, fieldnames=list(history[-1]), restval="")
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, run_dir / "curves.png")


def epoch_line(row: dict, epochs: int, improved: bool) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:6.2f}%"
            f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:6.2f}%"
            f" bal {100 * row['val_balanced_acc']:6.2f}% f1 {100 * row['val_macro_f1']:6.2f}%  lr {row['lr']:.2e}"
            f"  {row['seconds']:5.1f}s{'  *best' if improved else ''}")


# train.best_metric -> its column in metrics.csv
METRIC_COLUMNS = {"accuracy": "val_acc", "balanced_accuracy": "val_balanced_acc", "macro_f1": "val_macro_f1"}


@dataclass
class RunState:
    """The run's progress; stored at the top level of every checkpoint."""
    epoch: int = 0  # completed epochs
    best_score: float = -1.0  # the best validation value of train.best_metric so far
    bad_epochs: int = 0  # epochs since the last improvement, for early stopping
    history: list[dict] = field(default_factory=list)  # one metrics row per epoch


@dataclass
class Run:
    """Everything the epoch loop reads and updates."""
    cfg: Config
    run_dir: Path
    model: torch.nn.Module  # unwrapped: evaluated and saved
    trained_model: torch.nn.Module  # what the training step calls: compiled, or the model itself
    step: Stepper
    info: DataInfo
    state: RunState
    new_layers: list[str] | None  # with model.pretrained: the keys that did not come from it; else None
    writer: object = None  # a TensorBoard SummaryWriter when log.tensorboard is on


def build_model(cfg: Config, info: DataInfo, device: torch.device) -> torch.nn.Module:
    """A fresh model on the device; under torchrun on CUDA with synchronised batch norm if asked."""
    model = new_model(cfg.model, info).to(device)
    if cfg.model.sync_batchnorm and rank_and_world()[1] > 1:
        if cfg.run.compile:  # a known torch.compile failure / graph-break case with DDP
            raise UserError("run.compile with model.sync_batchnorm under torchrun is not supported; "
                            "turn one of them off")
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics over all processes' batches
        else:
            print("note: model.sync_batchnorm needs CUDA; on CPU each process keeps its own batch-norm statistics")
    return model


def make_stepper(groups: list[dict], cfg: TrainConfig, loss_fn: LossFn, amp_dtype: torch.dtype | None,
                 steps_per_epoch: int) -> Stepper:
    """Optimizer, schedule and gradient scaler for a fresh run."""
    optimizer = make_optimizer(groups, cfg, groups[0]["params"][0].device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # fp16 runs on CUDA only
    return Stepper(loss_fn, optimizer, make_scheduler(optimizer, cfg, steps_per_epoch), scaler, amp_dtype,
                   cfg.grad_clip)


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
    model = build_model(cfg, info, device)
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


def restore(ckpt: dict, model: torch.nn.Module, step: Stepper, device: torch.device) -> RunState:
    """Load everything the next epoch depends on from a checkpoint; returns the run's progress."""
    model.load_state_dict(ckpt["model"])
    step.optimizer.load_state_dict(ckpt["optimizer"])
    step.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"]:  # empty when the scaler was disabled
        step.scaler.load_state_dict(ckpt["scaler"])
    rng, (rank, world) = ckpt["rng"], rank_and_world()  # rng holds one state per process
    if len(rng["torch"]) != world:
        print(f"note: resuming a {len(rng['torch'])}-process run with {world}: each process's share of the "
              "data changes and dropout is reseeded, so the numbers differ from an uninterrupted run")
    else:
        torch.set_rng_state(rng["torch"][rank])
        random.setstate(rng["python"][rank])
        cuda_state = rng["cuda"][rank]  # the state of the one device in use (a list in older checkpoints: skipped)
        if isinstance(cuda_state, torch.Tensor) and device.type == "cuda":
            torch.cuda.set_rng_state(cuda_state, device)
    return RunState(**{f.name: ckpt[f.name] for f in fields(RunState)})


def save_epoch(run: Run, improved: bool) -> None:
    """From rank 0: metrics.csv and curves.png, then best.pt if improved, then last.pt. last.pt is written
    last: whatever epoch it holds, every other file already has that epoch, so a run killed at any point
    resumes from last.pt and ends with all its files."""
    device = next(run.model.parameters()).device
    rng = {"torch": gather(torch.get_rng_state()), "python": gather(random.getstate()),
           "cuda": gather(torch.cuda.get_rng_state(device) if device.type == "cuda" else None)}
    if not is_main():
        return
    ckpt = {"format_version": FORMAT_VERSION, "model": run.model.state_dict(),
            "optimizer": run.step.optimizer.state_dict(), "scheduler": run.step.scheduler.state_dict(),
            "scaler": run.step.scaler.state_dict(), "amp": AMP_NAMES[run.step.amp_dtype], **asdict(run.state),
            "config": to_dict(run.cfg), "data": asdict(run.info), "new_layers": run.new_layers, "rng": rng}
    write_metrics(run.state.history, run.run_dir)
    if improved:
        atomic_save(ckpt, run.run_dir / "best.pt")
    atomic_save(ckpt, run.run_dir / "last.pt")


def run_epoch(run: Run, train_loader: Loader, val_loader: Loader, epoch: int) -> None:
    """Train one epoch, validate, update the state, save, print one line."""
    start = time.perf_counter()
    if run.cfg.train.freeze_epochs and epoch == run.cfg.train.freeze_epochs + 1:
        run.step.frozen_norms = freeze(run.model, run.new_layers, False)
        run.trained_model = wrap(run.model, run.cfg.run, val_loader.device)  # DDP over the unfrozen parameters too
        print(f"epoch {epoch}: training all layers from now on (pretrained ones at train.lr x "
              f"{run.cfg.train.backbone_lr})")
    train_loader.set_epoch(epoch)
    train_loss, train_acc = train_one_epoch(run.trained_model, train_loader, run.step, run.cfg.train, epoch)
    broadcast_buffers(run.model)  # every process evaluates the weights rank 0 saves
    device = val_loader.device
    val = evaluate(run.model, val_loader, len(run.info.class_names), device, run.step.amp_dtype, run.cfg.train.loss,
                   class_weights(run.cfg.train, run.info.class_counts, device))  # the loss test.py reports
    row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val["loss"],
           "val_acc": val["accuracy"], "val_balanced_acc": val["balanced_accuracy"], "val_macro_f1": val["macro_f1"],
           "lr": run.step.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 2)}
    score = row[METRIC_COLUMNS[run.cfg.train.best_metric]]
    improved = score > run.state.best_score
    run.state = RunState(epoch, max(score, run.state.best_score),
                         0 if improved else run.state.bad_epochs + 1, run.state.history + [row])
    save_epoch(run, improved)
    check_interrupted()
    if run.writer is not None:
        for key, value in row.items():
            run.writer.add_scalar(key, value, epoch)
        run.writer.flush()
    print(epoch_line(row, run.cfg.train.epochs, improved))


def summary_writer_class() -> type:
    """TensorBoard's SummaryWriter, or a clear error when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("log.tensorboard is true but the tensorboard package is not installed; "
                        "pip install tensorboard, or set log.tensorboard=false") from None
    return SummaryWriter


def header(run: Run, train_loader: Loader, val_loader: Loader) -> str:
    """What a person checks before the first epoch: device, data, model, changed keys, run folder."""
    info, world = run.info, rank_and_world()[1]
    parameters = sum(p.numel() for p in run.model.parameters())
    changed = " ".join(changed_keys(run.cfg)) or "none"
    return (f"device: {train_loader.device}{f' x {world} processes' if world > 1 else ''}\n"
            f"data: {run.cfg.data.name}, {len(train_loader.labels)} train / {len(val_loader.labels)} val images "
            f"of {info.in_channels}x{info.image_size}x{info.image_size}, {len(info.class_names)} classes\n"
            f"model: {run.cfg.model.name}, {parameters:,} parameters\n"
            f"changed from config.yaml: {changed}\n"
            f"run folder: {run.run_dir} (full config in its config.yaml)")


def check_batch_size(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Batch norm needs two images per batch to compute statistics (a lone last image joins the batch before)."""
    if cfg.batch_size < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError("train.batch_size=1 with a batch-norm model: batch norm needs at least 2 images per batch; "
                        "raise train.batch_size (or, for model.name=cnn, set model.batch_norm=false)")


def take_run_dir(cfg: Config, run_dir: Path | None, explicit_name: bool) -> tuple[Config, Path, RunLock | None]:
    """The run folder, locked by rank 0: run_dir when continuing, else a new one; cfg is given its name."""
    lock = None
    if is_main():
        run_dir, lock = make_run_dir(cfg, explicit_name) if run_dir is None else (run_dir, claim(run_dir))
    run_dir = Path(from_main(str(run_dir) if is_main() else None))
    return replace(cfg, run=replace(cfg.run, name=run_dir.name)), run_dir, lock


def prepare_data(cfg: Config, resume: dict | None,
                 device: torch.device) -> tuple[Config, Pretrained | None, Loader, Loader, DataInfo]:
    """model.pretrained read first (a bad file fails before the data loads), data.image_size resolved from it,
    and the loaders, normalised as the resumed run was, as the pretrained weights were, or by the train split."""
    pretrained = read_pretrained(cfg.model) if resume is None else None
    cfg = with_image_size(cfg, pretrained and pretrained.image_size)
    if resume is not None:
        stats = data_of(resume).mean, data_of(resume).std
    else:
        stats = pretrained.stats() if pretrained else None
    return cfg, pretrained, *make_train_loaders(cfg, device, stats)


def train(cfg: Config, resume: dict | None = None, run_dir: Path | None = None,
          explicit_name: bool = False) -> Path:
    """Train per cfg (continuing the checkpoint `resume` in run_dir if given); returns the run folder."""
    device = distributed.setup(select_device(cfg.run.device))
    seed_everything(cfg.run.seed + rank_and_world()[0], cfg.run.deterministic)  # DDP copies rank 0's weights
    writer_class = summary_writer_class() if cfg.log.tensorboard else None
    cfg, pretrained, train_loader, val_loader, info = prepare_data(cfg, resume, device)
    model, new_layers, frozen_norms = setup_model(cfg, info, device, resume, pretrained)
    check_batch_size(model, cfg.train)
    trained_model, amp_dtype = apply_switches(model, cfg.run, device)
    loss_fn = make_loss(cfg.train.loss, class_weights(cfg.train, info.class_counts, device), cfg.train.label_smoothing)
    step = make_stepper(param_groups(model, new_layers, cfg.train), cfg.train, loss_fn, amp_dtype, len(train_loader))
    step.frozen_norms = frozen_norms
    state = RunState() if resume is None else restore(resume, model, step, device)
    cfg, run_dir, lock = take_run_dir(cfg, run_dir, explicit_name)
    run = Run(cfg, run_dir, model, trained_model, step, info, state, new_layers)
    try:
        if writer_class and is_main():
            run.writer = writer_class(str(run_dir / "tensorboard"))
        print(header(run, train_loader, val_loader))
        if is_main():
            write_text(run_dir / "config.yaml", to_yaml(cfg))
        for epoch in range(run.state.epoch + 1, cfg.train.epochs + 1):
            run_epoch(run, train_loader, val_loader, epoch)
            if cfg.train.patience and run.state.bad_epochs >= cfg.train.patience:
                print(f"early stop: no better val {cfg.train.best_metric} for {cfg.train.patience} epochs")
                break
    except KeyboardInterrupt:
        if is_main():
            launcher = "torchrun ... train.py" if rank_and_world()[1] > 1 else "python train.py"
            print(f"\nstopped; {run_dir / 'last.pt'} holds epoch {run.state.epoch}. "
                  f"Continue with: {launcher} --resume {run_dir}", file=sys.stderr)
        raise
    finally:
        if lock is not None:
            lock.release()
    return run_dir


def finished(ckpt: dict, cfg: Config) -> str:
    """Why the checkpoint's run has nothing left to do under cfg; '' if it has."""
    longer = ("start a new run to train longer" if cfg.train.scheduler in ("cosine", "onecycle")
              else "raise train.epochs to train on")
    if ckpt["epoch"] >= cfg.train.epochs:
        return f"all {cfg.train.epochs} epochs are done; {longer}"
    if cfg.train.patience and ckpt["bad_epochs"] >= cfg.train.patience:
        return (f"it stopped early after {ckpt['bad_epochs']} epochs without a better val {cfg.train.best_metric}; "
                "raise train.patience (0 = off) to train on")
    return ""


def to_resume(resume: str, config: str | None, overrides: list[str]) -> tuple[Config, dict | None, Path]:
    """What --resume continues: a run's last.pt, or a run folder killed before its first epoch ended,
    which starts again from its config.yaml."""
    path = resolve(resume or None, load_config(config, []).run.output_dir, "last.pt")
    if resume and Path(resume).is_dir() and not path.exists():
        if not (path.parent / "config.yaml").is_file():
            raise UserError(f"{path.parent} holds no checkpoint and no config.yaml: it was stopped before its "
                            "first file was written, so there is nothing to resume; start the run again with "
                            "the same command (the folder is reused)")
        print(f"note: {path.parent} has no completed epoch yet; starting it again from its config.yaml")
        return overridden(read_yaml(path.parent / "config.yaml"), overrides), None, path.parent
    if distributed.is_torchrun() and not path.is_file():
        raise UserError(f"rank {os.environ['RANK']} cannot find {path}: under torchrun on several machines "
                        "run.output_dir must be storage that every machine sees (e.g. NFS)")
    ckpt = load_checkpoint(path)
    return resumed_config(ckpt, overrides), ckpt, path.parent


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT_OR_RUN_FOLDER",
                        help="continue a run (default: the most recent one)")
    parser.add_argument("--print-config", action="store_true", help="print the full resolved config first")
    args = parser.parse_args(argv)
    ckpt, run_dir = None, None
    if args.resume is None:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg, ckpt, run_dir = to_resume(args.resume, args.config, args.overrides)
        if ckpt is not None and finished(ckpt, cfg):
            print(f"{run_dir} already finished: {finished(ckpt, cfg)}. Nothing was changed; "
                  f"test it with python test.py {run_dir}")
            return
    if cfg.run.deterministic:
        require_deterministic_cublas()
    if args.print_config:
        print(to_yaml(cfg))
    explicit_name = any(text.partition("=")[0] == "run.name" for text in args.overrides)
    try:
        run_dir = train(cfg, ckpt, run_dir, explicit_name and args.resume is None)
        show_test = is_main()
        distributed.barrier()
    finally:
        distributed.teardown()
    if show_test:  # one process, on the full test split
        best, _, test = evaluate_checkpoint(run_dir / "best.pt", select_device(cfg.run.device))
        print(f"test (best.pt, epoch {best['epoch']}): loss {test['loss']:.4f}  "
              f"accuracy {100 * test['accuracy']:.2f}%")


if __name__ == "__main__":
    run_cli(main)
