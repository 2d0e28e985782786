"""Files that must survive a crash: written to a temporary file, flushed, then renamed into place."""
import os
import socket
from pathlib import Path

import torch


def atomic_save(state: dict, path: Path) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash leaves the old file intact."""
    # One name per process and machine: torchrun ranks on several machines may share a folder.
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # includes Ctrl-C: never leave a half-written temporary file behind
        tmp.unlink(missing_ok=True)
        raise
