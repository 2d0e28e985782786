"""Train a CNN in the notes' three steps, then test the best checkpoint:

  1. data: load the images, hold out a validation split, normalise (and augment) them in batches
  2. model training, batch after batch: forward pass -> loss J -> backpropagation dJ/dw -> step w <- w - a*dJ/dw
  3. record loss and accuracy: one line, one metrics.csv row and a checkpoint per epoch

    python train.py                                          # default CNN on the embedded digits
    python train.py train.lr=0.01 model.activation=tanh      # dotted overrides of config.yaml
    python train.py data.name=mnist data.root=../shared/datasets train.epochs=2
    python train.py --resume                                 # continue the most recent run

The model is in model.py; run folders, resume, fine-tuning, devices and the checkpoint format are in engine/.
"""
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import engine  # noqa: F401 -- first: it sets how OpenMP threads wait, before torch loads OpenMP
import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from engine import distributed, ema, needs, runs
from engine.card import finish_run
from engine.checkpoint import RunState, checkpoint_dict, restore, save_checkpoint
from engine.cli import make_parser, run_cli
from engine.config import Config, TrainConfig, to_yaml
from engine.datasets import DataInfo
from engine.columns import METRICS, epoch_line, validation_columns
from engine.devices import (apply_switches, autocast, no_sync_unless, require_deterministic_cublas, seed_everything,
                            select_device)
from engine.distributed import all_reduce_sum, broadcast_buffers, is_main, rank_and_world
from engine.entry import stopped, stops_deferred
from engine.errors import UserError
from engine.finetune import load_data, param_groups, setup_model, unfreeze
from engine.init import initialise
from engine.loaders import Loader
from engine.hooks import Hook, make_hooks
from engine.losses import LossFn, loss_for
from engine.metrics import class_weights, evaluate
from engine.multilabel import evaluate_multilabel
from engine.optim import make_optimizer, make_scheduler
from engine.tta import with_tta


def train(cfg: Config, resume: dict | None = None, run_dir: Path | None = None, explicit_name: bool = False,
          hooks: tuple[Hook, ...] = ()) -> Path:
    """Train per cfg (continuing the checkpoint `resume` in run_dir if given); returns the run folder. hooks:
    called besides log.hooks' (tools/sweep.py's pruning)."""
    device = distributed.setup(select_device(cfg.run.device))
    seed_everything(cfg.run.seed + rank_and_world()[0], cfg.run.deterministic)  # DDP copies rank 0's weights
    hooks = [*make_hooks(cfg.log.hooks), *hooks]  # log.hooks; one that lacks its package fails here, before any work
    # 1. data: train and validation batches, normalised by the train split (or as the resumed or pretrained run was)
    cfg, pretrained, train_loader, val_loader, info = load_data(cfg, resume, device)
    run_steps = steps_per_epoch(len(train_loader), cfg.train) * cfg.train.epochs
    needs.check(needs.for_training(cfg, info, run_steps))  # what each feature needs (engine/needs.py), before any work
    # 2. model training: the model, the loss J, and the optimizer that steps w <- w - a*dJ/dw
    model, new_layers, frozen_norms = setup_model(cfg, info, device, resume, pretrained)
    initialise(model, cfg.model, train_loader, is_resumed=resume is not None)  # model.whiten, model.dirac
    trained_model, amp_dtype = apply_switches(model, cfg.run, device)  # compiled / DDP-wrapped, or model itself
    step = make_step(model, new_layers, cfg.train, info, amp_dtype, steps_per_epoch(len(train_loader), cfg.train))
    step.frozen_norms = frozen_norms
    state = RunState() if resume is None else restore(resume, model, step.optimizer, step.scheduler, step.scaler)
    step.ema = ema.make_ema(model, cfg.train, resume)  # an average of the weights, when train.ema_decay > 0
    # 3. record loss and accuracy: a run folder that this process alone writes into
    is_new, is_started = run_dir is None, False  # a new run that fails before its first epoch leaves no folder
    cfg, run_dir, lock = runs.take_run_dir(cfg, run_dir, explicit_name)
    run = Run(cfg, run_dir, model, trained_model, step, info, state, new_layers, hooks, saved_epoch=state.epoch)
    try:
        with stops_deferred():  # a stop signal ends the run at the end of a batch (torchrun: all at the same one)
            print(runs.header(cfg, info, model, run_dir, (train_loader, val_loader)))
            runs.write_config(cfg, run_dir)
            for hook in hooks:
                hook.on_run_start(run)
            for epoch in range(run.state.epoch + 1, cfg.train.epochs + 1):
                run_epoch(run, train_loader, val_loader, epoch)
                is_started = True
                if stops_early(cfg.train, run.state):
                    print(f"early stop: no better val {cfg.train.best_metric} for {cfg.train.patience} epochs")
                    break
                if distributed.from_main(run.stop):  # a hook's stop (rank 0's hooks) ends every process's loop
                    stop_by_hook(run)
                    break
            distributed.check_stopped()  # a stop that came after the last check
        for hook in hooks:
            hook.on_run_end(run)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt) or stopped():  # a stop, or what it caused (another process gone)
            is_started = True  # stopped, not failed: the folder is kept, and --resume continues it
            tell_stopped(run)
        raise
    finally:
        if lock is not None:
            lock.release()
        if is_new and not is_started:
            runs.remove_unstarted(run_dir)
    return run_dir


def tell_stopped(run: "Run") -> None:
    """After a stop signal: what the run folder holds and the command that continues the run (rank 0), and under
    Slurm with run.requeue the job requeued when the signal was the early warning (sbatch --signal=USR1@...)."""
    is_done = run.saved_epoch == run.state.epoch and (
        run.state.epoch == run.cfg.train.epochs or stops_early(run.cfg.train, run.state))
    runs.say_how_to_continue(run.run_dir, run.saved_epoch, is_done)
    runs.requeue_slurm_job(run.cfg.run)


def train_one_epoch(run: "Run", loader: Loader, epoch: int) -> tuple[float, float]:
    """2. One pass over the training batches; returns the mean loss and accuracy. With train.accumulate=N
    the gradients of N batches add up (each batch's loss divided by the N of its group) before each step."""
    model, step, device, accumulate = run.trained_model, run.step, loader.device, run.cfg.train.accumulate
    model.train()
    for norm in step.frozen_norms:  # frozen pretrained layers keep their running statistics
        norm.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{run.cfg.train.epochs}", leave=False, disable=None if is_main() else True)
    per_epoch = steps_per_epoch(len(loader), run.cfg.train)
    for batch, (images, targets) in enumerate(bar, 1):  # images (B, C, H, W); targets (B,) or (B, K) with MixUp
        first, is_step = (batch - 1) // accumulate * accumulate + 1, batch % accumulate == 0 or batch == len(loader)
        if batch == first:
            step.optimizer.zero_grad(set_to_none=True)
        with no_sync_unless(model, is_step):  # under torchrun: one all-reduce per step, not per batch
            with autocast(device, step.amp_dtype):
                logits = model(images)  # forward pass, layer by layer (a fully connected one: h(XW + b)): (B, K)
                loss = step.loss_fn(logits, targets)  # the loss J (train.loss=mse: the notes' 1/(2m) sum (f(x) - y)^2)
            group = min(accumulate, len(loader) - first + 1)  # batches in this step: fewer at the epoch's end
            step.scaler.scale(loss / group).backward()  # backpropagation: dJ/dw for every weight w, added up
        if is_step:
            optimizer_step(step, model)
            ema.update(step.ema, run.model, (epoch - 1) * per_epoch + math.ceil(batch / accumulate),
                       run.cfg.train.ema_every)
        distributed.check_stopped()  # a stop signal ends the run here (torchrun: every process at this batch)
        labels = targets if targets.ndim == 1 else targets.argmax(1)  # MixUp/CutMix: the larger share
        loss_sum += loss.detach().float() * len(labels)
        if step.multilabel:  # data.multilabel: an image counts when every label is right at p >= 0.5
            correct += ((logits > 0) == (targets > 0.5)).all(1).sum()
        else:
            correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if batch % run.cfg.train.log_interval == 0 or batch == len(loader):  # the only host syncs in the loop
            check_finite(loss_sum.item(), epoch, batch, step.optimizer)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
    totals = all_reduce_sum(torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen, device=device)]))
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()  # over all processes' shares


def optimizer_step(step: "Step", model: torch.nn.Module) -> None:
    """w <- w - a * dJ/dw (plus momentum or Adam's scaling), the gradient clipped first if asked."""
    if step.grad_clip > 0:
        step.scaler.unscale_(step.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
    step.scaler.step(step.optimizer)
    step.scaler.update()
    step.scheduler.step()  # the learning rate a for the next step


def steps_per_epoch(batches: int, cfg: TrainConfig) -> int:
    """Optimizer steps in an epoch of this many batches: one per train.accumulate batches (and the rest)."""
    return math.ceil(batches / cfg.accumulate)


def run_epoch(run: "Run", train_loader: Loader, val_loader: Loader, epoch: int) -> None:
    """One epoch: 2. train, then 3. validate and record (one line, metrics.csv, last.pt and best.pt)."""
    start = time.perf_counter()
    if run.cfg.train.freeze_epochs and epoch == run.cfg.train.freeze_epochs + 1:
        run.step.frozen_norms, run.trained_model = unfreeze(run.model, run.new_layers, run.cfg, val_loader.device,
                                                            epoch)
    train_loader.set_epoch(epoch)
    train_loss, train_acc = train_one_epoch(run, train_loader, epoch)
    check_weights(run.model, epoch, run.step.amp_dtype)
    every = run.cfg.train.val_every
    is_validated = epoch == run.cfg.train.epochs or (every > 0 and epoch % every == 0)
    val = validation_columns(validate(run, val_loader) if is_validated else None, run.info.multilabel)
    row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, **val,
           "lr": run.step.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 2)}
    score = row[METRICS[run.cfg.train.best_metric].column]
    improved = is_validated and score > run.state.best_score
    bad_epochs = 0 if improved else run.state.bad_epochs + is_validated  # epochs not validated do not count
    run.state = RunState(epoch, score if improved else run.state.best_score, bad_epochs, run.state.history + [row])
    with stops_deferred():  # a stop signal waits until the epoch's files are written
        save_epoch(run, improved)
    run.saved_epoch = epoch
    for hook in run.hooks:
        hook.on_epoch_end(run, row)
    print(epoch_line(row, run.cfg.train.epochs, improved))
    distributed.check_stopped()


def validate(run: "Run", val_loader: Loader) -> dict:
    """3. The validation split's loss and metrics, of the average weights when train.ema_decay is on."""
    model = ema.evaluated(run.model, run.step.ema)
    broadcast_buffers(model)  # every process evaluates the weights rank 0 saves
    device = val_loader.device
    weight = class_weights(run.cfg.train, run.info.class_counts, device)
    if run.info.multilabel:  # per-label AP, F1 and thresholds (engine/multilabel.py)
        val = evaluate_multilabel(with_tta(model, run.cfg.train.tta, multilabel=True), val_loader, device,
                                  run.step.amp_dtype, weight)  # as test.py
        run.info = replace(run.info, thresholds=val["thresholds"])  # stored with this epoch's weights
        return val
    return evaluate(with_tta(model, run.cfg.train.tta), val_loader, len(run.info.class_names), device,
                    run.step.amp_dtype, loss_for(run.cfg.train, weight, False, "sum"), weight)  # as test.py


def save_epoch(run: "Run", improved: bool) -> None:
    """metrics.csv (and curves.png, at most every few seconds), then best.pt if improved, then last.pt (from rank
    0). last.pt is written last: whatever epoch it holds, metrics.csv and best.pt have it too, so a run killed at
    any point resumes from it."""
    step = run.step
    ckpt = checkpoint_dict(ema.evaluated(run.model, step.ema), step.optimizer, step.scheduler, step.scaler, run.state,
                           amp=step.amp_dtype, config=run.cfg, data=run.info, new_layers=run.new_layers)  # gathers RNGs
    ckpt.update(ema.checkpoint_entries(run.model, step.ema))
    if is_main():
        is_last = run.state.epoch == run.cfg.train.epochs or stops_early(run.cfg.train, run.state)
        runs.write_metrics(run.state.history, run.run_dir, is_last)
        save_checkpoint(ckpt, run.run_dir, improved)


@dataclass
class Step:
    """What turns a batch's loss into a weight update."""
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped after every optimizer step
    scaler: torch.amp.GradScaler  # fp16 only; a pass-through when disabled
    amp_dtype: torch.dtype | None  # autocast's dtype; None: float32
    grad_clip: float
    frozen_norms: list[torch.nn.Module] = field(default_factory=list)  # batch norms kept in eval mode (frozen)
    ema: AveragedModel | None = None  # the average of the weights (train.ema_decay), updated after steps
    multilabel: bool = False  # data.multilabel: targets (B, K) of 0/1, the loss binary cross-entropy


def make_step(model: torch.nn.Module, new_layers: list[str] | None, cfg: TrainConfig, info: DataInfo,
              amp_dtype: torch.dtype | None, steps: int) -> Step:
    """The loss (with class weights and label smoothing), optimizer, schedule and gradient scaler of a fresh run."""
    device = next(model.parameters()).device
    loss_fn = loss_for(cfg, class_weights(cfg, info.class_counts, device), info.multilabel)
    optimizer = make_optimizer(param_groups(model, new_layers, cfg), cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # fp16 runs on CUDA only
    return Step(loss_fn, optimizer, make_scheduler(optimizer, cfg, steps), scaler, amp_dtype, cfg.grad_clip,
                multilabel=info.multilabel)


@dataclass
class Run:
    """Everything the epoch loop reads and updates."""
    cfg: Config
    run_dir: Path
    model: torch.nn.Module  # unwrapped: evaluated and saved
    trained_model: torch.nn.Module  # what the training step calls: compiled, DDP-wrapped, or the model itself
    step: Step
    info: DataInfo
    state: RunState
    new_layers: list[str] | None  # with model.pretrained: the keys that did not come from it; else None
    hooks: list[Hook]  # log.hooks (engine/hooks.py): called at run start, epoch end and run end
    stop: str = ""  # set by a hook's on_epoch_end: the run ends after this epoch as an early stop does (the sweep's pruning)
    saved_epoch: int = 0  # the epoch last.pt holds (0: none yet)


def stops_early(cfg: TrainConfig, state: RunState) -> bool:
    """train.patience validated epochs without a better score."""
    return bool(cfg.patience) and state.bad_epochs >= cfg.patience


def check_weights(model: torch.nn.Module, epoch: int, amp_dtype: torch.dtype | None) -> None:
    """Weights and statistics must be finite before the epoch is saved: a NaN can appear in weights while the
    loss of the epoch's batches stayed finite (seen in bf16 on CPUs), and best.pt must never hold one."""
    tensors = [(name, t) for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist()  # one host sync
    bad = [name for (name, t), ok in zip(tensors, finite) if not ok]
    if bad:
        cause = ("under run.amp=bf16: train in float32 with run.amp=none" if amp_dtype == torch.bfloat16 else
                 "lower train.lr or set train.grad_clip")
        raise UserError(f"epoch {epoch} made {len(bad)} weight tensors non-finite (NaN or inf), first {bad[0]}, "
                        f"though its loss stayed finite; {cause}; nothing of epoch {epoch} was saved")


def stop_by_hook(run: "Run") -> None:
    """A hook ended the run after this epoch: say why, and draw curves.png for the epochs it has."""
    if is_main():
        print(f"stopped: {run.stop}")
        runs.write_metrics(run.state.history, run.run_dir)


def check_finite(loss_sum: float, epoch: int, batch: int, optimizer: torch.optim.Optimizer) -> None:
    if not math.isfinite(loss_sum):
        lr = optimizer.param_groups[0]["lr"]
        raise UserError(f"the loss became NaN or infinite in epoch {epoch} by batch {batch} (lr {lr:.2e}); "
                        f"lower train.lr or set train.grad_clip; nothing of epoch {epoch} was saved")


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT_OR_RUN_FOLDER",
                        help="continue a run (default: the most recent one)")
    parser.add_argument("--print-config", action="store_true", help="print the full resolved config first")
    args = parser.parse_args(argv)
    cfg, ckpt, run_dir = runs.what_to_train(args.resume, args.config, args.overrides)
    if ckpt is not None and runs.finished(ckpt, cfg):
        print(f"{run_dir} already finished: {runs.finished(ckpt, cfg)}. Nothing was changed; "
              f"test it with python test.py {run_dir}")
        return
    if cfg.run.deterministic:  # before the process's first cuBLAS call
        require_deterministic_cublas()
    if args.print_config:
        print(to_yaml(cfg))
    explicit_name = args.resume is None and any(text.partition("=")[0] == "run.name" for text in args.overrides)
    try:
        run_dir = train(cfg, ckpt, run_dir, explicit_name)
        show_test = is_main()
        distributed.barrier()
    finally:
        distributed.teardown()
    if show_test:  # one process: best.pt's temperature, test split and model card
        try:
            finish_run(run_dir, cfg, select_device(cfg.run.device))
        except KeyboardInterrupt:
            print(f"\nstopped while testing; training is complete. Test it with: python test.py {run_dir}",
                  file=sys.stderr)
            raise

if __name__ == "__main__":
    run_cli(main)
