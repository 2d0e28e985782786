"""The bad-input catalogue: the scripts' entry points, called as the command line calls them, on bad
config, command line, data, checkpoints and devices. Each must exit non-zero with one line that names
the problem and the fix, and leave every file of an existing run untouched. The catalogue runs
in-process (run_cli is what the scripts' __main__ calls); a few cases also run as real processes to
prove that no traceback reaches the terminal."""
import random
import shutil

import pytest
import torch
from PIL import Image

from conftest import call_script, copy_run, snapshot, start_script
import test as test_script
from tools import compare
from tools import summary
import train

SCRIPTS = {"train.py": train.main, "test.py": test_script.main, "tools/summary.py": summary.main,
           "tools/compare.py": compare.main}


class Payload:
    """Unpickling this would create a file; a safe loader must refuse it."""

    def __reduce__(self):
        return (open, ("payload-ran", "w"))


@pytest.fixture(scope="module")
def workdir(tiny_run, tmp_path_factory):
    """A folder with a finished run and a set of broken inputs beside it."""
    root = tmp_path_factory.mktemp("catalogue")
    best = copy_run(tiny_run, root, "good") / "best.pt"
    data = best.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "empty.pt").write_bytes(b"")
    (root / "random.pt").write_bytes(random.Random(0).randbytes(5000))
    torch.save({"format_version": 1, "model": Payload()}, root / "evil.pt")
    torch.save({"weights": torch.ones(2)}, root / "foreign.pt")
    ckpt = torch.load(best, weights_only=True)
    ckpt["config"]["model"]["hidden"] = [32]
    torch.save(ckpt, root / "other_arch.pt")
    nan = torch.load(best, weights_only=True)
    nan["model"]["classifier.1.weight"][0, 0] = float("nan")
    torch.save(nan, root / "nan.pt")
    *rows, last = (best.parent / "metrics.csv").read_text().splitlines()
    half = "\n".join(rows + [",".join(last.split(",")[:3])])  # the last row cut after its third column
    for name, metrics in [("empty_metrics", ""), ("half_metrics", half)]:
        shutil.copytree(best.parent, root / name)
        (root / name / "metrics.csv").write_text(metrics)
    (root / "dup.yaml").write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    (root / "latin1.yaml").write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    (root / "bad.yaml").write_text("data:\n  name: [digits\n")
    (root / "empty.yaml").write_text("")
    (root / "a_file").write_text("not a folder")
    for name, breakage in [("few_images", "none"), ("empty_class", "empty"), ("text_file", "text"),
                           ("class_mismatch", "mismatch"), ("one_class", "one")]:
        make_folder(root / name, breakage)
    return root


def make_folder(root, breakage):
    for split in ("train", "test"):
        for label in ("a",) if breakage == "one" else ("a", "b"):
            folder = root / split / (label + ("x" if breakage == "mismatch" and split == "test" else ""))
            folder.mkdir(parents=True)
            if not (breakage == "empty" and split == "train" and label == "b"):
                for i in range(10):
                    Image.new("L", (8, 8), 10 * i).save(folder / f"{i}.png")
    if breakage == "text":
        (root / "train" / "a" / "readme.txt").write_text("not an image")


CASES = [
    # config
    ("train.py", ["train.lrr=0.1"], "unknown config key 'train.lrr'; did you mean 'lr'?"),
    ("train.py", ["modle.activation=tanh"], "unknown config key 'modle'; did you mean 'model'?"),
    ("train.py", ["train.lr=abc"], "train.lr: expected a number, got 'abc'"),
    ("train.py", ["train.lr=-0.1"], "train.lr: must be greater than 0"),
    ("train.py", ["train.epochs=0"], "train.epochs: must be at least 1"),
    ("train.py", ["model.dropout=2"], "model.dropout: must be between 0.0 and 1.0"),
    ("train.py", ["model.activation=swish"], "use one of relu | leaky_relu | tanh | sigmoid | gelu"),
    ("train.py", ["model.name=no_such_net"], "not a registered model; use one of cnn | lenet5 | resnet"),
    ("train.py", ["--config", "bad.yaml"], "config file bad.yaml is not valid YAML at line"),
    ("train.py", ["--config", "empty.yaml"], "config file empty.yaml is empty"),
    ("train.py", ["--config", "nowhere.yaml"], "config file nowhere.yaml not found"),
    ("train.py", ["model.conv_blocks.0.kernel_size=11"], "(8 + 2*1 - 11)/1 + 1 = 0 < 1"),
    # command line
    ("train.py", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("train.py", ["train.lr"], "override 'train.lr' is not of the form key=value"),
    ("train.py", ["model.hidden=[1,"], "override 'model.hidden=[1,': the value is not valid YAML"),
    ("train.py", ["--resume", "checkpoints/good", "model.activation=tanh"], "'model.activation' cannot change on --resume"),
    ("train.py", ["--resume", "checkpoints/good", "data.channels=3"], "'data.channels' cannot change on --resume"),
    ("train.py", ["run.name=good"], "run folder checkpoints/good already holds a run"),
    ("test.py", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    # data
    ("train.py", ["data.name=mnist", "data.root=nowhere"], "mnist files not found in nowhere/MNIST/raw"),
    ("train.py", ["data.name=folder", "data.root=nowhere"], "data folder nowhere/train not found"),
    ("train.py", ["data.name=folder", "data.root=empty_class", "data.channels=1"], "class folder empty_class/train/b is empty"),
    ("train.py", ["data.name=folder", "data.root=text_file", "data.channels=1"], "readme.txt is not a readable image"),
    ("train.py", ["data.name=folder", "data.root=class_mismatch", "data.channels=1"], "test has classes ['ax', 'bx'] but train has"),
    ("train.py", ["data.name=folder", "data.root=few_images", "data.val_fraction=0.01"], "leaves the validation split empty"),
    # checkpoints
    ("test.py", ["missing.pt"], "checkpoint missing.pt not found"),
    ("test.py", ["random.pt"], "random.pt is not a readable PyTorch checkpoint"),
    ("test.py", ["empty.pt"], "empty.pt is not a readable PyTorch checkpoint"),
    ("test.py", ["truncated.pt"], "truncated.pt is not a readable PyTorch checkpoint"),
    ("test.py", ["evil.pt"], "evil.pt was refused: it holds objects other than plain data"),
    ("test.py", ["foreign.pt"], "foreign.pt was not written by this template"),
    ("test.py", ["other_arch.pt"], "classifier.1.weight: model (32, 8) vs checkpoint (16, 8)"),
    ("train.py", ["--resume", "random.pt"], "random.pt is not a readable PyTorch checkpoint"),
    ("tools/summary.py", ["--checkpoint", "truncated.pt"], "truncated.pt is not a readable PyTorch checkpoint"),
    # devices and storage
    ("train.py", ["run.device=cuda"], "device 'cuda' requested but no CUDA device is available; use auto or cpu"),
    ("train.py", ["run.device=gpu"], "run.device: 'gpu' is not allowed; use auto | cpu | cuda | cuda:N"),
    ("test.py", ["run.device=tpu"], "run.device: 'tpu' is not allowed"),
    ("test.py", ["train.lr=0.1"], "only run.output_dir, run.device, data.max_pixels are read from the config"),
    ("train.py", ["run.output_dir=a_file/runs"], "cannot create folder a_file/runs (Not a directory); set run.output_dir"),
    # rules of issue 14, each also tested with generated cases in test_faults.py, test_inputs.py, test_fuzz.py
    ("train.py", ["run.name=.."], "run.name: '..' is not a folder name"),
    ("train.py", ["--config", "dup.yaml"], "dup.yaml is not valid YAML at line 3 (key 'lr' appears twice)"),
    ("train.py", ["--config", "latin1.yaml"], "latin1.yaml is not UTF-8 text (byte 16); save it as UTF-8"),
    ("train.py", [f"run.seed={2 ** 64}"], "run.seed: must be between 0 and 9223372036854775807"),
    ("train.py", ["train.batch_size=1"], "batch norm needs at least 2 images per batch"),
    ("train.py", ["data.name=folder", "data.root=one_class", "data.channels=1"], "has one class folder (a)"),
    ("test.py", ["--batch-size", "-3"], "argument --batch-size: must be at least 1, got -3"),
    ("test.py", ["nan.pt"], "nan.pt has NaN or infinite weights in 'classifier.1.weight'"),
    ("tools/compare.py", ["checkpoints/good", "empty_metrics"], "empty_metrics/metrics.csv has no epochs yet"),
    ("tools/compare.py", ["checkpoints/good", "half_metrics"], "half_metrics/metrics.csv line 4 lacks numbers"),
    # numbers
    ("train.py", ["train.lr=1e30", "train.scheduler=none", "run.name=diverges"], "the loss became NaN or infinite in epoch 1"),
]


def check_one_error_line(stderr: str, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0]


@pytest.mark.parametrize("script,args,message", CASES, ids=[" ".join([s, *a]) for s, a, _ in CASES])
def test_bad_input(workdir, script, args, message):
    if "run.device=cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    before = snapshot(workdir / "checkpoints")
    code, _, stderr = call_script(SCRIPTS[script], *args, cwd=workdir)
    assert code == 2
    check_one_error_line(stderr, message)
    after = snapshot(workdir / "checkpoints")
    assert {p: h for p, h in after.items() if p in before} == before  # nothing that existed changed
    assert not (workdir / "payload-ran").exists()
    shutil.rmtree(workdir / "checkpoints" / "diverges", ignore_errors=True)


# The notes' two scripts through a real process: a config error, an unsafe checkpoint (every case runs in-process).
PROCESS_CASES = [case for case in CASES if case[1] in (["train.lrr=0.1"], ["evil.pt"])]


def test_bad_input_in_a_real_process_prints_one_line_and_no_traceback(workdir):
    processes = [(start_script(script, *args, cwd=workdir), message) for script, args, message in PROCESS_CASES]
    for process, message in processes:  # started together: the start-ups overlap
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, stderr
        assert "Traceback" not in stderr
        check_one_error_line(stderr, message)
