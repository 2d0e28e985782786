"""Every pair of non-default switches, on tiny data: trained, tested (test and validation split), predicted,
exported and shown on the demo, each step checked against the others, or refused at load in one line.

    python benchmarks/pairs.py --list                # the switches, and the keys left out with why
    python benchmarks/pairs.py                       # every pair, 2 processes at a time
    python benchmarks/pairs.py --sample 300          # a deterministic sample of the pairs (seeded)
    python benchmarks/pairs.py --only model.whiten   # the pairs with a switch whose name contains this

The switches come from the config's declarations (engine/config.py, model.py): each non-default choice of a
Literal or registry key, each boolean flipped, an "on" value for the numeric keys whose default is off (ON),
and the options of the entry points (OPTIONS). The pairs run on a generated folder set of 3 colour classes (8x8),
so that each is quick; data.name=digits (config.yaml's default data), data.name=csv (the same files listed in a
CSV) and data.multilabel=true (a generated multi-label CSV set) are switches.

A pair passes when every step exits 0 and the numbers agree: test.py's accuracy on the test split is what
training printed for best.pt, its accuracy on the validation split is what training recorded for best.pt's
epoch, test.py --predict of the test split's files gives test.py's accuracy (multi-label: subset accuracy),
the export's own check passes (ONNX and .pt2 against PyTorch), its metadata's test accuracy is test.py's,
and the demo's top class is --predict's. It is refused when a step exits 2 with one `error:` line and
leaves the run folder as it was (train.py: no run folder at all). Anything else fails; the summary lists
each failure with its first line, and the exit status is 1 if any pair failed.
"""
import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # one thread per pair process

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine.config import DEFAULT_CONFIG, Config  # noqa: E402
from engine.entry import Parser, run_cli  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.yamlfile import flatten, read_yaml  # noqa: E402
from model import MODELS  # noqa: E402

BASE = ["train.epochs=1", "train.batch_size=32", "data.image_size=8", "model.conv_blocks.1.pool=none",
        "model.conv_blocks.2.pool=none", "run.device=cpu", "run.threads=1", "model.conv_blocks.0.out_channels=8",
        "model.conv_blocks.1.out_channels=8", "model.conv_blocks.2.out_channels=8", "model.hidden=[16]",
        "model.widths=[8, 8, 8]", "run.name=p"]
# Keys whose values are paths, names, sizes or rates rather than features that may clash, or that need what a
# tiny offline pass lacks.
LEFT_OUT = {
    "data.root": "a path", "data.cache_dir": "a path", "data.labels": "a path", "data.test_labels": "a path",
    "data.image_column": "a column name", "data.label_column": "a column name", "data.label_separator": "a character",
    "data.val_fraction": "a size", "data.fold": "a size (data.folds is a switch)", "data.crop_padding": "a size",
    "data.max_pixels": "a limit", "data.num_workers": "a count (worker processes of a streamed set)",
    "model.pretrained": "imagenet needs a download; a PATH needs another run",
    "model.leaky_slope": "a rate", "model.conv_blocks": "sizes", "model.hidden": "sizes", "model.widths": "sizes",
    "model.dropout": "a rate",
    "train.epochs": "a size", "train.batch_size": "a size", "train.eval_batch_size": "a size", "train.lr": "a rate",
    "train.momentum": "a rate", "train.weight_decay": "a rate", "train.step_epochs": "a size",
    "train.step_gamma": "a rate", "train.backbone_lr": "a rate", "train.log_interval": "a count",
    "run.seed": "a number", "run.device": "the machine", "run.output_dir": "a path", "run.name": "a name",
    "run.threads": "the machine", "run.compile": "needs a C++ compiler and minutes per pair",
    "log.hooks": "tracking, not the model", "log.mlflow_uri": "tracking", "log.mlflow_checkpoint": "tracking",
}
# An "on" value for each numeric key whose default is off (or a size that changes what runs).
ON = {"data.image_size": [4, 2], "data.folds": 3, "data.random_erasing": 0.5, "data.max_memory_mb": 0,
      "data.test_fraction": 0.25, "train.accumulate": 2, "train.label_smoothing": 0.1, "train.mixup_alpha": 0.4,
      "train.cutmix_alpha": 1.0, "train.freeze_epochs": 1, "train.patience": 1, "train.grad_clip": 1.0,
      "train.ema_decay": 0.99, "train.ema_every": 50, "train.val_every": 0}
# The entry points' options that turn a feature on: (switch name, step -> its arguments).
OPTIONS = [("--calibrate", {"test": ["--calibrate"]}),
           ("--min-confidence=0.5", {"predict": ["--min-confidence", "0.5"], "demo": ["0.5"]}),
           ("--int8", {"export": ["--int8", "--max-drop", "100"]})]
SOURCES_GENERATED = ("digits", "folder", "csv")  # data.name values this pass has data for (the others: downloads)
BASE_SOURCE = "folder"  # the pass's base data: a generated folder set; data.name=digits is a switch
TIMEOUT = 600  # seconds a pair may take before it counts as failed


@dataclass(frozen=True)
class Switch:
    name: str  # as a user writes it: key=value, or an option
    overrides: tuple[str, ...] = ()
    options: dict = field(default_factory=dict, hash=False, compare=False)  # step -> arguments


def switches() -> list[Switch]:
    """Each non-default choice of every Literal or registry key, each boolean flipped, ON's values, OPTIONS."""
    defaults, found = flatten(read_yaml(DEFAULT_CONFIG)), []
    for section in dataclasses.fields(Config):
        hints = get_type_hints(section.type)
        for f in dataclasses.fields(section.type):
            key = f"{section.name}.{f.name}"
            if key in LEFT_OUT:
                continue
            default = BASE_SOURCE if key == "data.name" else defaults[key]
            on = ON.get(key, [])
            values = [v for v in choices(key, hints[f.name], f.metadata) if v != default] + (
                on if isinstance(on, list) else [on])
            found += [Switch(f"{key}={text(v)}", (f"{key}={text(v)}",)) for v in values]
    return found + [Switch(name, (), options) for name, options in OPTIONS]


def choices(key: str, tp, metadata: dict) -> list:
    if key == "model.name":
        return list(MODELS)  # torchvision's models too would be hundreds; the adapter has tests of its own
    if key == "data.name":
        return [name for name in metadata["choices"] if name in SOURCES_GENERATED and name != BASE_SOURCE]
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    if get_origin(tp) is Union or type(tp).__name__ == "UnionType":
        return [v for option in get_args(tp) if get_origin(option) is Literal for v in get_args(option)]
    if tp is bool:
        return [True, False]
    return list(metadata.get("choices", []))


def text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def all_pairs(found: list[Switch]) -> list[tuple[Switch, Switch]]:
    """Pairs of switches of different keys (two values of one key would just override each other)."""
    return [(a, b) for a, b in itertools.combinations(found, 2) if key_of(a) != key_of(b)]


def sample(pairs: list[tuple[Switch, Switch]], count: int) -> list[tuple[Switch, Switch]]:
    """count pairs, deterministically: in a seeded random order, each time the pair whose switches have been
    chosen least so far, so that every switch meets about as many others (2 * count / switches)."""
    order, seen, chosen = random.Random(0).sample(pairs, len(pairs)), {}, []
    for _ in range(count):
        pair = min(order, key=lambda p: seen.get(p[0].name, 0) + seen.get(p[1].name, 0))
        order.remove(pair)
        chosen.append(pair)
        for switch in pair:
            seen[switch.name] = seen.get(switch.name, 0) + 1
    return sorted(chosen, key=pairs.index)


def key_of(switch: Switch) -> str:
    return switch.name.partition("=")[0]


# --- tiny data -------------------------------------------------------------------------------------------------

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


def make_data(work: Path) -> None:
    """work/folder: 3 colour classes, 40 training and 8 test 8x8 images each; work/folder.csv the same as a CSV;
    work/multilabel: 100 images with a coloured quarter per label; work/digits_test: the digits' test split as
    PNGs in class folders (the digits are stored as tensors), for --predict."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for split, count in (("train", 40), ("test", 8)):
        for name, colour in COLOURS.items():
            (work / "folder" / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = torch.randint(-90, 90, (8, 8, 3), generator=generator)
                pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(work / "folder" / split / name / f"{i}.png")
                rows.append(f"folder/{split}/{name}/{i}.png,{name},{split}")
    (work / "folder.csv").write_text("\n".join(["file,label,split", *rows]) + "\n")
    (work / "multilabel" / "img").mkdir(parents=True, exist_ok=True)
    rows = ["file,labels,split"]
    for i in range(100):
        present = [name for name in COLOURS if torch.rand(1, generator=generator) < 0.5]
        image = Image.new("RGB", (8, 8), (100 + i,) * 3)
        for q, name in enumerate(present):
            image.paste(COLOURS[name], (4 * (q % 2), 4 * (q // 2), 4 * (q % 2) + 4, 4 * (q // 2) + 4))
        image.save(work / "multilabel" / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{' '.join(present)},{'test' if i >= 76 else 'train'}")
    (work / "multilabel" / "train.csv").write_text("\n".join(rows) + "\n")
    from engine.config import load_config
    from engine.datasets import load_split

    images, labels = load_split(load_config(None, []).data, "test")
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        (work / "digits_test" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(work / "digits_test" / str(label) / f"{i}.png")


def data_overrides(overrides: list[str], work: Path) -> tuple[list[str], str]:
    """The overrides that point the pair at its data, and which set it is: the generated folder set (the base:
    3 classes, so that each pair is quick; its train/ folder alone with data.test_fraction), data.name=digits
    (config.yaml's default), data.name=csv -> the folder set's CSV, data.multilabel=true -> the multi-label set."""
    given = dict(text.split("=", 1) for text in overrides)
    name = given.get("data.name") or ("csv" if given.get("data.multilabel") == "true" else "folder")
    cache = [f"data.cache_dir={work / 'cache'}"]
    if name == "digits":
        return [], "digits"
    if name == "folder":
        root = work / "folder" / ("train" if "data.test_fraction" in given else "")
        return ["data.name=folder", f"data.root={root}", *cache], "folder"
    if given.get("data.multilabel") == "true":
        return ["data.name=csv", f"data.root={work / 'multilabel'}", "data.labels=train.csv",
                "data.label_column=labels", *cache], "multilabel"
    return ["data.name=csv", f"data.root={work}", "data.labels=folder.csv", *cache], "csv"


# --- one pair, in a process of its own ---------------------------------------------------------------------------

class Refused(Exception):
    """A step exited 2 with one error line."""


class Failed(Exception):
    """A step crashed, exited otherwise, or its numbers disagree with another step's."""


def call(main, args: list[str], cwd: Path) -> tuple[int, str, str]:
    """A script's main in this process as its command line would run it: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    from engine.cli import run_cli as script_cli  # ShapeError too is the user's

    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            script_cli(main, args)
            code = 0
        except SystemExit as exit_info:
            code = 0 if exit_info.code is None else exit_info.code
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def step(name: str, main, args: list[str], cwd: Path, run_dir: Path | None = None) -> str:
    """Run one step; its stdout, or Refused / Failed. A refusal must leave the run folder as it was."""
    before = snapshot(run_dir) if run_dir is not None else None
    code, out, err = call(main, args, cwd)
    lines = err.strip().splitlines()
    if code == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        if run_dir is not None and snapshot(run_dir) != before:
            raise Failed(f"{name}: refused but changed the run folder: {lines[0]}")
        raise Refused(f"{name}: {lines[0]}")
    if code != 0:
        first = next((line for line in lines if line.startswith("error")), lines[-1] if lines else "")
        raise Failed(f"{name}: exit {code}: {first[:300]}")
    return out


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def run_pair(pair: tuple[Switch, ...], work: Path, pair_dir: Path, skip: tuple[str, ...] = ()) -> None:
    """Train, test, predict, export and demo one pair (skip: steps left out, e.g. "export"); raises Refused or
    Failed."""
    import train
    from engine.checkpoint import load_checkpoint

    overrides = [o for s in pair for o in s.overrides]
    options = {}
    for s in pair:
        for name, args in s.options.items():
            options[name] = options.get(name, []) + args
    data, kind = data_overrides(overrides, work)
    pair_dir.mkdir(parents=True)
    try:
        trained = step("train.py", train.main, [*BASE, f"run.output_dir={pair_dir / 'checkpoints'}", *data,
                                                *overrides], pair_dir)
    except Refused:
        if (pair_dir / "checkpoints").exists() and any((pair_dir / "checkpoints").iterdir()):
            raise Failed("train.py: refused but left a run folder") from None
        raise
    run_dir = pair_dir / "checkpoints" / "p"
    ckpt = load_checkpoint(run_dir / "best.pt")
    report = test_step(run_dir, ckpt, trained, options.get("test", []))
    files, predicted = predict_step(run_dir, ckpt, report, test_files(ckpt, kind, work), options.get("predict", []))
    if "export" not in skip:
        export_step(run_dir, ckpt, report, options.get("export", []))
    if "demo" not in skip:
        demo_step(run_dir, files[0], predicted[str(files[0])], ckpt["data"]["multilabel"], options.get("demo"))


def test_step(run_dir: Path, ckpt: dict, trained: str, options: list[str]) -> dict:
    """test.py on the test split repeats the line train.py printed for best.pt (over the run's views), and on the
    validation split (test.py --split val's evaluation) what training recorded for best.pt's epoch."""
    import test as test_script
    from engine.metrics import evaluate_checkpoint

    multilabel, tta = ckpt["data"]["multilabel"], ckpt["config"]["train"]["tta"]
    score = "map" if multilabel else "accuracy"
    step("test.py", test_script.main, [str(run_dir), *options], run_dir.parents[1], run_dir)
    report = json.loads((run_dir / "test_report.json").read_text())
    line = next(line for line in trained.splitlines() if line.startswith("test (best.pt"))
    said = line.split(f"with tta {tta} ")[1].removeprefix("mAP ").split()[0] if tta != "none" else (
        line.split("mAP ")[1].split()[0] if multilabel else line.split("accuracy ")[1].split()[0])
    if said != percent(report[score]):
        raise Failed(f"test.py: test {score} {percent(report[score])} but train.py printed {said} ({line})")
    with contextlib.redirect_stdout(io.StringIO()):
        val = evaluate_checkpoint(run_dir / "best.pt", torch.device("cpu"), "val")[2]
    recorded = ckpt["history"][ckpt["epoch"] - 1]["val_map" if multilabel else "val_acc"]
    if val[score] != recorded:
        raise Failed(f"validation split: {score} {val[score]!r} but training recorded {recorded!r}")
    return report


def predict_step(run_dir: Path, ckpt: dict, report: dict, test_split: tuple[list[Path], dict],
                 options: list[str]) -> tuple[list[Path], dict]:
    """test.py --predict of the test split's files is right on as many as test.py's accuracy says (multi-label:
    subset accuracy); returns the files and what it predicted for each."""
    import test as test_script

    files, truth = test_split
    output = run_dir.parents[1] / "predictions.csv"
    step("test.py --predict", test_script.main, [str(run_dir), "--predict", *map(str, files), "--output",
                                                str(output), *options], run_dir.parents[1], run_dir)
    predicted = read_predictions(output, ckpt["data"]["multilabel"])
    hits = sum(predicted.get(str(f)) == truth[str(f)] for f in files)
    expected = report["subset_accuracy" if ckpt["data"]["multilabel"] else "accuracy"]
    if hits != round(expected * len(files)) or len(predicted) != len(files) or len(files) != report["num_images"]:
        raise Failed(f"test.py --predict: {hits} of {len(files)} files right, test.py: {percent(expected)} of "
                     f"{report['num_images']}")
    return files, predicted


def export_step(run_dir: Path, ckpt: dict, report: dict, options: list[str]) -> None:
    """export.py with the run's views (it checks ONNX and .pt2 against PyTorch itself); its metadata's test score
    is test.py's (in float32 runs: the check is in float32)."""
    from tools import export

    multilabel, tta = ckpt["data"]["multilabel"], ckpt["config"]["train"]["tta"]
    step("export.py", export.main, [str(run_dir), "--tta", tta, *options], run_dir.parents[1], run_dir)
    score = "map" if multilabel else "accuracy"
    exported = json.loads(onnx_metadata(run_dir / "model.onnx")["test_map" if multilabel else "test_accuracy"])
    if ckpt.get("amp", "none") == "none" and exported != report[score]:
        raise Failed(f"export.py: metadata test {score} {exported!r}, test.py {report[score]!r}")


def test_files(ckpt: dict, kind: str, work: Path) -> tuple[list[Path], dict[str, object]]:
    """The test split's image files and each one's truth (a class name, or a set of labels)."""
    if kind == "multilabel":
        rows = list(csv.DictReader(open(work / "multilabel" / "train.csv")))
        pairs = [(work / "multilabel" / r["file"], frozenset(r["labels"].split())) for r in rows
                 if r["split"] == "test"]
    elif ckpt["data"]["held_out"]:
        pairs = [(work / "folder" / "train" / name, name.split("/")[0]) for name in ckpt["data"]["held_out"]]
    else:
        folder = work / ("digits_test" if kind == "digits" else "folder/test")
        pairs = [(f, f.parent.name) for f in sorted(folder.rglob("*.png"))]
    return [f for f, _ in pairs], {str(f): truth for f, truth in pairs}


def read_predictions(path: Path, multilabel: bool) -> dict[str, object]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if multilabel:
        return {r["file"]: frozenset(v for k, v in r.items() if k.startswith("class_") and v) for r in rows}
    return {r["file"]: r["class_1"] for r in rows}


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def demo_step(run_dir: Path, file: Path, expected, multilabel: bool, min_confidence: list | None) -> None:
    """The demo's top class (multi-label: its labels) for one test image is --predict's."""
    from engine.errors import UserError
    from tools import demo

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            page = demo.load_demo(run_dir / "best.pt", torch.device("cpu"), 10 ** 7,
                                  float(min_confidence[0]) if min_confidence else None)
    except UserError as err:
        raise Refused(f"demo.py: error: {err}") from None
    scores, _, _, verdict = demo.analyse(page, Image.open(file))
    shown = frozenset(scores) if multilabel else verdict.removeprefix("prediction: ").split(" (")[0]
    if min_confidence and shown == "unknown":
        return
    if shown != expected:
        raise Failed(f"demo.py: {verdict} but test.py --predict said {expected}")


def child(pair: tuple[Switch, Switch], work: Path, pair_dir: Path, result_path: Path) -> None:
    """The body of a pair's process: its outcome as JSON in result_path."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        run_pair(pair, work, pair_dir)
        outcome, message = "passed", ""
    except Refused as err:
        outcome, message = "refused", str(err)
    except Failed as err:
        outcome, message = "failed", str(err)
    except BaseException as err:  # the harness itself: still one line for the table
        outcome, message = "failed", f"harness: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    result_path.write_text(json.dumps({"pair": [s.name for s in pair], "outcome": outcome, "message": message,
                                       "seconds": round(time.perf_counter() - start, 1)}))


def run_all(pairs: list[tuple[Switch, Switch]], work: Path, processes: int) -> list[dict]:
    """Each pair in a process of its own, forked from this one (so no state leaks from one pair into another, and
    each starts with the modules and caches the warm-up loaded), `processes` at a time."""
    results, running, queue = [], {}, list(enumerate(pairs))
    try:
        while queue or running:
            while queue and len(running) < processes:
                i, pair = queue.pop(0)
                running[start(pair, work, i)] = (pair, work / "results" / f"{i}.json", time.monotonic())
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                for other, (_, _, started) in running.items():
                    if time.monotonic() - started > TIMEOUT:
                        os.kill(other, signal.SIGKILL)
                time.sleep(0.05)
                continue
            pair, result_path, started = running.pop(pid)
            results.append(json.loads(result_path.read_text()) if result_path.is_file() else {
                "pair": [s.name for s in pair], "outcome": "failed", "seconds": round(time.monotonic() - started, 1),
                "message": "the pair's process died (killed after the timeout, or a crash)"})
            result = results[-1]
            print(f"[{len(results)}/{len(pairs)}] {result['outcome']:<8} {' + '.join(result['pair'])}  "
                  f"({result['seconds']} s){'  ' + result['message'] if result['message'] else ''}", flush=True)
    finally:  # Ctrl-C: the running pairs end too
        for pid in running:
            os.kill(pid, signal.SIGKILL)
    return results


def start(pair: tuple[Switch, Switch], work: Path, i: int) -> int:
    """Fork the process of pair number i; returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            child(pair, work, work / "pairs" / str(i), work / "results" / f"{i}.json")
            code = 0
        finally:
            os._exit(code)
    return pid


def warm_up(work: Path) -> None:
    """One pair of no switches in this process, before any is forked: it must pass, and it loads what every pair
    needs once (a first export alone builds torch.onnx's operator registry, 6 of its 9 s)."""
    start_time = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_pair((), work, work / "pairs" / "warm-up")
    print(f"the base alone passes (warm-up, {time.perf_counter() - start_time:.0f} s)")


def summary(results: list[dict], total: int, seconds: float) -> str:
    counts = {name: sum(r["outcome"] == name for r in results) for name in ("passed", "refused", "failed")}
    lines = [f"{len(results)} pairs of {total} run in {seconds:.0f} s: {counts['passed']} passed, "
             f"{counts['refused']} refused at load in one line, {counts['failed']} failed"]
    lines += [f"  failed: {' + '.join(r['pair'])}: {r['message']}" for r in results if r["outcome"] == "failed"]
    reasons: dict[str, int] = {}
    for r in results:
        if r["outcome"] == "refused":
            reason = r["message"].split("error: ", 1)[-1][:90]
            reasons[reason] = reasons.get(reason, 0) + 1
    lines += [f"  refused {n}x: {reason}..." for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the switches and the keys left out, and stop")
    parser.add_argument("--sample", type=int, metavar="N", help="a deterministic sample of N pairs (seed 0)")
    parser.add_argument("--only", metavar="TEXT", help="only the pairs with a switch whose name contains TEXT")
    parser.add_argument("--pair", action="append", metavar="A+B", help="run this pair (switch names joined by +); "
                        "repeatable")
    parser.add_argument("--processes", type=int, default=2, help="pairs at a time (default 2)")
    parser.add_argument("--work", default=str(ROOT / "checkpoints" / "pairs"), help="folder for the runs")
    args = parser.parse_args(argv)
    found = switches()
    if args.list:
        print(f"{len(found)} switches:\n  " + "\n  ".join(s.name for s in found))
        print("left out:\n  " + "\n  ".join(f"{key}: {why}" for key, why in LEFT_OUT.items()))
        return 0
    pairs = all_pairs(found)
    total = len(pairs)
    if args.only:
        pairs = [p for p in pairs if any(args.only in s.name for s in p)]
    if args.pair:
        by_name = {s.name: s for s in found}
        wanted = [tuple(name.strip() for name in text.split("+")) for text in args.pair]
        unknown = [name for names in wanted for name in names if name not in by_name]
        if unknown:
            raise UserError(f"--pair: {unknown[0]!r} is not a switch; python benchmarks/pairs.py --list lists them")
        pairs = [tuple(by_name[name] for name in names) for names in wanted]
    if args.sample and args.sample < len(pairs):
        pairs = sample(pairs, args.sample)
    work = Path(args.work).resolve()
    if work.exists():
        import shutil

        shutil.rmtree(work)
    (work / "results").mkdir(parents=True)
    print(f"{len(found)} switches, {total} pairs; running {len(pairs)} in {work}, {args.processes} at a time")
    make_data(work)
    start_time = time.perf_counter()
    try:
        warm_up(work)
    except (Refused, Failed) as err:
        print(f"the base alone does not pass: {err}")
        return 1
    results = run_all(pairs, work, args.processes)
    text = summary(results, total, time.perf_counter() - start_time)
    (work / "summary.txt").write_text(text + "\n")
    with open(work / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["first", "second", "outcome", "seconds", "message"])
        writer.writerows([*r["pair"], r["outcome"], r["seconds"], r["message"]] for r in results)
    print(text)
    return 1 if any(r["outcome"] == "failed" for r in results) else 0


if __name__ == "__main__":
    run_cli(main)
