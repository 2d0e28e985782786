"""Device choice, CUDA and torchrun plumbing, checked on the CPU by simulating devices and ranks;
the gpu-marked tests run the real thing where a CUDA device exists."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from engine import devices, distributed, runs
from engine.checkpoint import load_checkpoint
from engine.datasets import DataInfo
from engine.devices import autocast_dtype, select_device
from engine.errors import UserError
from engine.finetune import param_groups
from engine.loaders import Batching, Loader
from engine.metrics import evaluate_checkpoint
from engine.optim import make_optimizer
import train as train_module

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("affinity, cpu_max, ranks, threads", [
    ({0, 1}, None, 1, 2), ({0, 1, 2, 3}, "max 100000", 1, 4), ({0, 1, 2, 3}, "150000 100000", 1, 1),
    ({0, 1, 2, 3}, "250000 100000", 1, 2), (set(range(16)), None, 4, 4), ({0}, "50000 100000", 2, 1),
])
def test_auto_threads_are_the_cpus_this_process_may_use(monkeypatch, tmp_path, affinity, cpu_max, ranks, threads):
    """Its affinity mask (taskset, Slurm), a cgroup's quota (docker --cpus), shared by torchrun's local ranks."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: affinity)
    real_path = devices.Path
    cgroup = tmp_path / "cpu.max"
    if cpu_max:
        cgroup.write_text(cpu_max + "\n")
    monkeypatch.setattr(devices, "Path", lambda p: cgroup if p == "/sys/fs/cgroup/cpu.max" else real_path(p))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    monkeypatch.delenv("OMP_NUM_THREADS")  # the tests set 1
    assert devices.thread_count("auto")[0] == threads
    assert devices.thread_count(3) == (3, "as configured")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a person's or scheduler's choice wins
    assert devices.thread_count("auto") == (3, "OMP_NUM_THREADS")


def test_scripts_make_openmp_threads_sleep_while_they_wait():
    """OMP_WAIT_POLICY=PASSIVE (unless the user set one) before torch loads OpenMP: engine/__init__.py sets it and
    train.py and test.py import engine first."""
    code = ("import sys, os, train, test; order = list(sys.modules); "
            "print(os.environ['OMP_WAIT_POLICY'], order.index('engine') < order.index('torch'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert found.stdout.split() == ["PASSIVE", "True"], found.stderr


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert select_device("auto") == torch.device("mps") and select_device("mps") == torch.device("mps")
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="device 'mps' requested but this machine has no Apple GPU"):
        select_device("mps")


def test_cuda_n_becomes_the_current_device(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert select_device("cuda:2") == torch.device("cuda", 2) and current == [2]
    with pytest.raises(UserError, match="only 4 CUDA device"):
        select_device("cuda:4")


@pytest.mark.parametrize("amp,device,dtype", [("none", "cuda", None), ("bf16", "cpu", torch.bfloat16),
                                              ("fp16", "cuda", torch.float16), ("fp16", "cpu", None),
                                              ("fp16", "mps", None)])
def test_autocast_dtype_is_shared_by_training_and_evaluation(amp, device, dtype):
    assert autocast_dtype(amp, torch.device(device)) == dtype


@pytest.mark.parametrize("local_rank,count,expected", [(1, 2, "cuda:1"), (3, 1, "cuda:0"), (0, 8, "cuda:0")])
def test_each_process_gets_its_gpu(local_rank, count, expected):
    assert distributed.local_gpu(local_rank, count) == torch.device(expected)


def test_more_processes_than_gpus_is_one_line():
    with pytest.raises(UserError, match=r"LOCAL_RANK 2 but only 2 GPUs are visible; .*--nproc_per_node=2"):
        distributed.local_gpu(2, 2)


@pytest.mark.parametrize("n,world,size", [(1001, 2, 500), (1001, 2, 501), (130, 1, 64), (10, 3, 3)])
def test_drop_last_gives_every_process_the_same_full_batches(n, world, size):
    info = DataInfo(1, 1, ["a"], mean=[0.0], std=[1.0])
    loader = Loader(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n),
                    Batching(size, shuffle_seed=0, drop_last=True), info, torch.device("cpu"))
    steps, seen = [], []
    for rank in range(world):
        loader.rank, loader.world = rank, world  # what torchrun's processes would have
        sizes = [len(labels) for _, labels in loader]
        assert set(sizes) <= {size} and len(sizes) == len(loader)
        steps.append(len(sizes))
        seen += [label for _, labels in loader for label in labels.tolist()]
    assert len(set(steps)) == 1 and len(set(seen)) == len(seen)  # same step count, no image twice


def test_deterministic_cublas_is_configured_before_training(monkeypatch, tmp_path):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, *a: seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
    monkeypatch.setattr(train_module, "is_main", lambda: False)  # skip the final test evaluation
    train_module.main(["run.deterministic=true", f"run.output_dir={tmp_path}"])
    assert seen == [":4096:8"]


def test_compile_with_sync_batchnorm_under_torchrun_is_refused(tiny_cfg, monkeypatch):
    monkeypatch.setattr(devices, "rank_and_world", lambda: (0, 2))
    cfg = tiny_cfg("run.compile=true", "model.sync_batchnorm=true")
    with pytest.raises(UserError, match="run.compile with model.sync_batchnorm under torchrun is not supported"):
        devices.sync_batchnorm(torch.nn.BatchNorm2d(2), cfg, torch.device("cpu"))


def test_optimizers_are_fused_on_cuda_only(tiny_cfg):
    model = torch.nn.Linear(2, 2)
    for name in ("sgd", "adam", "adamw"):
        cfg = tiny_cfg(f"train.optimizer={name}").train
        groups = param_groups(model, None, cfg)
        assert make_optimizer(groups, cfg, torch.device("cuda")).defaults["fused"] is True
        assert not make_optimizer(groups, cfg, torch.device("cpu")).defaults["fused"]


def test_checkpoints_hold_no_cuda_state_for_a_cpu_run(tiny_run):
    assert load_checkpoint(tiny_run.run_dir / "last.pt")["rng"]["cuda"] == [None]


@pytest.mark.gpu
@needs_cuda
def test_cuda_run_with_bf16_resumes_and_test_matches_training(tiny_cfg):
    cfg = tiny_cfg("run.device=cuda", "run.amp=bf16", "run.deterministic=true", "train.epochs=1")
    run_dir = train_module.train(cfg)
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert isinstance(ckpt["rng"]["cuda"][0], torch.Tensor)  # the one device's state, not every device's
    _, _, val = evaluate_checkpoint(run_dir / "best.pt", torch.device("cuda"), "val")
    assert val["accuracy"] == ckpt["history"][0]["val_acc"]
    resumed = runs.resumed_config(ckpt, ["train.epochs=2"])
    train_module.train(resumed, load_checkpoint(run_dir / "last.pt"), run_dir)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2
