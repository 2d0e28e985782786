"""Multi-process training under torchrun: process group, ranks, and the few collectives the loop needs.

Without torchrun every function here is a no-op for a single process (rank 0 of 1).
"""
import contextlib
import os
import sys

import torch
import torch.distributed as dist

from engine import entry
from engine.errors import UserError

STOPS = {"group": None}  # the gloo group that agrees on stops (NCCL's collectives need the GPU; this needs none)


def is_torchrun() -> bool:
    """torchrun sets these for every process it starts."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU); returns this process's device.

    Ranks other than 0 print nothing to stdout, so only one copy of the logs appears.
    """
    if not is_torchrun() or dist.is_initialized():
        return device
    # DistributedDataParallel imports torch.distributed.nn.functional, whose functions take group=group.WORLD as a
    # default: imported after the group exists, they hold it for good, so destroy_process_group cannot free it and
    # gloo's threads outlive it into the interpreter's exit, where one releasing a tensor aborted rank 1 (SIGABRT,
    # "terminate called without an active exception") in about one run in ten. Imported first, they hold None.
    import torch.distributed.nn.functional  # noqa: F401
    if device.type == "cuda":
        device = local_gpu(int(os.environ["LOCAL_RANK"]), torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)  # binds the communicator to this GPU at once
        STOPS["group"] = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo")
        STOPS["group"] = dist.group.WORLD
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return device


def local_gpu(local_rank: int, count: int) -> torch.device:
    """This process's GPU: the LOCAL_RANK-th visible one, or the only one when the launcher gives each
    process its own (SLURM --gpus-per-task=1, CUDA_VISIBLE_DEVICES per process)."""
    if local_rank < count:
        return torch.device("cuda", local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise UserError(f"this process has LOCAL_RANK {local_rank} but only {count} GPUs are visible; start at most "
                    f"{count} processes per machine (torchrun --nproc_per_node={count}) or one GPU per process")


def local_rank() -> int:
    """This process's rank on its machine (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if rank_and_world()[1] > 1 else 0


@contextlib.contextmanager
def local_main_first():
    """Local rank 0 runs the block first (download, decode, write the cache); the other processes on
    its machine run it afterwards, finding the files and the cache in place."""
    if local_rank() != 0:
        barrier()
    yield
    if local_rank() == 0:
        barrier()


def barrier() -> None:
    """Wait until every process gets here (so none tears down while another still talks)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def teardown() -> None:
    STOPS["group"] = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_stopped() -> None:
    """A point where the run may stop: raise the stop signal this process received, or under torchrun one that
    any process received, so that every process stops here together (one small all-reduce of the signal
    numbers on the CPU). Stop signals must be deferred between these points (entry.stops_deferred), or a
    process would leave while the others wait for it in a collective."""
    if rank_and_world()[1] == 1 or STOPS["group"] is None:
        entry.check_interrupted()
        return
    signum = torch.tensor([entry.received[-1] if entry.received else 0])
    dist.all_reduce(signum, dist.ReduceOp.MAX, group=STOPS["group"])
    if signum.item():  # every process stops with the same signal (another's too: as if this one had it)
        entry.received.append(int(signum.item()))
        raise entry.stop_exception(int(signum.item()))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (batch-norm running statistics) before evaluating."""
    if rank_and_world()[1] > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def gather(obj: object) -> list:
    """Every process's obj, in rank order (a one-item list without torchrun)."""
    if rank_and_world()[1] == 1:
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def from_main(obj: object) -> object:
    """Rank 0's obj on every process."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]
