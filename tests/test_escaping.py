"""Outputs are escaped for where they go (docs/troubleshooting.md): class names from folder names and CSV cells,
file and run names reach the terminal with their control characters as visible escapes, a Markdown table row
keeps its cells, and no CSV cell the project writes runs as a spreadsheet formula. Generated names (Hypothesis),
then one run end to end whose class folders hold an escape sequence, a newline and formula text."""
import ast
import csv
import io
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

hypothesis = pytest.importorskip("hypothesis", reason="Hypothesis is an extra: pip install -r requirements-extras.txt")
from hypothesis import given, strategies as st  # noqa: E402

from conftest import ROOT, TINY, call_script  # noqa: E402
from engine.card import USER_SECTION, sections_of  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.datasource import DataInfo  # noqa: E402
from engine.entry import LINE_MAX, one_line, run_cli  # noqa: E402
from engine.escape import FORMULA_STARTS, NUMBER, CsvWriter, csv_cell, markdown_cell, printable  # noqa: E402
from engine.imagefiles import report_predictions  # noqa: E402
from engine.loaders import note_small_val  # noqa: E402
from engine.multilabel import print_report as print_multilabel_report  # noqa: E402
import test as test_script  # noqa: E402
from test_fuzz import fuzz  # noqa: E402  (bounded in CI; FUZZ_EXAMPLES=N explores)
from tools import export  # noqa: E402
import train  # noqa: E402

# What a hostile or unlucky name holds: ANSI sequences (colour, cursor up, window title), carriage return,
# backspace, C1 controls (CSI as one byte), bidi overrides, a line separator, a surrogate (an undecodable byte of
# a file name), newlines, Markdown's | and \, and what a spreadsheet runs as a formula.
PIECES = ["\x1b[31m", "\x1b[2A", "\x1b]0;title\x07", "\r", "\b", "\x9b", "\x85", "\u202e", "\u2066", "\u2028",
          "\udcff", "\x00", "\x7f", "\n", "\t", "|", "\\", "=", "+", "-", "@", "=cmd|' /C calc'!A0", "-0.5", "#"]
NAMES = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(PIECES)), max_size=6).map("".join)


def is_escaped(text: str) -> bool:
    """No control character raw: every character printable (newlines separate lines)."""
    return all(line.isprintable() for line in text.split("\n"))


@fuzz(300)
@given(NAMES)
def test_the_terminal_form_is_one_visible_line(name):
    shown = printable(name)
    assert shown.isprintable()  # no C0/C1 control, no bidi or other format character, no line break
    for c in set(name):
        assert c in shown if c.isprintable() else c.encode("unicode_escape").decode("ascii") in shown
    assert printable(shown) == shown  # escaping twice changes nothing (nested run_cli calls)


def cells_of(row: str) -> list[str]:
    """A Markdown table row's cells as GFM splits them: at each | that no backslash escapes."""
    assert row.startswith("| ") and row.endswith(" |"), row
    cells, cell, chars = [], "", iter(row[1:-1])
    for c in chars:
        if c == "\\":
            cell += c + next(chars, "")
        elif c == "|":
            cells, cell = cells + [cell], ""
        else:
            cell += c
    return [c.strip() for c in cells + [cell]]


@fuzz(300)
@given(st.lists(NAMES, min_size=1, max_size=5))
def test_a_markdown_row_keeps_its_line_and_its_cells(names):
    row = "| " + " | ".join(markdown_cell(name) for name in names) + " |"
    assert row.isprintable()  # one line: no newline, no carriage return
    assert cells_of(row) == [markdown_cell(name).strip() for name in names]


@fuzz(50)
@given(st.lists(st.text(alphabet="ab |\\\n\x1b#-", max_size=6), min_size=1, max_size=4))
def test_a_markdown_parser_reads_the_cells_back(names):
    markdown_it = pytest.importorskip("markdown_it")
    header = "| " + " | ".join(f"h{i}" for i in range(len(names))) + " |\n|" + " --- |" * len(names) + "\n"
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(
        header + "| " + " | ".join(markdown_cell(name) for name in names) + " |\n")
    cells = re.findall(r"<td>(.*?)</td>", html, re.S)
    assert cells == [printable(name).strip() for name in names], html


CELLS = st.one_of(NAMES, st.integers(), st.floats(), st.sampled_from(["-0.5", "+3", "1e-3", "-", "@x", "=1+1"]))


@fuzz(300)
@given(st.lists(st.lists(CELLS, min_size=1, max_size=5), min_size=1, max_size=4))
def test_csv_cells_read_back_and_never_start_a_formula(rows):
    text = io.StringIO()
    CsvWriter(text).writerows(rows)
    read = list(csv.reader(io.StringIO(text.getvalue(), newline="")))
    assert read == [[str(csv_cell(value)) for value in row] for row in rows]
    for row, written in zip(rows, read):
        for value, cell in zip(row, written):
            if isinstance(value, str):
                assert not cell.startswith(FORMULA_STARTS) or NUMBER.fullmatch(cell), cell
                assert cell == value or cell == "'" + value  # the text itself, at most behind a '
    assert csv_cell("-0.5") == "-0.5" and csv_cell(-0.5) == -0.5 and csv_cell("-x") == "'-x"


# --- the places that print a class name -----------------------------------------------------------

def printed_lines(capsys) -> list[str]:
    out = capsys.readouterr().out
    assert is_escaped(out), out
    return out.split("\n")[:-1]


@fuzz(50)
@given(st.lists(NAMES, min_size=2, max_size=4, unique=True))
def test_tables_and_notes_print_one_line_per_class(capsys, names):
    k = len(names)
    per_class = [{"class": name, "recall": 0.5, "precision": 0.5, "f1": 0.5, "support": 1} for name in names]
    test_script.print_report({"checkpoint": "c/best.pt", "epoch": 1, "split": "test", "num_images": k, "loss": 0.1,
                              "accuracy": 0.5, "top_k": 1, "top_k_accuracy": 0.5, "tta": "none",
                              "balanced_accuracy": 0.5, "macro_f1": 0.5, "per_class": per_class})
    rows = printed_lines(capsys)[-k - 1:]
    assert rows[0].startswith("class ") and [row[:16] for row in rows[1:]] == [
        f"{printable(name)[:15]:<16}" for name in names]
    print_multilabel_report({"checkpoint": "c", "epoch": 1, "split": "test", "num_images": k, "loss": 0.1, "map": 0.5,
                             "micro_f1": 0.5, "macro_f1": 0.5, "subset_accuracy": 0.5, "per_label": [
                                 {**row, "ap": 0.5, "threshold": 0.5} for row in per_class]})
    assert len(printed_lines(capsys)) == 3 + k
    export.print_checks(DataInfo(1, 8, names), None, [], 0)
    assert f"classes: {', '.join(map(printable, names))}" in printed_lines(capsys)[0]
    note_small_val(torch.arange(k), names, 0.1)
    assert len(printed_lines(capsys)) == 1
    report_predictions([Path(name) for name in names], [[(name, 1.0)] for name in names], 1, "m")
    assert len(printed_lines(capsys)) == 1 + k


def test_whatever_a_script_prints_reaches_the_terminal_escaped(capsys):
    def main(argv):
        print("class \x1b[31mred\x1b[0m\rover\u202eevil\x9b2J", end="\n\n")
    run_cli(main, [])
    assert capsys.readouterr().out == "class \\x1b[31mred\\x1b[0m\\rover\\u202eevil\\x9b2J\n\n"


def test_every_csv_writer_goes_through_the_escaping_one():
    """csv.writer and csv.DictWriter appear only in engine/escape.py (benchmarks write labels CSVs, which are
    data for the project to read back, not reports)."""
    for path in [ROOT / "train.py", ROOT / "test.py", *(ROOT / "engine").glob("*.py"), *(ROOT / "tools").glob("*.py")]:
        if path.name == "escape.py":
            continue
        calls = [ast.unparse(node.func) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Call)]
        assert not {"csv.writer", "csv.DictWriter"} & set(calls), path


# --- one run end to end ---------------------------------------------------------------------------

CLASSES = ["\x1b[31mred", "=cmd|calc", "new\nline", "-neg", "\u202eevil", "$\\zz$"]  # $: TeX to matplotlib


def test_hostile_class_names_end_to_end(tmp_path):
    for split, count in (("train", 4), ("test", 2)):
        for c, name in enumerate(CLASSES):
            (tmp_path / "set" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), 40 * c + 5 * i).save(tmp_path / "set" / split / name / f"{i}.png")
    settings = [*TINY, "train.epochs=1", "data.name=folder", "data.root=set", "data.channels=1", "data.image_size=8",
                "data.val_fraction=0.25", "data.cache_dir=", "run.name=r"]
    code, trained, err = call_script(train.main, *settings, cwd=tmp_path)
    assert code == 0, err
    code, tested, err = call_script(test_script.main, "checkpoints/r", cwd=tmp_path)
    assert code == 0, err
    images = [str(tmp_path / "set" / "test" / name / "0.png") for name in CLASSES]
    code, predicted, err = call_script(test_script.main, "checkpoints/r", "--predict", *images, "--output",
                                       "checkpoints/r/predictions.csv", cwd=tmp_path)
    assert code == 0, err
    for out in (trained, tested, predicted):
        assert is_escaped(out), out
    run_dir = tmp_path / "checkpoints" / "r"
    names = load_checkpoint(run_dir / "best.pt")["data"]["class_names"]
    assert sorted(names) == sorted(CLASSES)
    table = tested.split("\n")
    start = table.index(next(line for line in table if line.startswith("class ")))
    assert [line[:16] for line in table[start + 1:start + 1 + len(names)]] == [
        f"{printable(name)[:15]:<16}" for name in names]
    card = (run_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert is_escaped(card)
    assert list(sections_of(card))[-1] == USER_SECTION and "## Test results" in sections_of(card)
    tables = re.findall(r"((?:^\|.*\|$\n?)+)", card, re.M)
    assert len(tables) >= 2
    for found in tables:
        rows = [cells_of(row) for row in found.strip("\n").split("\n")]
        assert {len(row) for row in rows} == {len(rows[0])}, found
    for name in names:
        assert f"| {markdown_cell(name)} | " in card  # the training images table and the test results table
    written = sorted(run_dir.rglob("*.csv"))
    assert {p.name for p in written} >= {"metrics.csv", "confusion_matrix.csv", "predictions.csv"}
    for path in written:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                assert not [cell for cell in row if cell.startswith(FORMULA_STARTS) and not NUMBER.fullmatch(cell)]
    with open(run_dir / "confusion_matrix.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f))[1:] == [csv_cell(name) for name in names] != names


# --- error lines ----------------------------------------------------------------------------------

PATHS = st.lists(st.text(alphabet="abc_-.é\x1b\n", min_size=1, max_size=120), min_size=1, max_size=8).map("/".join)


@fuzz(200)
@given(PATHS, st.sampled_from(["No space left on device", "Read-only file system", "File name too long"]))
def test_an_error_line_abridges_a_long_path_in_its_middle_never_the_cause(path, cause):
    line = "error: " + one_line(f"could not write {path} ({cause}); free some space or choose a writable folder")
    shown = printable(path)
    assert line.isprintable() and len(line) <= LINE_MAX
    assert line.startswith(f"error: could not write {shown[:20]}") and f"{shown[-20:]} ({cause}); free" in line
