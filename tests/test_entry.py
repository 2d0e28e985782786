"""Every script (train.py, test.py, tools/, benchmarks/) ends through the one entry point, engine/entry.py's run_cli:
its __main__ block is `run_cli(main)`, and that run_cli maps an injected UserError, OSError, DataLoader worker
error, unexpected exception and Ctrl-C to the documented exit status and at most one short line."""
import ast
import errno
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from engine.entry import LINE_MAX
from engine.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(["train.py", "test.py", *(str(p.relative_to(ROOT)) for p in (ROOT / "tools").glob("*.py")),
                  *(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py"))])


def main_block(script: str) -> list[ast.stmt]:
    """The statements under `if __name__ == "__main__":`."""
    tree = ast.parse((ROOT / script).read_text(encoding="utf-8"))
    blocks = [node.body for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    assert len(blocks) == 1, f"{script} has no (or several) __main__ blocks"
    return blocks[0]


def load(script: str):
    """The script as a module (its __main__ block not run)."""
    spec = importlib.util.spec_from_file_location(f"entry_test_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str((ROOT / script).parent))  # benchmarks import their neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str((ROOT / script).parent))
    return module


def worker_error(err: Exception) -> Exception:
    """err as a DataLoader worker's exception reaches the main process: its type, the worker's traceback as text."""
    try:
        raise err
    except Exception:
        wrapped = torch._utils.ExceptionWrapper(where="in DataLoader worker process 0")
    try:
        wrapped.reraise()
    except Exception as reraised:
        return reraised


INJECTED = {  # name -> (exception, exit status, text the one line holds)
    "UserError": (UserError("data.root: folder x not found; fix it"), 2, "error: data.root: folder x not found"),
    "OSError": (OSError(errno.EACCES, "Permission denied", "photos/a.png"), 2, "error: photos/a.png: Permission denied"),
    "worker UserError": (worker_error(UserError("photos/b\nc.png is not a readable image")), 2,
                         "error: photos/b\\nc.png is not a readable image"),
    "worker OSError": (worker_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "gone.png")), 2,
                       "gone.png"),
    "rename OSError": (OSError(errno.EXDEV, "Invalid cross-device link", "a.tmp", None, "/mnt/a"), 2,
                       "error: a.tmp -> /mnt/a: Invalid cross-device link"),
    "OSError of a write() that names no file": (OSError(errno.ENOSPC, "No space left on device"), 2,
                                                "error: a file could not be written or read: No space left on device"),
    "network OSError": (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), 2,
                        "error: Connection refused (ConnectionRefusedError); check the ports and network"),
    "unexpected": (RuntimeError("boom " * 1000), 3, "error: unexpected RuntimeError"),
    "Ctrl-C": (KeyboardInterrupt(), 130, ""),
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_ends_through_run_cli(script, capsys):
    assert [ast.unparse(statement) for statement in main_block(script)] == ["run_cli(main)"], script
    module = load(script)
    assert module.run_cli.__module__ in ("engine.cli", "engine.entry")
    for name, (err, status, text) in INJECTED.items():
        def main(argv):
            raise err
        with pytest.raises(SystemExit) as ended:
            module.run_cli(main, [])
        assert ended.value.code == status, (script, name)
        lines = capsys.readouterr().err.strip().splitlines()
        if status == 130:
            assert not lines
            continue
        assert len(lines) == 1 and text in lines[0] and len(lines[0]) <= LINE_MAX, (script, name, lines)
        if status == 3:
            Path(lines[0].split("the full traceback is in ")[1].split(";")[0]).unlink()


def test_a_script_main_returning_a_status_exits_with_it():
    from engine.entry import run_cli
    with pytest.raises(SystemExit) as ended:
        run_cli(lambda argv: 1, [])
    assert ended.value.code == 1
    run_cli(lambda argv: None, [])  # 0: returns normally
