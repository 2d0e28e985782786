"""Hooks: code that runs when a run starts, after every epoch (with the epoch's row) and when it ends,
named in log.hooks. A hook is a class with Hook's three methods (each does nothing unless overridden); a
new one is its class and its line in HOOKS (docs/extend.md). Hooks run in the process that writes the
run folder (rank 0 under torchrun), after the epoch's files are written; run end is a finished run's
(all epochs, or an early stop), not a stopped or failed one's.
"""
from engine.distributed import is_main
from engine.errors import UserError


class Hook:
    def on_run_start(self, run) -> None:
        """run: train.py's Run (cfg, run_dir, model, state, ...), before the first epoch of this process."""

    def on_epoch_end(self, run, row: dict) -> None:
        """row: the epoch's metrics.csv row (engine/columns.py), written to disk already."""

    def on_run_end(self, run) -> None:
        """After the last epoch, before the final test."""


class TensorBoard(Hook):
    """The epoch rows' numbers for TensorBoard, in <run folder>/tensorboard."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("log.hooks has tensorboard but the tensorboard package is not installed; "
                            "pip install tensorboard, or take tensorboard out of log.hooks") from None
        self.writer_class, self.writer = SummaryWriter, None

    def on_run_start(self, run) -> None:
        self.writer = self.writer_class(str(run.run_dir / "tensorboard"))

    def on_epoch_end(self, run, row: dict) -> None:
        for key, value in row.items():
            self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def on_run_end(self, run) -> None:
        self.writer.close()


HOOKS = {
    "tensorboard": TensorBoard,
}


def make_hooks(names: list[str]) -> list[Hook]:
    """The hooks log.hooks names, built before any work (a missing package fails at once); none off rank 0."""
    hooks = [HOOKS[name]() for name in names]
    return hooks if is_main() else []
