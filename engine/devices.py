"""Where and how fast: the device, seeds, mixed precision, and the speed switches that wrap the model."""
import contextlib
import os
import random

from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from engine.config import Config, RunConfig, check_device_name
from engine.distributed import rank_and_world
from engine.errors import UserError


def mps_available() -> bool:
    return torch.backends.mps.is_available()


def select_device(name: str) -> torch.device:
    """auto -> CUDA, else Apple's MPS, else CPU; explicit requests are checked. cuda:N becomes the
    current CUDA device, so libraries that use 'the current device' use it too."""
    check_device_name(name, "device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "mps" and not mps_available():
        raise UserError("device 'mps' requested but this machine has no Apple GPU (MPS); use auto or cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' requested but no CUDA device is available; use auto or cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"device '{name}' requested but only {torch.cuda.device_count()} "
                            "CUDA device(s) exist; use cuda:0 or auto")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def has_native_bf16(device: torch.device) -> bool:
    """CUDA with bf16 support, or a CPU whose oneDNN reports bf16 support (AVX-512 CPUs and newer)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":  # MPS: float32 unless asked
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private call: absent from some builds
        return False


def thread_count(threads: str | int) -> tuple[int, str]:
    """run.threads -> PyTorch's intra-op threads (0: its default), and why. auto: OMP_NUM_THREADS if set, else the
    CPUs this process may use, shared among this machine's torchrun ranks. Not the machine's load: the thread count
    changes the numbers (the order of float sums), and a run must repeat on the same machine; threads sleep rather
    than spin while they wait (engine/__init__.py), which keeps a busy machine sane (docs/speed.md, busy.py)."""
    if threads != "auto":
        return threads, "as configured"
    told = os.environ.get("OMP_NUM_THREADS", "")
    if told.isdigit() and int(told) > 0:  # set by the person, a scheduler or torchrun: theirs to choose
        return int(told), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's processes on this machine
    return max(1, int(cpus) // ranks), f"{cpus:g} usable CPUs{f' for {ranks} processes' if ranks > 1 else ''}"


def usable_cpus() -> float:
    """The CPUs this process may run on (its affinity mask: taskset, Slurm), capped by a cgroup's CPU quota
    (docker --cpus, Kubernetes limits): os.cpu_count() counts the machine's."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:  # cgroup v2: "max 100000" (no quota) or "150000 100000" (1.5 CPUs)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    return cpus if quota == "max" else max(1.0, min(cpus, int(quota) / int(period)))


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """run.amp -> none | bf16 | fp16 on this device, and why. auto is bf16 on CUDA with native bf16 only: on CPUs
    with native bf16, runs were not repeatable and 2 of 5 wrote NaN weights (docs/troubleshooting.md)."""
    if amp == "auto":
        if device.type == "cuda" and has_native_bf16(device):
            return "bf16", "this GPU has native bf16"
        if device.type == "cuda":
            return "none", "float32: no native bf16 on this GPU"
        return "none", f"float32: bf16 on the {device.type.upper()} only when run.amp=bf16 asks"
    if amp == "fp16" and device.type != "cuda":  # fp16 needs CUDA's GradScaler
        return "none", f"fp16 applies on CUDA only; training in float32 (run.amp=bf16 works on {device.type.upper()})"
    return amp, "as configured"


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that training and validation use for run.amp on this device."""
    return AMP_DTYPES[resolve_amp(amp, device)[0]]


def trained_dtype(ckpt: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a checkpoint was trained and validated in (its amp), as this device runs it: test.py and
    the tools evaluate in it, so a float32 checkpoint gives the numbers it recorded on a machine where run.amp=auto
    would pick bf16. A checkpoint without the entry is float32's."""
    return autocast_dtype(ckpt.get("amp", "none"), device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python and torch; optionally make PyTorch use deterministic algorithms only."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        require_deterministic_cublas()
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call costs ~150 MB of memory
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic


def require_deterministic_cublas() -> None:
    """Deterministic cuBLAS needs this variable before the process's first cuBLAS call (PyTorch reads
    it once), so train.py sets it as soon as the config asks for determinism."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


AMP_NAMES = {dtype: name for name, dtype in AMP_DTYPES.items()}


def apply_switches(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Module,
                                                                                         torch.dtype | None]:
    """Speed switches and DDP: returns the model to call (wrapped, compiled or itself) and the autocast dtype."""
    threads, why = thread_count(cfg.threads)
    if threads:
        torch.set_num_threads(threads)
    if cfg.threads == "auto" and device.type == "cpu":
        print(f"threads: auto -> {threads} ({why})")
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


def no_sync_unless(model: torch.nn.Module, is_step: bool):
    """DDP's no_sync for the batches before the last of a train.accumulate group: their gradients add up in
    each process, and the group's last backward averages the sum across processes once."""
    ddp = getattr(model, "_orig_mod", model)  # under torch.compile
    is_ddp = isinstance(ddp, DistributedDataParallel)
    return ddp.no_sync() if is_ddp and not is_step else contextlib.nullcontext()


def sync_batchnorm(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.nn.Module:
    """Under torchrun on CUDA with model.sync_batchnorm: batch-norm statistics over all processes' batches."""
    if not cfg.model.sync_batchnorm or rank_and_world()[1] == 1:
        return model
    if cfg.run.compile:  # a known torch.compile failure / graph-break case with DDP
        raise UserError("run.compile with model.sync_batchnorm under torchrun is not supported; turn one of them off")
    # model.py's ShiftNorm learns a shift of its own, which convert_sync_batchnorm would not copy
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.affine and any(m.parameters(recurse=False))
           for m in model.modules()):
        raise UserError(f"model.sync_batchnorm: {cfg.model.name}'s batch norms learn a shift that SyncBatchNorm would "
                        "drop; set model.sync_batchnorm=false")
    if device.type != "cuda":
        print("note: model.sync_batchnorm needs CUDA; on CPU each process keeps its own batch-norm statistics")
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision in dtype (bf16 or fp16); float32 when dtype is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
