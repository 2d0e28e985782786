"""Training on real MNIST from ../shared/datasets: skipped where that folder is absent, run in CI."""
import pytest
import torch

from conftest import SHARED_DATASETS, needs_shared
from engine.config import load_config
from engine.metrics import evaluate_checkpoint
from train import train


@pytest.mark.slow
def test_default_cnn_learns_real_mnist(tmp_path):
    needs_shared("MNIST/raw")
    # one epoch on a fifth of the training split (12,000 images; 97.7 % test here): real files, read and
    # learned, in a few seconds. benchmarks/recipes.py measures the full runs.
    cfg = load_config(None, ["data.name=mnist", f"data.root={SHARED_DATASETS}", "train.epochs=1",
                             "data.val_fraction=0.8", f"run.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"])
    run_dir = train(cfg)
    ckpt, _, test = evaluate_checkpoint(run_dir / "best.pt", torch.device("cpu"))
    assert test["confusion"].sum() == 10_000
    assert test["accuracy"] >= 0.96
    assert ckpt["data"]["in_channels"] == 1 and ckpt["data"]["image_size"] == 28  # stored as plain data
