"""Multi-process training under torchrun: process group, ranks, and the few collectives the loop needs.

Without torchrun every function here is a no-op for a single process (rank 0 of 1).
"""
import contextlib
import os
import sys

import torch
import torch.distributed as dist

from engine.errors import UserError


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
    if device.type == "cuda":
        device = local_gpu(int(os.environ["LOCAL_RANK"]), torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)  # binds the communicator to this GPU at once
    else:
        dist.init_process_group("gloo")
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
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
