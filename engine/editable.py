"""Files the project writes and a person may edit, which it reads back or rewrites: a run's MODEL_CARD.md,
exports.json, config.yaml and test.py's reports (test_report.json, ...). Each is read leniently (in whichever
encoding an editor saved it) or refused by name in one line that says how to fix it, and a rewrite keeps what
the person added: the card's text outside its generated part (engine/card.py), exports.json's other entries and
keys, a config.yaml's comments, a report's added keys.
"""
import codecs
import json
from pathlib import Path
from typing import Any

from engine.errors import UserError, shown

BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE's starts as UTF-16 LE's
UTF8 = ("utf-8", "utf-8-sig")


def decode(data: bytes, legacy: bool = True) -> tuple[str, str]:
    """(text, encoding): by its byte order mark (UTF-8, UTF-16, UTF-32), else UTF-8, else UTF-16 without a mark
    (every other byte 0), else (legacy) Windows-1252 and Latin-1, which read any bytes. Without legacy a file that
    is none of the Unicode ones raises UnicodeDecodeError."""
    for bom, encoding in BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        if not legacy:
            raise
    if len(data) % 2 == 0 and data.count(0) * 3 >= len(data):  # mostly ASCII as UTF-16: half its bytes are 0
        for encoding in ("utf-16-le", "utf-16-be"):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                continue
            if all(c.isprintable() or c in "\r\n\t" for c in text):
                return text, encoding
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def read_text(path: Path, what: str = "") -> str | None:
    """The text of path decoded by decode(), None when it does not exist; a note when it was not UTF-8 (what: what
    happens to it next, for the note)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror}); check its permissions") from None
    text, encoding = decode(data)
    if encoding not in UTF8:
        print(f"note: {path} is {encoding} text, not UTF-8; read as such{what}")
    return text


def read_mapping(path: Path, what: str, fix: str) -> dict:
    """The JSON object in path ({} when absent); invalid JSON, or JSON of another shape, is refused by name:
    what the file should hold (what) and how to fix it (fix)."""
    text = read_text(path, "")
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as err:
        where = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise UserError(f"{path} is not valid JSON ({getattr(err, 'msg', err)}{where}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds {shown(data, 40)}, not {what}; {fix}")
    return data


def kept_keys(path: Path, data: dict) -> dict:
    """data, and after it the keys a person added to the JSON object already in path (a report's notes); a file
    that is not a JSON object any more is kept beside it as <name>.edited, with a note."""
    text = read_text(path)
    if text is None:
        return data
    try:
        old = json.loads(text)
    except ValueError:
        old = None
    if not isinstance(old, dict):
        aside = path.with_name(path.name + ".edited")
        path.replace(aside)
        print(f"note: {path} had been edited into something other than a JSON object; kept as {aside}")
        return data
    return {**data, **{key: value for key, value in old.items() if key not in data}}


def comments_kept(old: str | None, new: str) -> str:
    """new, and after it every line of old that holds a comment (`#`) and is not in new, commented out, so that
    rewriting a YAML file a person annotated keeps the annotations."""
    if old is None:
        return new
    lines = set(new.splitlines())
    kept = [line for line in old.splitlines() if "#" in line and line not in lines]
    if not kept:
        return new
    return new.rstrip("\n") + "\n\n# Kept from this file's earlier text (its values were rewritten):\n" + "".join(
        f"{line if line.lstrip().startswith('#') else '# ' + line}\n" for line in kept)


def as_number(value: Any) -> float | None:
    """value if it is a number (not a bool), else None: for fields a person may have edited into anything."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
