"""Training on real MNIST from ../shared/datasets: skipped where that folder is absent, run in CI."""
import pytest
import torch

from config import load_config
from conftest import SHARED_DATASETS, needs_shared
from metrics import evaluate_checkpoint
from train import train


@pytest.mark.slow
def test_default_cnn_learns_real_mnist(tmp_path):
    needs_shared("MNIST/raw")
    cfg = load_config(None, ["data.name=mnist", f"data.root={SHARED_DATASETS}", "train.epochs=1",
                             f"run.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"])
    run_dir = train(cfg)
    ckpt, _, test = evaluate_checkpoint(run_dir / "best.pt", torch.device("cpu"))
    assert test["confusion"].sum() == 10_000
    assert test["accuracy"] >= 0.98  # one epoch; benchmarks/ measures the 99% runs
    assert ckpt["data"]["in_channels"] == 1 and ckpt["data"]["image_size"] == 28  # stored as plain data
