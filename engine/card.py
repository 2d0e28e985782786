"""MODEL_CARD.md: what a run's best.pt is, what it was trained on, how well and how far to trust it.

train.py writes it when training ends, test.py refreshes it after testing best.pt, export.py after an
export; all offline, from the checkpoint, the data set's files and the run folder. Each `## ` section
is rebuilt from what the caller knows; one it cannot rebuild (test results without a test run, the
code version after training, the data set's files on a machine without them) keeps its earlier text.
The last section, "Intended use and limits", is the user's: written once, then kept as it is.
"""
import csv
import hashlib
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import torch
import yaml

from engine.calibration import calibrate, describe_fit, describe_thresholds, split_calibration
from engine.checkpoint import config_of, data_of, model_from_checkpoint, temperature_of
from engine.config import Config, changed_keys, to_dict
from engine.datasets import file_list, source_of
from engine.escape import markdown_cell, printable
from engine.hooks import make_hooks
from engine.metrics import evaluate_checkpoint, per_class
from engine.storage import write_text
from engine.yamlfile import Dumper

CARD_NAME = "MODEL_CARD.md"
EXPORTS_NAME = "exports.json"  # export.py: each exported file's checkpoint, size, sha256 and check
USER_SECTION = "## Intended use and limits"
ROOT = Path(__file__).resolve().parents[1]


def file_list_digest(cfg: Config) -> tuple[str, int] | None:
    """sha256 of the data set's sorted (split/path relative to its folder, size in bytes) list, and the file
    count; None when the files are not on this machine. Names and sizes, not contents: cheap for 60,000 files."""
    files = file_list(cfg.data)
    if files is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}|{files[name].stat().st_size}\n".encode())
    return digest.hexdigest(), len(files)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """The git commit of the code (and whether it had uncommitted changes), for the card's reproduce section."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git is not installed)"
    if commit.returncode != 0:
        return "unknown (not a git checkout)"
    return f"git commit {commit.stdout.strip()}" + (" with uncommitted changes" if dirty.stdout.strip() else "")


def record_export(file: Path, checkpoint: Path, epoch: int, check: str) -> None:
    """Add an exported file, what it came from and how it was checked to its folder's exports.json."""
    path = file.parent / EXPORTS_NAME
    try:
        exports = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        exports = {}
    exports = exports if isinstance(exports, dict) else {}
    exports[file.name] = {"checkpoint": checkpoint.name, "epoch": epoch, "bytes": file.stat().st_size,
                          "sha256": sha256_of(file), "check": check, "date": time.strftime("%Y-%m-%d %H:%M")}
    write_text(path, json.dumps(exports, indent=2))


def data_section(cfg: Config, ckpt: dict) -> str | None:
    info = data_of(ckpt)
    found = file_list_digest(cfg)
    if found is None:
        return None
    where = markdown_cell(source_of(cfg.data).where(cfg.data))
    lines = [f"- data set: {cfg.data.name} ({where}); {info.in_channels}x{info.image_size}x{info.image_size} images, "
             f"{len(info.class_names)} classes; validation: {100 * cfg.data.val_fraction:g}% of the training "
             f"split (stratified, run.seed {cfg.run.seed})",
             f"- file list: sha256 `{found[0][:16]}` of the names and sizes of its {found[1]:,} "
             f"file{'s' if found[1] != 1 else ''} "
             "(another copy of the data set with the same files gives the same hash)"]
    if info.class_counts:
        lines += ["", "| class | training images |", "| --- | ---: |"]
        lines += [f"| {markdown_cell(name)} | {count:,} |" for name, count in zip(info.class_names, info.class_counts)]
    return "\n".join(lines)


def model_section(cfg: Config, ckpt: dict) -> str:
    info = data_of(ckpt)
    parameters = sum(p.numel() for p in model_from_checkpoint(ckpt, torch.device("cpu")).parameters())
    best = ckpt["history"][-1] if ckpt["history"] else {}
    val = f"val accuracy {100 * best['val_acc']:.2f}%" if "val_acc" in best else "val accuracy not recorded"
    settings = yaml.dump({"model": to_dict(cfg)["model"]}, Dumper=Dumper, sort_keys=False, width=120)
    return "\n".join([
        f"- model: {cfg.model.name}, {parameters:,} parameters",
        f"- checkpoint: best.pt, saved after epoch {ckpt['epoch']} (the best {cfg.train.best_metric} on the "
        f"validation split; {val}), trained in {ckpt.get('amp', 'none')} precision",
        f"- input: images of {info.in_channels}x{info.image_size}x{info.image_size}, normalised with mean "
        f"{[round(m, 4) for m in info.mean]} and std {[round(s, 4) for s in info.std]} (0..1 scale); "
        f"output: probabilities of the classes {', '.join(map(markdown_cell, info.class_names))}",
        "", "```yaml", settings.rstrip("\n"), "```"])


def training_section(cfg: Config, run_dir: Path) -> str:
    lines = [f"- changed from config.yaml: {markdown_cell(' '.join(changed_keys(cfg))) or 'none'}"]
    try:
        with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
            history = list(csv.DictReader(f))
        seconds = sum(float(row.get("seconds") or 0) for row in history)
        last = history[-1]
        lines += [f"- {len(history)} of {cfg.train.epochs} epochs in {seconds:.0f} s of training and validation "
                  "(metrics.csv, curves.png)",
                  f"- after the last epoch: train accuracy {100 * float(last['train_acc']):.2f}%, "
                  f"val accuracy {100 * float(last['val_acc']):.2f}%"]
    except (OSError, ValueError, KeyError, IndexError):
        lines.append("- metrics.csv is missing or unreadable: the epochs are not listed")
    return "\n".join(lines)


def test_section(ckpt: dict, results: dict | None) -> str | None:
    if results is None:
        return None
    names = data_of(ckpt).class_names
    count = int(results["confusion"].sum())
    lines = [f"On the test split ({count:,} images; {time.strftime('%Y-%m-%d')}): accuracy "
             f"**{100 * results['accuracy']:.2f}%**, balanced accuracy {100 * results['balanced_accuracy']:.2f}%, "
             f"macro F1 {100 * results['macro_f1']:.2f}%, loss {results['loss']:.4f}.", "",
             "| class | accuracy (recall) | precision | F1 | test images |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {markdown_cell(row['class'])} | {100 * row['recall']:.2f}% | {100 * row['precision']:.2f}% | "
              f"{100 * row['f1']:.2f}% | {row['support']:,} |" for row in per_class(results["confusion"], names)]
    return "\n".join(lines)


def calibration_section(ckpt: dict, results: dict | None, path: Path) -> str | None:
    if results is None:
        return None
    temperature, fit = temperature_of(ckpt, path), ckpt.get("calibration")
    if fit is None:
        lines = ["- not calibrated (the run predates temperature scaling): `python test.py <run> --calibrate` "
                 "fits a temperature on its validation split"]
    elif fit.get("errors") == 0:
        lines = [f"- temperature 1: the {fit['split']} split ({fit['images']} images) had no misclassified image, "
                 "so it gave no evidence for another temperature; the probabilities are the model's own"]
    else:
        lines = [f"- temperature {temperature:.3f}, fitted on the {fit['split']} split ({fit['images']} images, "
                 f"{fit.get('fitted', 'date not recorded')}): validation NLL {fit['nll_before']:.4f} -> "
                 f"{fit['nll_after']:.4f}; every probability the model gives (test.py --predict, the exported "
                 "files, the demo) is softmax(logits / temperature)"]
    test = split_calibration(results, temperature)
    lines += [f"- test split, top-1 confidence in {test['bins']} bins: expected calibration error "
              f"{100 * test['ece_before']:.2f}% without the temperature, {100 * test['ece_after']:.2f}% with it "
              "(reliability diagram: reliability.png after `python test.py`)",
              f"- test images by confidence: {describe_thresholds(test['thresholds'])}"]
    return "\n".join(lines)


def exports_section(run_dir: Path, ckpt: dict) -> str:
    path = run_dir / EXPORTS_NAME
    try:
        exports = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        exports = {}
    if not isinstance(exports, dict) or not exports:
        return "None yet: `python tools/export.py <run>` writes model.onnx and model.pt2 (`--int8`: model.int8.onnx)."
    lines = ["| file | from | size | check | now |", "| --- | --- | ---: | --- | --- |"]
    for name, entry in sorted(exports.items()):
        file = run_dir / name
        if not file.is_file():
            state = "deleted"
        elif sha256_of(file) != entry.get("sha256"):
            state = "changed since the check: export again"
        elif entry.get("checkpoint") == "best.pt" and entry.get("epoch") != ckpt["epoch"]:
            state = f"from an earlier best.pt (epoch {entry.get('epoch')}): export again"
        else:
            state = f"as checked (sha256 `{entry['sha256'][:12]}`)"
        cells = [name, f"{entry.get('checkpoint')}, epoch {entry.get('epoch')}",
                 f"{entry.get('bytes', 0) / 1e3:,.0f} kB", entry.get("check", "not checked"), state]
        lines.append(f"| {' | '.join(map(markdown_cell, cells))} |")
    return "\n".join(lines)


def reproduce_section(cfg: Config, run_dir: Path, code: str | None) -> str | None:
    if code is None:
        return None
    keys = " ".join(map(shell_word, changed_keys(cfg)))
    return "\n".join([
        "```bash", f"python train.py {keys}".rstrip() + "   # the keys above over config.yaml",
        f"python train.py --config {shell_word(str(run_dir / 'config.yaml'))}   # or the run's saved config "
        "(into a new folder)", "```",
        f"- code: {code}; on the CPU the same code, config and seed give the same numbers (docs/runs.md)"])


def shell_word(text: str) -> str:
    """text as one bash word on one line: shlex's quoting, or $'...' with escapes for control characters."""
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + printable(text.replace("\\", "\\\\").replace("'", "\\'")) + "'"


def default_use(cfg: Config, ckpt: dict) -> str:
    info = data_of(ckpt)
    return "\n".join([
        USER_SECTION, "",
        "<!-- This section is yours: edit it below its heading (keep the heading line); train.py, test.py and "
        "export.py keep it as it is when they refresh the card. -->",
        f"- Intended use: telling apart {info.in_channels}x{info.image_size}x{info.image_size} images of these "
        f"{len(info.class_names)} classes, from the same source as the {cfg.data.name} data set.",
        "- It always answers with one of these classes, also for an image of something else; with "
        "`--min-confidence P` (test.py --predict, tools/predict_onnx.py, tools/demo.py) it answers `unknown` "
        "below probability P.",
        "- The test accuracy holds for images like the test split's; other cameras, scanners, sizes or "
        "backgrounds may fare worse. Not evaluated for fairness across groups of people or for adversarial inputs.",
        ""])


def sections_of(text: str) -> dict[str, str]:
    """A card's '## ' sections: heading -> body; the user's section (heading included) to the end, whole."""
    found = re.search(f"^{re.escape(USER_SECTION)}\\s*$", text, re.M)  # its own line, not a class so named
    generated, user = (text[:found.start()], text[found.start() + len(USER_SECTION):]) if found else (text, "")
    sections, heading, lines = {}, None, []
    for line in [*generated.splitlines(), "## end"]:
        if line.startswith("## "):
            if heading:
                sections[heading] = "\n".join(lines).strip("\n")
            heading, lines = line, []
        else:
            lines.append(line)
    if found:
        sections[USER_SECTION] = USER_SECTION + user
    return sections


def write_card(run_dir: Path, ckpt: dict, results: dict | None = None, code: str | None = None) -> Path:
    """Write (or refresh) run_dir/MODEL_CARD.md for best.pt's checkpoint ckpt; results: evaluate()'s on the
    test split, or None to keep the card's test results; code: code_version() at training, or None to keep it."""
    cfg, path = config_of(ckpt), run_dir / CARD_NAME
    previous = sections_of(path.read_text(encoding="utf-8")) if path.is_file() else {}
    built = {"## Data": data_section(cfg, ckpt), "## Model": model_section(cfg, ckpt),
             "## Training": training_section(cfg, run_dir), "## Test results": test_section(ckpt, results),
             "## Calibration": calibration_section(ckpt, results, run_dir / "best.pt"),
             "## Exported files": exports_section(run_dir, ckpt),
             "## Reproduce": reproduce_section(cfg, run_dir, code)}
    missing = {"## Data": "The data set's files were not on this machine when the card was written.",
               "## Test results": "Not measured yet: `python test.py <run>` fills this in.",
               "## Calibration": "Not measured yet: `python test.py <run>` fills this in.",
               "## Reproduce": f"```bash\npython train.py --config {shell_word(str(run_dir / 'config.yaml'))}\n```\n"
                               "- code: not recorded (the card was first written after training)"}
    parts = [f"# Model card: {markdown_cell(run_dir.name)}", "",
             f"{cfg.model.name} trained on {cfg.data.name}. Written by train.py when training ended and refreshed "
             f"by test.py and tools/export.py (last: {time.strftime('%Y-%m-%d %H:%M')}); every section but the "
             "last is rebuilt then. How to read it: docs/trust.md.", ""]
    for heading, body in built.items():
        parts += [heading, "", body if body is not None else previous.get(heading, missing[heading]), ""]
    parts.append(previous.get(USER_SECTION, default_use(cfg, ckpt)))
    write_text(path, "\n".join(parts).rstrip("\n") + "\n")
    return path


def finish_run(run_dir: Path, cfg: Config, device: torch.device) -> dict:
    """What train.py does after the last epoch: fit best.pt's temperature on the validation split, print its
    test results (with and without train.tta's views), and write MODEL_CARD.md; returns the test results."""
    if not cfg.data.multilabel:  # a temperature calibrates softmax probabilities over exclusive classes
        print(describe_fit(calibrate(run_dir / "best.pt", device)))
    best, test = print_test(run_dir / "best.pt", device, cfg.train.tta)
    if cfg.data.multilabel:
        print(f"note: no {CARD_NAME} for a multi-label run yet (its tables are per class)")
    else:
        print(f"wrote {write_card(run_dir, best, test, code_version())}")
    for hook in make_hooks(cfg.log.hooks):
        hook.on_run_tested(run_dir, cfg, test)
    return test


def print_test(path: Path, device: torch.device, tta: str) -> tuple[dict, dict]:
    """The test split's loss and accuracy (mAP for multi-label), and with tta the same averaged over its views too;
    returns the checkpoint and the results over the run's views (what test.py reports, and the card says)."""
    best, _, test = evaluate_checkpoint(path, device, tta="none")
    line = f"test ({path.name}, epoch {best['epoch']}): loss {test['loss']:.4f}  accuracy {100 * test['accuracy']:.2f}%"
    line += f"  mAP {100 * test['map']:.2f}%" if "map" in test else ""  # data.multilabel: accuracy is subset accuracy
    if tta != "none":
        test = evaluate_checkpoint(path, device, tta=tta)[2]
        line += f"  with tta {tta} " + (f"mAP {100 * test['map']:.2f}%" if "map" in test else
                                          f"{100 * test['accuracy']:.2f}%")
    print(line)
    return best, test
