"""train.py whose rank 1 fails in the middle of its second epoch, for the torchrun failure test."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.cli import run_cli  # noqa: E402
from engine.distributed import rank_and_world  # noqa: E402
from engine.errors import UserError  # noqa: E402
import train  # noqa: E402

real_epoch = train.train_one_epoch


def failing_epoch(run, loader, epoch):
    if epoch == 2 and rank_and_world()[0] == 1:
        raise UserError("rank 1 failed on purpose in epoch 2")
    return real_epoch(run, loader, epoch)


train.train_one_epoch = failing_epoch
run_cli(train.main)
