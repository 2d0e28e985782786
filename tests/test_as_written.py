"""What YAML or a CSV does to a value is not the user's intent (docs/troubleshooting.md): every text key of the
config takes its value as written, or refuses it on one line naming the key, the value and the quoting to use;
a CSV's columns may be separated by , ; tab or |. Generated cases (Hypothesis) over every str-typed key of the
config's dataclasses, found by walking them."""
import csv
import dataclasses
import io
import re
from typing import get_args, get_origin, get_type_hints

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="Hypothesis is an extra: pip install -r requirements-extras.txt")
from hypothesis import given, strategies as st  # noqa: E402

from engine.config import Config, load_config  # noqa: E402
from engine.csvdata import SEPARATORS, read_rows  # noqa: E402
from engine.datasets import describe  # noqa: E402
from engine.errors import UserError  # noqa: E402
from test_fuzz import fuzz  # noqa: E402  (bounded in CI; FUZZ_EXAMPLES=N explores)
from test_own_data import CLASSES, write_images  # noqa: E402


def text_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass cls typed str (a list's first item: log.hooks.0)."""
    keys = []
    for name, tp in get_type_hints(cls).items():
        key = f"{prefix}{name}"
        if get_origin(tp) is list:
            key, tp = f"{key}.0", get_args(tp)[0]
        if tp is str:
            keys.append(key)
        elif dataclasses.is_dataclass(tp):
            keys += text_keys(tp, f"{key}.")
    return keys


TEXT_KEYS = text_keys(Config)

# Plain YAML that PyYAML does not read as the text written: booleans, integers (hex, octal, binary, with _, base
# 60), floats, dates and timestamps, null, a block scalar's | or > (an empty text), an anchor (no value at all).
REINTERPRETED = st.one_of(
    st.builds(lambda word, case: case(word), st.sampled_from(["yes", "no", "true", "false", "on", "off"]),
              st.sampled_from([str.lower, str.title, str.upper])),
    st.integers().map(str), st.integers(0, 2 ** 40).map(hex), st.integers(0, 511).map(lambda n: f"0{n:o}"),
    st.integers(0, 255).map(bin), st.integers(1000, 10 ** 6).map(lambda n: f"{n:_}"),
    st.tuples(st.integers(0, 99), st.integers(0, 59)).map(lambda t: f"{t[0]}:{t[1]:02}"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr), st.sampled_from([".inf", "-.Inf", ".NaN", "1.0e3"]),
    st.dates().map(str), st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    st.sampled_from(["null", "Null", "NULL", "~", "", "|", ">", "|-", ">+"]),
    st.from_regex(r"&[a-z]{1,6}", fullmatch=True))


def value_at(cfg: Config, key: str) -> object:
    value = cfg
    for part in key.split("."):
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    return value


def literal_or_named(load, key: str, text: str) -> None:
    """load() reads key as text, exactly as written, or refuses it with one line that names the key."""
    try:
        cfg = load()
    except UserError as err:
        message = str(err)
        assert "\n" not in message and (key in message or re.sub(r"\.(\d+)$", r"[\1]", key) in message), message
        return
    assert value_at(cfg, key) == text


def test_the_walk_finds_the_text_keys():
    assert {"data.label_separator", "data.root", "run.name", "model.pretrained", "log.hooks.0"} <= set(TEXT_KEYS)


@fuzz(50)
@given(st.sampled_from(TEXT_KEYS), REINTERPRETED)
def test_a_text_key_in_a_config_file_is_read_as_written_or_refused(tmp_path_factory, key, text):
    section, name, *item = key.split(".")
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    path.write_text(f"{section}:\n  {name}:\n    - {text}\n" if item else f"{section}:\n  {name}: {text}\n")
    literal_or_named(lambda: load_config(path, []), key, text)


@fuzz(50)
@given(st.sampled_from(TEXT_KEYS), REINTERPRETED)
def test_a_text_key_on_the_command_line_is_read_as_written_or_refused(key, text):
    literal_or_named(lambda: load_config(None, [f"{key}={text}"]), key, text)


@pytest.mark.parametrize("written", ["|", ">", "|-"])
def test_a_bare_block_scalar_separator_names_the_quoting(tmp_path, written):
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  name: csv\n  multilabel: true\n  label_separator: {written}\n")
    with pytest.raises(UserError, match=f'data.label_separator: {re.escape(written)} begins a YAML block scalar.*'
                                        f'write data.label_separator: "{re.escape(written)}"'):
        load_config(path, [])
    assert load_config(None, ["data.label_separator=|"]).data.label_separator == "|"
    assert load_config(None, ["data.label_separator='|'"]).data.label_separator == "|"  # quoted: YAML
    with pytest.raises(UserError, match="data.label_separator is empty"):
        load_config(None, ["data.name=csv", "data.multilabel=true", "data.label_separator="])


def test_a_mapping_where_a_list_of_text_goes_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("log:\n  hooks: {0: yes}\n")
    with pytest.raises(UserError, match="log.hooks: expected a list"):
        load_config(tmp_path / "c.yaml", [])


HEADER = st.lists(st.from_regex(r"[a-z][a-z_ ]{0,8}[a-z]", fullmatch=True), min_size=2, max_size=4, unique=True)


@fuzz(80)
@given(HEADER, st.data(), st.sampled_from(SEPARATORS), st.booleans(), st.sampled_from(["\n", "\r\n"]))
def test_a_csv_reads_the_same_with_any_separator_and_a_bom(tmp_path_factory, header, data, separator, bom, newline):
    cells = st.text(st.characters(blacklist_characters="\x00\r", blacklist_categories=("Cs",)), max_size=8)
    rows = data.draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), max_size=4))
    text = io.StringIO()
    csv.writer(text, delimiter=separator, lineterminator=newline).writerows([header, *rows])
    path = tmp_path_factory.mktemp("csv") / "labels.csv"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.getvalue().encode())
    found, read, used = read_rows(path)
    assert used == separator and found == header
    assert [row for _, row in read] == [{name: cell.strip() for name, cell in zip(header, row)} for row in rows]


def test_a_semicolon_csv_has_its_test_split(tiny_cfg, tmp_path):
    rows = write_images(tmp_path)
    (tmp_path / "train.csv").write_text("\n".join(";".join(row) for row in [("file", "label", "split"), *rows]) + "\n")
    cfg = tiny_cfg("data.name=csv", f"data.root={tmp_path}", "data.labels=train.csv", "data.image_size=8")
    assert describe(cfg.data).class_names == list(CLASSES)
    (tmp_path / "train.csv").write_text("\n".join(";".join(row[:2]) for row in [("file", "label"), *rows]) + "\n")
    with pytest.raises(UserError, match=r"has no test split \(its columns: file, label \(separated by ';'\)\)"):
        describe(cfg.data)
