"""Files a person may edit (engine/editable.py): MODEL_CARD.md, exports.json, a run's config.yaml and test.py's
reports are read in whichever encoding an editor saved them, or refused by name in one line with the fix, and
rewriting them keeps what the person wrote. The edits are generated: random text inserted above, inside and
below the card's generated part, saved as UTF-8 (with and without a BOM), UTF-16, UTF-32, Latin-1 or
Windows-1252; invalid JSON and JSON of other shapes; comments in a config."""
import json
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="Hypothesis is an extra: pip install -r requirements-extras.txt")
from hypothesis import given, strategies as st  # noqa: E402

from conftest import TINY, call_script, copy_run, snapshot  # noqa: E402
from engine import runs  # noqa: E402
from engine.card import (CARD_NAME, END, EXPORTS_NAME, KEPT, START_LINE, USER_SECTION, record_export,  # noqa: E402
                         write_card)
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.editable import decode, kept_keys  # noqa: E402
import test as test_script  # noqa: E402
from tools import export  # noqa: E402
import train  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_fuzz import fuzz  # noqa: E402  (bounded in CI; FUZZ_EXAMPLES=N explores)

UNICODE = ("utf-8", "utf-8-sig", "utf-16", "utf-32")
LEGACY = ("latin-1", "cp1252")
# What a person types: any printable character (C1 controls, U+0080-U+009F, are not typed), newlines, tabs.
TYPED = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff")
                | st.sampled_from("\n\t"), min_size=1, max_size=40).filter(lambda text: text.strip())


@pytest.fixture(scope="module")
def card_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run, its checkpoint and its card as train.py wrote it."""
    run_dir = copy_run(tiny_run, tmp_path_factory.mktemp("card"))
    return run_dir, load_checkpoint(run_dir / "best.pt"), (run_dir / CARD_NAME).read_text(encoding="utf-8")


def saved_as(text: str, encoding: str) -> tuple[bytes, str]:
    """text as an editor saves it in encoding, and the text those bytes hold (characters the encoding lacks become
    '?', as editors replace them)."""
    data = text.encode(encoding, errors="replace")
    return data, data.decode(encoding)


@fuzz(60)
@given(typed=TYPED, where=st.sampled_from(["above", "inside", "below", "in the user's section", "in a marker"]),
       at=st.floats(0, 1), encoding=st.sampled_from(UNICODE + LEGACY))
def test_card_edits_survive_a_refresh_in_any_encoding(card_run, typed, where, at, encoding):
    run_dir, ckpt, card = card_run
    start, end = START_LINE.search(card), card.index(END)
    spans = {"above": (0, 0), "inside": (start.end(), end), "below": (end + len(END), len(card)),
             "in the user's section": (card.index(USER_SECTION) + len(USER_SECTION), len(card)),
             "in a marker": (start.start() + 5, start.end() - 5)}
    low, high = spans[where]
    position = low + int(at * (high - low))
    if encoding in LEGACY:
        typed = "é " + typed  # a character that is not UTF-8 in these encodings, as a person writing there types
    data, kept = saved_as(card[:position] + typed + card[position:], encoding)
    mine = kept[position:position + len(typed)]  # the person's text as the editor saved it
    (run_dir / CARD_NAME).write_bytes(data)
    write_card(run_dir, ckpt)
    again = (run_dir / CARD_NAME).read_text(encoding="utf-8")
    assert mine.strip() in again, (where, encoding)
    assert again.count(USER_SECTION) <= 1 and again.count(END) == 1  # never a second copy of either
    write_card(run_dir, ckpt)  # a second refresh keeps it, and keeps no second copy
    final = (run_dir / CARD_NAME).read_text(encoding="utf-8")
    assert mine.strip() in final and final.count(KEPT) == again.count(KEPT) <= 1
    (run_dir / CARD_NAME).write_text(card, encoding="utf-8")


def test_test_py_refreshes_an_edited_utf16_card_keeping_the_section_a_person_added(card_run, capsys):
    run_dir, ckpt, card = card_run
    mine = "## Where it runs\n\nOn the clinic's scanner only. Grüße, Ærø, 数字\n\n"
    (run_dir / CARD_NAME).write_bytes((mine + card).encode("utf-16"))
    code, out, err = call_script(test_script.main, str(run_dir), cwd=run_dir.parents[1])
    assert code == 0, err
    text = (run_dir / CARD_NAME).read_text(encoding="utf-8")
    assert text.startswith(mine) and "## Test results\n\nOn the test split" in text
    assert f"note: {run_dir / CARD_NAME} is utf-16 text, not UTF-8; read as such; it is rewritten as UTF-8" in out
    (run_dir / CARD_NAME).write_text(card, encoding="utf-8")


def test_a_card_from_before_the_markers_keeps_the_sections_a_person_added(card_run):
    run_dir, ckpt, card = card_run
    start, end = START_LINE.search(card), card.index(END)
    old = "Notes on top.\n" + card[start.end():end].lstrip("\n") + "## Mine\n\nkept\n" + card[end + len(END):]
    (run_dir / CARD_NAME).write_text(old, encoding="utf-8")
    write_card(run_dir, ckpt)
    text = (run_dir / CARD_NAME).read_text(encoding="utf-8")
    assert text.startswith("Notes on top.\n") and "## Mine\n\nkept" in text and text.count(USER_SECTION) == 1
    assert START_LINE.search(text) and text.count("## Data") == 1
    (run_dir / CARD_NAME).write_text(card, encoding="utf-8")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)


@fuzz(40)
@given(text=st.one_of(st.text(max_size=30).filter(lambda t: not parses(t)),  # not JSON at all
                      JSON.filter(lambda v: not isinstance(v, dict)).map(json.dumps)),  # JSON of another shape
       encoding=st.sampled_from(UNICODE))
def test_an_exports_json_that_is_not_an_object_is_named_before_an_export_and_kept(card_run, text, encoding):
    run_dir, ckpt, card = card_run
    (run_dir / EXPORTS_NAME).write_bytes(text.encode(encoding))
    before = snapshot(run_dir)
    code, out, err = call_script(export.main, str(run_dir), "--no-verify", cwd=run_dir.parents[1])
    assert code == 2 and err.startswith(f"error: {run_dir / EXPORTS_NAME} ") and err.count("\n") == 1, err
    assert "move the file away" in err and snapshot(run_dir) == before  # nothing written, the file as it was
    write_card(run_dir, ckpt)  # the card says why it lists no files, and leaves the file alone
    assert f"Not listed: {run_dir / EXPORTS_NAME} " in (run_dir / CARD_NAME).read_text(encoding="utf-8")
    assert (run_dir / EXPORTS_NAME).read_bytes() == text.encode(encoding)
    (run_dir / EXPORTS_NAME).unlink()
    (run_dir / CARD_NAME).write_text(card, encoding="utf-8")


def parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@fuzz(40)
@given(exports=st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda n: "/" not in n and "\0" not in n),
                               JSON, max_size=4),
       added=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ENTRY_KEYS), JSON, max_size=3),
       encoding=st.sampled_from(UNICODE))
def test_recording_an_export_keeps_every_other_entry_and_the_keys_a_person_added(card_run, exports, added, encoding):
    run_dir, ckpt, card = card_run
    exports = {**exports, "model.onnx": {**exports.get("model.onnx", {}), **added}} if isinstance(
        exports.get("model.onnx", {}), dict) else exports
    (run_dir / EXPORTS_NAME).write_bytes(json.dumps(exports).encode(encoding))
    (run_dir / "model.onnx").write_bytes(b"onnx")
    record_export(run_dir / "model.onnx", run_dir / "best.pt", ckpt["epoch"], "checked")
    now = json.loads((run_dir / EXPORTS_NAME).read_text(encoding="utf-8"))
    assert {name: entry for name, entry in now.items() if name != "model.onnx"} == {
        name: entry for name, entry in exports.items() if name != "model.onnx"}
    earlier = exports.get("model.onnx")
    if isinstance(earlier, dict):
        assert all(now["model.onnx"][key] == value for key, value in earlier.items() if key not in ENTRY_KEYS)
    assert now["model.onnx"]["check"] == "checked"
    write_card(run_dir, ckpt)  # any entry a person edited into any shape: listed, no crash
    assert "| model.onnx | best.pt" in (run_dir / CARD_NAME).read_text(encoding="utf-8")
    (run_dir / EXPORTS_NAME).unlink()
    (run_dir / "model.onnx").unlink()
    (run_dir / CARD_NAME).write_text(card, encoding="utf-8")


ENTRY_KEYS = ("checkpoint", "epoch", "bytes", "sha256", "check", "date")


@fuzz(40)
@given(comments=st.lists(st.tuples(st.integers(0, 200), st.text(st.characters(
           blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\ufeff"), max_size=30)),
           min_size=1, max_size=4),
       encoding=st.sampled_from(UNICODE), changed=st.booleans())
def test_a_run_config_keeps_the_comments_a_person_added(tmp_path_factory, comments, encoding, changed):
    run_dir = tmp_path_factory.mktemp("config")
    cfg = load_config(None, TINY)
    runs.write_config(cfg, run_dir)
    lines = (run_dir / "config.yaml").read_text(encoding="utf-8").splitlines()
    for position, comment in comments:
        lines.insert(min(position, len(lines)), "# " + comment)
    edited = "\n".join(lines) + "\n"
    (run_dir / "config.yaml").write_bytes(edited.encode(encoding))
    if changed:  # --resume with train.epochs=5: the values are rewritten, the comments kept below
        cfg = load_config(None, [*TINY, "train.epochs=5"])
    runs.write_config(cfg, run_dir)
    text = (run_dir / "config.yaml").read_bytes()
    if not changed:  # the same config: the file is left as the person saved it
        assert text == edited.encode(encoding)
    else:
        assert all(("# " + comment).strip() in text.decode("utf-8") for _, comment in comments)
        assert "epochs: 5" in text.decode("utf-8")


def test_resume_names_an_unreadable_or_unknown_edit_of_the_run_config(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path)
    config = (run_dir / "config.yaml").read_text(encoding="utf-8")
    for edit, says in (("- 1\n- 2\n", "not a config (data:, model:, ...)"),
                       (config.replace("  lr:", "  lrr: 0.1\n  lr:"), "'train.lrr', which is not a config key "
                                                                          "(did you mean train.lr?)"),
                       (config.replace("epochs: 3", "epochs: 3  # caf\xe9"), "is not UTF-8 text")):
        data = edit.encode("latin-1") if "\xe9" in edit else edit.encode()
        (run_dir / "config.yaml").write_bytes(data)
        before = snapshot(run_dir)
        code, out, err = call_script(train.main, "--resume", str(run_dir), cwd=tmp_path)
        assert code == 2 and says in err and err.count("\n") == 1, err
        assert snapshot(run_dir) == before
    (run_dir / "config.yaml").write_bytes(config.encode("utf-16"))  # a Unicode encoding with its mark: read
    code, out, err = call_script(train.main, "--resume", str(run_dir), cwd=tmp_path)
    assert code == 0 and "already finished" in out, err


@fuzz(30)
@given(added=st.dictionaries(st.text(max_size=8), JSON, max_size=3), garbage=st.booleans())
def test_a_report_keeps_the_keys_a_person_added_or_is_kept_aside(tmp_path_factory, added, garbage):
    path = tmp_path_factory.mktemp("report") / "test_report.json"
    path.write_text("{not json" if garbage else json.dumps({"accuracy": 0.1, **added}))
    data = kept_keys(path, {"accuracy": 0.5, "epoch": 3})
    if garbage:
        assert data == {"accuracy": 0.5, "epoch": 3} and path.with_name("test_report.json.edited").read_text() == (
            "{not json")
    else:
        assert data["accuracy"] == 0.5 and all(data[k] == v for k, v in added.items() if k not in ("accuracy", "epoch"))


@fuzz(60)
@given(text=st.text(), encoding=st.sampled_from(UNICODE))
def test_decoding_reads_every_unicode_encoding_back(text, encoding):
    data = text.encode(encoding)
    if encoding == "utf-8-sig" or not text.startswith("\ufeff"):
        assert decode(data)[0] == text
