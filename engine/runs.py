"""Run folders: where a run goes, the lock that keeps one writer per folder, what --resume continues, and
the files that record each epoch (metrics.csv, curves.png, the epoch line).
"""
import contextlib
import difflib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml
from torch import nn

from engine import distributed
from engine.checkpoint import load_checkpoint, resolve, run_checkpoints
from engine.columns import csv_columns
from engine.config import (DEFAULT_CONFIG, Config, RunConfig, apply_override, changed_keys, config_from_dict,
                           flatten, load_config, read_config, to_dict, to_yaml, with_defaults)
from engine.datasets import DataInfo
from engine.distributed import from_main, is_main, rank_and_world
from engine.editable import comments_kept, read_text
from engine.entry import stopped_by
from engine.errors import UserError, shown
from engine.escape import CsvWriter, printable
from engine.loaders import Loader
from engine.optim import FIXED_SCHEDULES
from engine.plots import plot_curves
from engine.storage import RunFolderInUse, RunLock, make_folder, remove_stale_temporaries, replacing, write_text
from engine.yamlfile import parse_yaml, read_yaml


# Keys a resumed run may change; anything else would make it a different experiment.
RESUMABLE = ("train.epochs", "train.patience", "train.log_interval", "train.eval_batch_size", "run.device",
             "run.requeue", "log.hooks", "log.mlflow_checkpoint")


def claim(run_dir: Path) -> RunLock:
    """Lock the run folder for this process, and remove temporary files a killed run left in it."""
    lock = RunLock(run_dir).acquire()
    removed = remove_stale_temporaries(run_dir)
    if removed:
        print(f"note: removed {', '.join(removed)} left in {run_dir} by an interrupted run")
    return lock


def holds_run(run_dir: Path) -> bool:
    return bool(run_checkpoints(run_dir))


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


def take_run_dir(cfg: Config, run_dir: Path | None, explicit_name: bool) -> tuple[Config, Path, RunLock | None]:
    """The run folder, locked by rank 0: run_dir when continuing, else a new one; cfg is given its name."""
    lock = None
    if is_main():
        run_dir, lock = make_run_dir(cfg, explicit_name) if run_dir is None else (run_dir, claim(run_dir))
    run_dir = Path(from_main(str(run_dir) if is_main() else None))
    return replace(cfg, run=replace(cfg.run, name=run_dir.name)), run_dir, lock


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
            raise UserError(f"override {shown(key)} cannot change on --resume (it would be a different run); "
                            f"allowed: {', '.join(RESUMABLE)}")
        apply_override(raw, text)
    cfg = config_from_dict(raw)
    if cfg.train.epochs != saved["train"]["epochs"] and cfg.train.scheduler in FIXED_SCHEDULES:
        raise UserError(f"train.epochs cannot change on --resume with train.scheduler={cfg.train.scheduler}: its "
                        "schedule is laid out over the original epochs; start a new run instead")
    if overrides:
        print(f"resuming with {' '.join(overrides)} (recorded in the run's config.yaml)")
    return cfg


def config_edits(ckpt: dict, run_dir: Path, overrides: list[str]) -> list[str]:
    """Hand edits of the run's config.yaml, which --resume rewrites from the checkpoint: the keys a resumed run may
    change become overrides (named), any other is refused (a resumed run continues its checkpoint's settings)."""
    if not (run_dir / "config.yaml").is_file():
        return []
    saved = read_config(run_dir / "config.yaml")  # an edit it cannot read is named, with the fix
    fix = "undo the edit, or delete the file (--resume writes it again from the checkpoint)"
    if not isinstance(saved, dict):
        raise UserError(f"{run_dir / 'config.yaml'} holds {shown(saved, 40)}, not a config (data:, model:, ...); {fix}")
    given = {text.partition("=")[0] for text in overrides}
    ours, theirs = flatten(ckpt["config"]), flatten(saved)
    known = flatten(read_yaml(DEFAULT_CONFIG))
    unknown = [key for key in theirs if key not in known]
    if unknown:  # a key --resume would not read, and the rewrite would drop
        guess = difflib.get_close_matches(unknown[0], list(known), n=1)
        raise UserError(f"{run_dir / 'config.yaml'} has {shown(unknown[0])}, which is not a config key"
                        f"{f' (did you mean {guess[0]}?)' if guess else ''}; {fix}")
    edited = [key for key in ours if key in theirs and theirs[key] != ours[key] and key != "run.name"
              and key not in given]
    refused = [key for key in edited if key not in RESUMABLE]
    if refused:
        raise UserError(f"{run_dir / 'config.yaml'} was edited: {', '.join(refused[:3])} differ from the checkpoint "
                        f"({shown(theirs[refused[0]])} vs {shown(ours[refused[0]])}); a resumed run continues its "
                        "checkpoint's settings, so undo the edit, or start a new run with --config "
                        f"{run_dir / 'config.yaml'}")
    edits = [f"{key}={yaml_value(theirs[key])}" for key in edited]
    if edits:
        print(f"note: taking {' '.join(edits)} from the edited {run_dir / 'config.yaml'}")
    return edits


def yaml_value(value: object) -> str:
    """A value as the text of a key=value override."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def finished(ckpt: dict, cfg: Config) -> str:
    """Why the checkpoint's run has nothing left to do under cfg; '' if it has."""
    longer = ("start a new run to train longer" if cfg.train.scheduler in FIXED_SCHEDULES
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
    if resume and Path(resume).is_dir() and not path.exists() and run_checkpoints(path.parent):
        path = last_state(path.parent)
    elif resume and Path(resume).is_dir() and not path.exists():
        if not (path.parent / "config.yaml").is_file():
            raise UserError(f"{path.parent} holds no checkpoint and no config.yaml: it was stopped before its "
                            "first file was written, so there is nothing to resume; start the run again with "
                            "the same command (the folder is reused)")
        print(f"note: {path.parent} has no completed epoch yet; starting it again from its config.yaml")
        return overridden(read_config(path.parent / "config.yaml"), overrides), None, path.parent
    if distributed.is_torchrun() and not path.is_file():
        raise UserError(f"rank {os.environ['RANK']} cannot find {path}: under torchrun on several machines "
                        "run.output_dir must be storage that every machine sees (e.g. NFS)")
    if path.name != "last.pt" and (path.parent / "last.pt").is_file():
        raise UserError(f"{path} is not the last.pt of its run: resuming it would overwrite {path.parent / 'last.pt'}; "
                        f"continue the run with python train.py --resume {path.parent}, or start a new one from it "
                        f"with model.pretrained={path}")
    ckpt = load_checkpoint(path)
    return resumed_config(ckpt, config_edits(ckpt, path.parent, overrides) + overrides), ckpt, path.parent


def last_state(run_dir: Path) -> Path:
    """The checkpoint --resume continues in a run folder without last.pt: best.pt when it holds the one epoch
    metrics.csv records (kill -9 between best.pt and last.pt of epoch 1); anything else would be overwritten by
    starting again, so it is refused, naming what the folder holds and the command that continues from it."""
    best, described = run_dir / "best.pt", []
    for name in run_checkpoints(run_dir):
        try:
            described.append(f"{name} (epoch {load_checkpoint(run_dir / name)['epoch']})")
        except UserError:
            described.append(f"{name} (unreadable)")
    rows = (run_dir / "metrics.csv").read_text(errors="replace").count("\n") - 1 if (
        run_dir / "metrics.csv").is_file() else -1
    if rows == 1 and "best.pt (epoch 1)" in described:  # later epochs always leave a last.pt: it was deleted
        print(f"note: {run_dir} has no last.pt; its best.pt holds its one epoch, continuing from it")
        return best
    continue_from = best if best.is_file() else run_dir / run_checkpoints(run_dir)[0]
    raise UserError(f"{run_dir} holds {', '.join(described)} but no last.pt; continue from it with "
                    f"python train.py --resume {continue_from}, or start a new run")


CURVES_SECONDS = 5  # curves.png is drawn once the run has trained this long, then at most this often, and after
# the last epoch: drawing takes 0.15 to 0.4 s, more than a small data set's epoch


def write_metrics(history: list[dict], run_dir: Path, is_last: bool = True) -> None:
    """metrics.csv, rewritten from the full history every epoch, and curves.png when it is CURVES_SECONDS old (or,
    before the first, when the epochs took that long).

    The columns are every row's: epochs resumed from a build with other metrics leave the columns they lack empty."""
    columns = csv_columns(history)
    with replacing(run_dir / "metrics.csv", binary=False) as f:
        writer = CsvWriter(f)
        writer.writerow(columns)
        writer.writerows([row.get(column, "") for column in columns] for row in history)
    curves = run_dir / "curves.png"
    trained = sum(float(row.get("seconds") or 0) for row in history)
    age = time.time() - curves.stat().st_mtime if curves.is_file() else trained
    if is_last or age >= CURVES_SECONDS:
        plot_curves(history, curves)


def what_to_train(resume: str | None, config: str | None,
                  overrides: list[str]) -> tuple[Config, dict | None, Path | None]:
    """train.py's command line -> (config, checkpoint to continue or None, its run folder or None)."""
    if resume is None:
        cfg = load_config(config, overrides)
        run_dir = requeued_run(cfg)
        if run_dir is None:
            return cfg, None, None
        resume, overrides = str(run_dir), requeue_overrides(cfg, run_dir, overrides)
    cfg, ckpt, run_dir = to_resume(resume, config, overrides)
    if ckpt is not None and not finished(ckpt, cfg):
        print(f"resuming {run_dir}: {ckpt['epoch']} of {cfg.train.epochs} epochs done, continuing with epoch "
              f"{ckpt['epoch'] + 1}")
    return cfg, ckpt, run_dir


def requeued_run(cfg: Config) -> Path | None:
    """With run.requeue and a run.name, the folder of that name when it holds a run (a stopped one, which the
    same command then continues: a requeued Slurm job runs its first command again); None otherwise. Under
    torchrun every process decides alike: rank 0 makes a new run's folder only after all have started."""
    if not (cfg.run.requeue and cfg.run.name):
        return None
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if not (holds_run(run_dir) or (run_dir / "config.yaml").is_file()):
        return None
    print(f"run.requeue: {run_dir} holds this run, stopped before it ended; continuing it (as --resume {run_dir})")
    return run_dir


def requeue_overrides(cfg: Config, run_dir: Path, overrides: list[str]) -> list[str]:
    """The command's overrides that a resumed run may change; any other must agree with the run's config."""
    try:
        saved = flatten(to_dict(config_from_dict(with_defaults(read_config(run_dir / "config.yaml")))))
    except (UserError, AttributeError, TypeError):  # no or no valid config.yaml: --resume names what it holds
        return [text for text in overrides if text.partition("=")[0] in RESUMABLE]
    ours = flatten(to_dict(cfg))
    given = [text.partition("=")[0] for text in overrides]
    differ = [key for key in given if key not in RESUMABLE and key in ours and ours[key] != saved.get(key)]
    if differ:
        raise UserError(f"run.requeue: {run_dir} holds a run with {differ[0]}={shown(saved.get(differ[0]))}, but "
                        f"this command sets {shown(ours[differ[0]])}; a run continues with its own settings, so "
                        "drop the override or pick another run.name")
    return [text for text in overrides if text.partition("=")[0] in RESUMABLE]


def header(cfg: Config, info: DataInfo, model: nn.Module, run_dir: Path, loaders: tuple[Loader, Loader]) -> str:
    """What a person checks before the first epoch: device, data, model, changed keys, run folder."""
    (train_loader, val_loader), world = loaders, rank_and_world()[1]
    parameters = sum(p.numel() for p in model.parameters())
    return (f"device: {train_loader.device}{f' x {world} processes' if world > 1 else ''}\n"
            f"data: {cfg.data.name}, {train_loader.num_images} train / {val_loader.num_images} val images "
            f"of {info.in_channels}x{info.image_size}x{info.image_size}, {len(info.class_names)} classes\n"
            f"model: {cfg.model.name}, {parameters:,} parameters\n"
            f"changed from config.yaml: {' '.join(changed_keys(cfg)) or 'none'}\n"
            f"run folder: {run_dir} (full config in its config.yaml)")


def write_config(cfg: Config, run_dir: Path) -> None:
    """The resolved config, from rank 0: what --resume and a new run with --config read back. A config.yaml that
    holds this config already (a resumed run's, a person's comments in it) is left as it is; a rewritten one keeps
    the comments a person added (engine/editable.py)."""
    if not is_main():
        return
    path, text = run_dir / "config.yaml", to_yaml(cfg)
    old = read_text(path) if path.is_file() else None
    if old is not None and old != text:
        try:
            if flatten(parse_yaml(old, str(path))) == flatten(to_dict(cfg)):
                return
        except UserError:
            pass
    write_text(path, comments_kept(old, text))


def remove_unstarted(run_dir: Path) -> None:
    """The folder of a new run that failed before its first epoch ended, with the files it wrote (rank 0)."""
    if not is_main() or run_checkpoints(run_dir):
        return
    for name in ("config.yaml", "metrics.csv", "curves.png"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: it held files of the user's before
        run_dir.rmdir()


def say_how_to_continue(run_dir: Path, saved_epoch: int, is_done: bool) -> None:
    """After a stop signal: what the run folder holds, truly, and the command that continues the run (rank 0).
    A stop in the middle of an epoch keeps the epochs before it: --resume trains that epoch again from its start."""
    if not is_main():
        return
    launcher = "torchrun ... train.py" if rank_and_world()[1] > 1 else "python train.py"
    if is_done:
        text = (f"stopped after the last epoch: training is complete ({run_dir / 'last.pt'} holds epoch "
                f"{saved_epoch}). Test it with: python test.py {run_dir}")
    elif saved_epoch:
        text = (f"stopped in epoch {saved_epoch + 1}; {run_dir / 'last.pt'} holds epoch {saved_epoch}, and epoch "
                f"{saved_epoch + 1} starts again from its beginning. Continue with: {launcher} --resume {run_dir}")
    elif (run_dir / "config.yaml").is_file():
        text = (f"stopped before its first epoch ended: nothing was kept but {run_dir / 'config.yaml'}. "
                f"Start it again with: {launcher} --resume {run_dir}")
    else:
        text = "stopped before its first file was written: nothing was kept. Start it again with the same command"
    with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) cannot show it
        print(f"\n{text}", file=sys.stderr)


def requeue_slurm_job(cfg: RunConfig) -> None:
    """Under Slurm with run.requeue, after Slurm's early warning (sbatch --signal=USR1@90): rank 0 puts the job
    back in the queue (scontrol requeue), and when it starts again the same command continues this run. SIGTERM
    is not requeued: it is also how scancel cancels a job, and a preempted job is requeued by Slurm itself."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if not (cfg.requeue and job and is_main() and stopped_by() == getattr(signal, "SIGUSR1", None)):
        return
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"note: could not requeue Slurm job {job} ({err}); submit it again to continue", file=sys.stderr)
        return
    if done.returncode:
        print(f"note: scontrol requeue {job} failed ({printable(done.stderr.strip()[:200])}); submit the job again "
              "to continue", file=sys.stderr)
    else:
        print(f"requeued Slurm job {job}: when it starts again it continues this run", file=sys.stderr)
