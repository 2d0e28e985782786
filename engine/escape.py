"""Text a user gave (class names from folder names and CSV cells, file and run names) written for where it goes,
one function each: the terminal (printable), a Markdown table cell (markdown_cell), a CSV cell (csv_cell, and
CsvWriter, which applies it to every cell). Free of PyTorch: tools/predict_onnx.py uses it too."""
import csv
import re
from typing import IO, Any, Iterable


def printable(text: object) -> str:
    """text on one line: control characters (a newline in a file name, an ANSI escape sequence, a C1 control, a
    bidi override) written as visible escapes (\\n, \\x1b, \\x9b, \\u202e), so none reaches the terminal raw."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def markdown_cell(text: object) -> str:
    """text as one cell of a Markdown table row: on one line (printable), with \\ and | escaped so that neither
    ends the cell."""
    return printable(text).replace("\\", "\\\\").replace("|", "\\|")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet runs as a formula (OWASP, CSV injection)
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """value for a CSV cell: text that a spreadsheet would run as a formula (=, +, -, @, tab or carriage return
    first) gets a leading ' (OWASP's advice); numbers, also negative ones as text (-0.5), stay as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not NUMBER.fullmatch(value):
        return "'" + value
    return value


class CsvWriter:
    """csv.writer with csv_cell applied to every cell: the one way the project writes CSV."""

    def __init__(self, f: IO[str], **kwargs: Any):
        self.writer = csv.writer(f, **kwargs)

    def writerow(self, row: Iterable[Any]) -> None:
        self.writer.writerow([csv_cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)

