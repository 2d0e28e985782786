"""The README and docs/*.md name only things that exist: every `python SCRIPT ...` command names a script of
the project, every --option on it is one that script defines, every key=value override is a key of
config.yaml, and every relative path, link and picture exists.

Text only: the documents are read line by line, the scripts' argparse options are found by parsing their
source with ast (engine/cli.py defines the shared --config and checkpoint arguments); nothing is run.
"""
import ast
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Paths a document may name that need not exist in the repository: written at run time, ignored by git.
GENERATED = ("checkpoints/", ".venv/", "data/cache/", "data/MNIST/", "data/hf/", "data/shards/")
OUTSIDE = ("../shared/",)  # the shared data sets beside the checkout
PLACEHOLDER = re.compile(r"<[^>]*>|^my_")  # checkpoints/<run>, my_photos/train/..., my_images/
MODULES = {"pytest", "venv"}  # what `python -m` may run

FENCE = re.compile(r"^\s*```\s*(\w*)")
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
URL = re.compile(r"\w+://\S+")
# A relative path: at least one '/', ASCII name characters, globs and <placeholders>; each segment of two or
# more characters so that formulas such as `K/2` and `X/train` (X: any folder) are not taken for paths.
PATH = re.compile(r"(?:\.\./)*[\w.*<>-]{2,}(?:/[\w.*<>-]{2,})*/(?:[\w.*<>-]{2,})?|(?:\.\./)*[\w.*<>-]{2,}(?:/[\w.*<>-]{2,})+")
SEPARATORS = re.compile(r"[\s`'\"()\[\],;|=]+")
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|root|home)/")


def pieces(doc: Path):
    """(line number, kind, text) of a document: 'code' for a line of a shell or text block (continuation lines
    joined) and for each inline code span, 'link' for each link or picture target. Python blocks are
    source code, not commands, and are left out."""
    lang, pending = None, ""
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang is not None:
            if lang != "python":
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                    continue
                yield number, "code", pending + line
                pending = ""
            continue
        for span in INLINE.findall(line):
            yield number, "code", span
        for target in LINK.findall(INLINE.sub("", line)):
            yield number, "link", target


def commands(text: str):
    """The command lines in text, each a list of words: split at ; && and |, comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an unbalanced quote in prose: split plainly
        words = text.split()
    command: list[str] = []
    for word in [*words, ";"]:
        if word and set(word) <= set(";&|"):
            if command:
                yield command
            command = []
        else:
            command.append(word)


def script_and_arguments(words: list[str]) -> tuple[str, list[str]] | None:
    """('tools/export.py', its arguments) for `python tools/export.py ...` and `torchrun ... train.py ...`,
    ('-m pytest', ...) for modules; None for anything else and for `python -c`."""
    while words and (re.match(r"^[A-Z_]+=", words[0]) or words[0] in ("time", "do", "then")):
        words = words[1:]  # OMP_NUM_THREADS=1 python ..., time python ..., loop bodies
    if not words:
        return None
    if words[0] in ("python", "python3"):
        if len(words) < 2 or words[1] == "-c":
            return None
        if words[1] == "-m":
            return f"-m {words[2] if len(words) > 2 else ''}", words[3:]
        return words[1], words[2:]
    if words[0] == "torchrun" and len(words) > 1:
        scripts = [i for i, word in enumerate(words) if word.endswith(".py")]
        return (words[scripts[0]], words[scripts[0] + 1:]) if scripts else ("torchrun without a script", [])
    return None


def argparse_options(tree: ast.AST) -> tuple[set[str], set[str]]:
    """The option strings of every add_argument call in tree, and the names of the functions it calls."""
    options, calls = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name == "add_argument":
                options |= {arg.value for arg in node.args
                            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-")}
            elif name:
                calls.add(name)
    return options, calls


@cache
def shared_options() -> dict[str, set[str]]:
    """engine/cli.py's argument helpers (make_parser, add_checkpoint_arguments) and the options each adds."""
    tree = ast.parse((ROOT / "engine" / "cli.py").read_text(encoding="utf-8"))
    return {node.name: argparse_options(node)[0] for node in tree.body if isinstance(node, ast.FunctionDef)}


@cache
def defined_options(script: str) -> frozenset[str]:
    """Every option the script accepts: its own add_argument calls plus those of the engine/cli.py helpers it calls."""
    options, calls = argparse_options(ast.parse((ROOT / script).read_text(encoding="utf-8")))
    for name in calls & shared_options().keys():
        options |= shared_options()[name]
    return frozenset(options | {"-h", "--help"})


@cache
def config() -> dict:
    """config.yaml's keys, with those docs/extend.md's examples add (the page names them before they exist)."""
    keys = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    for path, _, anchor, code in examples(EXTEND):
        if path == "config.yaml":
            section = next(name for name in keys if anchor.partition(":")[0] in keys[name])  # the key it follows
            keys[section].update(yaml.safe_load(code))
    return keys


def is_config_key(key: str) -> bool:
    node = config()
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def command_problems(text: str) -> list[str]:
    problems = []
    for words in commands(text):
        found = script_and_arguments(words)
        if found is None:
            continue
        script, arguments = found
        if PLACEHOLDER.search(script):  # python tools/<name>.py
            continue
        if script.startswith("-m "):
            if script[3:] not in MODULES:
                problems.append(f"python {script}: not one of the modules {sorted(MODULES)}")
            continue
        if not script.endswith(".py") or not (ROOT / script).is_file():
            problems.append(f"{script}: no such script in the repository")
            continue
        for word in arguments:
            word = word.strip("[]")
            if re.match(r"^--?[A-Za-z]", word) and word.split("=")[0] not in defined_options(script):
                problems.append(f"{script} has no option {word.split('=')[0]}")
            elif re.match(r"^[a-z_]+(\.\w+)+=", word) and not is_config_key(word.split("=")[0]):
                problems.append(f"{script}: {word.split('=')[0]} is not a key of config.yaml")
    return problems


def path_problems(text: str) -> list[str]:
    problems = []
    for word in SEPARATORS.split(URL.sub(" ", text)):
        word = re.sub(r":\d+$", "", word.rstrip(".:"))  # model.py:120, end of a sentence
        if not word or word[0] in "/~$" or not PATH.fullmatch(word):
            continue
        if PLACEHOLDER.search(word) or (word.rstrip("/") + "/").startswith(GENERATED + OUTSIDE):
            continue
        exists = any(ROOT.glob(word.rstrip("/"))) if "*" in word else (ROOT / word).exists() or word in new_files()
        if not exists:
            problems.append(f"{word}: no such file or folder in the repository")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    return {slug(match) for match in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def link_problems(doc: Path, target: str) -> list[str]:
    if re.match(r"^[a-z]+:", target):  # https:, mailto:
        return []
    file, _, anchor = target.partition("#")
    path = (doc.parent / file).resolve() if file else doc
    if not path.exists():
        return [f"link {target}: {file} does not exist"]
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return [f"link {target}: {path.name} has no heading #{anchor}"]
    return []


def problems(doc: Path) -> list[str]:
    found = []
    for number, kind, text in pieces(doc):
        lines = link_problems(doc, text) if kind == "link" else command_problems(text) + path_problems(text)
        found += [f"{doc.name}:{number}: {line}" for line in lines]
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if MACHINE_PATH.search(line):
            found.append(f"{doc.name}:{number}: an absolute path of this machine")
    return found


EXTEND = ROOT / "docs" / "extend.md"
APPLY = re.compile(r"^<!-- apply: (\S+) \| (before|after|new file):? ?(.*?) ?-->$")


@cache
def examples(doc: Path) -> tuple[tuple[str, str, str, str], ...]:
    """(path, before | after | new file, the line it goes before or after, code) of each block the page applies."""
    lines, found = doc.read_text(encoding="utf-8").splitlines(), []
    for i, line in enumerate(lines):
        match = APPLY.match(line)
        if match:
            assert FENCE.match(lines[i + 1]), f"{doc.name}:{i + 2}: an apply comment must stand just above its block"
            end = next(j for j in range(i + 2, len(lines)) if FENCE.match(lines[j]))
            found.append((match[1], match[2], match[3].strip(), "\n".join(lines[i + 2:end]) + "\n"))
    return tuple(found)


def new_files() -> set[str]:
    return {path for path, how, _, _ in examples(EXTEND) if how == "new file"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_commands_options_and_paths_exist(doc):
    assert not problems(doc), "\n".join(problems(doc))


def test_the_check_finds_mistakes(tmp_path):
    """A wrong script, option, key, path, link and anchor each give a problem; placeholders do not."""
    doc = tmp_path / "wrong.md"
    doc.write_text("```bash\n"
                   "python export.py\n"
                   "python tools/export.py --no-such-option checkpoints/<run>\n"
                   "python train.py train.lrr=0.1 --config config/mnist.yaml\n"
                   "```\n"
                   "See `engine/nothing.py`, `my_photos/train/<class>/` and [a page](missing.md), "
                   "[a heading](#nowhere).\n"
                   "## Somewhere\n[fine](#somewhere)\n", encoding="utf-8")
    found = "\n".join(problems(doc))
    for expected in ("export.py: no such script", "tools/export.py has no option --no-such-option",
                     "train.lrr is not a key", "config/mnist.yaml: no such file", "engine/nothing.py: no such file",
                     "missing.md does not exist", "has no heading #nowhere"):
        assert expected in found
    assert "my_photos" not in found and "checkpoints" not in found and "#somewhere" not in found
    assert len(found.splitlines()) == 7


def test_the_config_reference_is_current():
    """docs/config.md's key table is the one tools/config_reference.py makes from config.yaml's comments."""
    from tools import config_reference

    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert config_reference.with_reference(page) == page, "run python tools/config_reference.py"
    for key in ("data.name", "train.accumulate", "log.hooks"):
        assert f"| `{key}` |" in page


def test_each_extend_example_touches_the_files_its_section_names():
    """docs/extend.md: every section's "Files:" line names exactly the files its examples change."""
    sections = re.split(r"^## ", EXTEND.read_text(encoding="utf-8"), flags=re.M)[1:]
    assert len([section for section in sections if "Files:" in section]) == 7
    for section in sections:
        named = re.search(r"^Files: (.*)$", section, flags=re.M)
        touched = {path for path, *_ in examples_in(section)}
        assert set(re.findall(r"`([^`]+)`", named[1]) if named else []) == touched, section.splitlines()[0]


def examples_in(text: str) -> list[tuple[str, ...]]:
    return [match.groups() for match in map(APPLY.match, text.splitlines()) if match]


def apply_examples(root: Path) -> None:
    """Put each example of docs/extend.md where its apply comment says, in the copy of the project at root."""
    for path, how, anchor, code in examples(EXTEND):
        file = root / path
        if how == "new file":
            assert not file.exists(), f"{path} exists already"
            file.write_text(code, encoding="utf-8")
            continue
        lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
        at = [i for i, line in enumerate(lines) if line.strip().startswith(anchor)]
        assert len(at) == 1, f"{path}: {len(at)} lines start with {anchor!r}, not one"
        lines.insert(at[0] + (how == "after"), code)
        file.write_text("".join(lines), encoding="utf-8")


# Run in one interpreter in the copy: each `python SCRIPT ...` line of the page's last block, then the demo.
DRIVER = """
import runpy, shlex, sys
from pathlib import Path
for line in sys.argv[1:]:
    words = shlex.split(line)
    sys.argv = words[1:]
    print(f"$ {line}", flush=True)
    try:
        runpy.run_path(words[1], run_name="__main__")
    except SystemExit as exit_info:
        if exit_info.code:
            sys.exit(f"{line} ended with {exit_info.code}")
import torch
from tools.demo import load_demo
print("demo:", load_demo(Path("checkpoints/extended/best.pt"), torch.device("cpu"), 10 ** 6).title)
"""


def test_extend_examples_run_together(tmp_path):
    """Every example of docs/extend.md applied to a copy of the project: a run that uses them all trains,
    test.py reproduces its test accuracy, it resumes, and the model card and the demo describe it."""
    import numpy as np
    import torch

    root = tmp_path / "project"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns(".git", ".venv", "checkpoints", "__pycache__", "cache",
                                                              ".pytest_cache", "MNIST", "FashionMNIST"))
    apply_examples(root)
    digits = torch.load(ROOT / "data" / "digits.pt", weights_only=True)
    np.savez(root / "digits.npz", **{f"{x}_{split}": digits[name][digits[f"{split}_idx"]].numpy()
                                     for split in ("train", "test") for x, name in (("x", "images"), ("y", "labels"))})
    block = EXTEND.read_text(encoding="utf-8").rpartition("```bash\n")[2].partition("```")[0]
    lines = [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    lines = [line.replace("run.name=", "run.device=cpu run.name=") for line in lines]
    done = subprocess.run([sys.executable, "-c", DRIVER, *lines], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out, run_dir = done.stdout, root / "checkpoints" / "extended"
    assert "| `train.focal_gamma` | `2` |" in (root / "docs" / "config.md").read_text()
    assert "model: tiny_mlp" in out and "top3" in out.split("epoch   1/2")[1].splitlines()[0]
    trained = re.search(r"test \(best.pt, epoch \d+\): loss [\d.]+  accuracy ([\d.]+)%", out)[1]
    assert re.search(rf"accuracy\s+{re.escape(trained)}%", out.split("$ python test.py")[1])  # test.py = training
    assert "resuming" in out and "epoch   3/3" in out
    assert (run_dir / "grad_norm.csv").read_text().count("\n") == 4  # header and the three epochs
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].count("val_top3") == 1
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert "data set: npz (from data.root digits.npz)" in card and "file list: sha256" in card
    assert "demo: **extended/best.pt**: tiny_mlp trained on npz (epoch" in out and "test accuracy" in out
