"""Files that must survive a crash: written to a temporary file, flushed, then renamed into place."""
import os
from pathlib import Path

import torch


def atomic_save(state: dict, path: Path) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash leaves the old file intact."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: torchrun ranks may share a cache file
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # includes Ctrl-C: never leave a half-written temporary file behind
        tmp.unlink(missing_ok=True)
        raise
