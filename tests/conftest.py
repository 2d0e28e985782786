"""Shared test helpers: tiny configs built from config.yaml plus overrides, and script runners."""
import subprocess
import sys
from pathlib import Path

import pytest

from config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
# Small and quick on the embedded digits: two narrow conv blocks, two epochs.
TINY = ["train.epochs=2", "model.conv_blocks.0.out_channels=8", "model.conv_blocks.1.out_channels=8",
        "model.conv_blocks.2.out_channels=8", "model.hidden=[16]"]


@pytest.fixture
def tiny_cfg(tmp_path):
    """Build a tiny config writing its runs under tmp_path: tiny_cfg('train.lr=0.1', ...)."""
    def make(*overrides: str) -> Config:
        return load_config(None, [*TINY, f"run.output_dir={tmp_path / 'checkpoints'}",
                                  f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    return make


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts as a user would, from cwd."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def needs_shared(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} is absent (a user's clone has no ../shared); CI provides it")
    return path
