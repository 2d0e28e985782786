"""Property-based fuzzing (Hypothesis) of every input a user hands the scripts, beyond the config strings of
test_fuzz.py: YAML documents of any shape (lists, scalars, deep nesting, aliases, huge values), file names
(control characters, very long, bytes that are not UTF-8), image files (every Pillow mode, truncated at any
offset), checkpoint dicts (entries missing, extra or of the wrong type) and ONNX files (metadata and input that
disagree). The property is always the same: exit 0 with a correct result, or exit 2 (1 for files --predict
could not read) with one short `error:` line per problem, nothing protected changed, no temporary file left.

Bounded and derandomised in the suite; FUZZ_EXAMPLES=N (benchmarks/fuzz.py) runs N random cases per property."""
import io
import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

hypothesis = pytest.importorskip("hypothesis", reason="Hypothesis is an extra: pip install -r requirements-extras.txt")
from hypothesis import given, strategies as st  # noqa: E402

from conftest import call_script, copy_run, snapshot  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.entry import LINE_MAX  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.imagefiles import ImageError, decode_image  # noqa: E402
import test as test_script  # noqa: E402
from test_fuzz import fuzz  # noqa: E402  (bounded in CI; FUZZ_EXAMPLES=N explores)
from tools import summary  # noqa: E402

def short_message(err: Exception) -> str:
    """A UserError's message is one short line at its source (control characters are escaped when printed)."""
    message = str(err)
    assert message and "\n" not in message and len(message) <= LINE_MAX, message[:2000]
    return message


def ends_cleanly(code: int, stderr: str, stdout: str, allowed=(0, 2)) -> list[str]:
    """The script property: an allowed status, no traceback, each stderr line a short `error:` line."""
    assert code in allowed, (code, stderr[-2000:])
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert all(line.startswith("error: ") and len(line) <= LINE_MAX for line in lines), stderr[-2000:]
    assert code != 2 or len(lines) == 1, stderr
    assert "unexpected" not in stderr, stderr
    return lines


# --- YAML documents of every shape -----------------------------------------------------------------

SCALARS = st.one_of(st.integers(-2 ** 80, 2 ** 80), st.floats(), st.booleans(), st.none(), st.text(max_size=20),
                    st.integers(500, 3000).map(lambda n: "é" * n), st.integers(10 ** 30, 10 ** 40))
KEYS = st.sampled_from(["data", "model", "train", "run", "log", "name", "lr", "epochs", "hidden", "conv_blocks",
                        "batch_size", "class_weights", "image_size", "x"])
SHAPES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(KEYS, inner, max_size=5),
                      max_leaves=30)


def sections(value) -> dict:
    """A document shaped like a config: known sections holding generated values."""
    return {"train": {"lr": value}} if not isinstance(value, dict) else {"train": value, "model": value}


def alias_document(fan_out: int, depth: int, where: str) -> str:
    """An anchor expanded fan_out times per level, depth levels deep, under the key where."""
    lines = [f"l0: &l0 [{', '.join(['x'] * fan_out)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan_out)}]" for i in range(1, depth)]
    body = "\n".join("  " + line for line in lines)
    return f"{where}:\n{body}\n" if where else "\n".join(lines) + "\n"


DOCUMENTS = st.one_of(
    SHAPES.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    SHAPES.map(lambda v: yaml.safe_dump(sections(v), allow_unicode=True)),
    st.builds(alias_document, st.integers(1, 12), st.integers(1, 9), st.sampled_from(["train", "extra", "model", ""])),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, n)) + "  " * n + "1\n"),
)


@fuzz(15)
@given(DOCUMENTS)
def test_yaml_of_any_shape_loads_or_gives_one_short_line(tmp_path_factory, document):
    check_yaml(tmp_path_factory.mktemp("yaml") / "c.yaml", document)


def check_yaml(path, document: str) -> None:
    path.write_text(document, encoding="utf-8")
    try:
        load_config(path, [])
    except UserError as err:
        short_message(err)


# --- file names -----------------------------------------------------------------------------------

NAME_CHARS = st.one_of(st.characters(codec="utf-8", exclude_characters="/\x00"),
                       st.sampled_from(["\n", "\r", "\t", "\x1b", "\x7f", " ", "é", "\u202e", "\ufeff"]))
NAMES = st.one_of(st.text(NAME_CHARS, min_size=1, max_size=40),
                  st.binary(min_size=1, max_size=40).map(lambda b: os.fsdecode(b.replace(b"/", b"_").replace(b"\0", b"_"))),
                  st.integers(200, 250).map(lambda n: "x" * n))


@pytest.fixture(scope="module")
def predict_dir(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    copy_run(tiny_run, root)
    return root


@fuzz(12)
@given(st.lists(NAMES, min_size=1, max_size=3, unique=True), st.lists(st.booleans(), min_size=3, max_size=3))
def test_any_file_name_is_predicted_or_named_on_one_line(predict_dir, names, readable):
    check_names(predict_dir, names, readable)


def check_names(root, names: list[str], readable: list[bool]) -> None:
    folder = root / "photos"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    made = []
    for name, good in zip(names, readable):
        if name in (".", "..") or name.startswith("."):
            continue
        try:
            path = folder / name
            Image.new("L", (8, 8), 90).save(path, "PNG") if good else path.write_bytes(b"not an image")
            made.append((name, good))
        except (OSError, ValueError):  # a name this file system refuses
            continue
    before = snapshot(root / "checkpoints")
    code, out, err = call_script(test_script.main, "checkpoints/r", "--predict", "photos", cwd=root)
    lines = ends_cleanly(code, err, out, (0, 1))
    readable_count = sum(good for _, good in made)
    assert len(lines) == len(made) - readable_count + (not made)  # one line per unreadable file (or the empty folder)
    table = out.splitlines()
    assert len(table) == (readable_count + 1 if readable_count else 0)  # the header naming the model, one row each
    assert snapshot(root / "checkpoints") == before and not list(root.rglob("*.tmp"))


# --- image files: every mode, truncated anywhere ---------------------------------------------------

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "LAB", "HSV", "RGBX", "La"]
FORMATS = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"), "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA",
           "CMYK", "YCbCr", "I", "I;16", "F", "LAB"), "JPEG": ("L", "RGB", "CMYK"), "BMP": ("1", "L", "P", "RGB"),
           "GIF": ("L", "P"), "WEBP": ("RGB", "RGBA"), "PPM": ("1", "L", "RGB")}


def image_bytes(mode: str, fmt: str, size: tuple[int, int], seed: int) -> bytes | None:
    rng = np.random.default_rng(seed)
    try:
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)
        buffer = io.BytesIO()
        img.save(buffer, fmt)
    except (OSError, ValueError, KeyError):  # a mode this format cannot hold
        return None
    return buffer.getvalue()


@fuzz(40)
@given(st.sampled_from(sorted(FORMATS)), st.sampled_from(MODES), st.tuples(st.integers(1, 40), st.integers(1, 40)),
       st.integers(0, 2 ** 16), st.floats(0, 1), st.sampled_from([1, 3]))
def test_any_image_truncated_anywhere_decodes_or_is_named(tmp_path_factory, fmt, mode, size, seed, cut, channels):
    check_image(tmp_path_factory.mktemp("img"), fmt, mode, size, seed, cut, channels)


def check_image(folder, fmt, mode, size, seed, cut, channels) -> None:
    data = image_bytes(mode, fmt, size, seed)
    if data is None:
        return
    path = folder / f"image.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * cut)] if cut < 1 else data)
    try:
        pixels = decode_image(path, channels, 8)
    except ImageError as err:
        assert str(path) in short_message(err)
        return
    assert pixels.shape == (channels, 8, 8) and pixels.dtype == np.uint8


# --- checkpoint dicts ------------------------------------------------------------------------------

WRONG = st.sampled_from([None, "x", 3, 2.5, True, [], {}, [1, "a"], {"a": 1}, float("nan"), 10 ** 30])
ENTRIES = ["model", "config", "data", "epoch", "history", "best_score", "format_version", "optimizer", "rng",
           "data.class_names", "data.mean", "data.std", "data.image_size", "data.in_channels", "data.class_counts",
           "config.model", "config.model.name", "config.model.hidden", "config.train", "config.train.loss",
           "config.data.name", "config.run.amp", "model.classifier.1.weight", "new_layers", "amp"]
EDITS = st.lists(st.tuples(st.sampled_from(["drop", "wrong", "extra"]), st.sampled_from(ENTRIES), WRONG),
                 min_size=1, max_size=3)


def edited(ckpt: dict, edits) -> dict:
    for kind, entry, value in edits:
        *parents, last = entry.split(".") if not entry.startswith("model.") else ["model", entry[6:]]
        node = ckpt
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if kind == "drop":
            node.pop(last, None)
        elif kind == "wrong":
            node[last] = value
        else:
            node[f"{last}_extra"] = value
    return ckpt


@fuzz(12)
@given(EDITS)
def test_any_checkpoint_dict_is_used_or_refused_on_one_line(predict_dir, edits):
    check_checkpoint(predict_dir, edits)


def check_checkpoint(root, edits) -> None:
    ckpt = edited(torch.load(root / "checkpoints" / "r" / "best.pt", weights_only=True), edits)
    (root / "edited").mkdir(exist_ok=True)
    torch.save(ckpt, root / "edited" / "best.pt")
    Image.new("L", (8, 8), 90).save(root / "digit.png")
    before = snapshot(root / "checkpoints")
    for main, args in ((test_script.main, ["edited", "--predict", "digit.png"]), (summary.main, ["--checkpoint", "edited"])):
        code, out, err = call_script(main, *args, cwd=root)  # the report's reading is test_fuzz.py's (its plots are slow)
        ends_cleanly(code, err, out)
    assert snapshot(root / "checkpoints") == before and not list(root.rglob("*.tmp"))
    try:
        load_checkpoint(root / "edited" / "best.pt")
    except UserError as err:
        short_message(err)


# --- ONNX files: metadata and graph that disagree --------------------------------------------------

onnx = pytest.importorskip("onnx", reason="onnx is an extra: pip install -r requirements-extras.txt")
pytest.importorskip("onnxruntime", reason="onnxruntime is an extra: pip install -r requirements-extras.txt")


def onnx_model(input_name: str, dtype: int, shape: list, classes: int, meta: dict[str, str]) -> bytes:
    """images -> Cast(float) -> Flatten -> MatMul (features, classes) -> Softmax: a stand-in for export.py's file."""
    from onnx import TensorProto, helper, numpy_helper
    features = int(np.prod([d for d in shape[1:] if isinstance(d, int)] or [1]))
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((features, classes)).astype(np.float32),
                                     "weight")
    nodes = [helper.make_node("Cast", [input_name], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["f"], ["flat"]), helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(input_name, dtype, shape)],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, meta)
    return model.SerializeToString()


TEXT = st.one_of(st.sampled_from(['["a", "b"]', '["0","1","2"]', "1", "3", "8", "0", "-1", "x", "[]", '"8"', "1e9",
                                  "[1, 2]", "null", "{}", "true", "65536"]), st.text(max_size=30))


@fuzz(20)
@given(st.sampled_from(["images", "x"]), st.sampled_from([2, 1, 7]), st.sampled_from([1, 3]),
       st.sampled_from([8, 4, 1]), st.integers(1, 4), st.dictionaries(
           st.sampled_from(["class_names", "channels", "image_size"]), TEXT, max_size=3))
def test_any_onnx_file_predicts_or_is_named_on_one_line(predict_dir, name, dtype, channels, size, classes, meta):
    check_onnx(predict_dir, name, dtype, channels, size, classes, meta)


def check_onnx(root, name, dtype, channels, size, classes, meta) -> None:
    from tools import predict_onnx
    base = {"class_names": json.dumps([str(i) for i in range(classes)]), "channels": "1", "image_size": "8"}
    (root / "model.onnx").write_bytes(onnx_model(name, dtype, ["N", channels, size, size], classes, {**base, **meta}))
    Image.new("L", (8, 8), 90).save(root / "digit.png")
    code, out, err = call_script(predict_onnx.main, "model.onnx", "digit.png", "--output", "p.csv", cwd=root)
    ends_cleanly(code, err, out)
    if code == 0:
        names = json.loads({**base, **meta}["class_names"])
        row = (root / "p.csv").read_text().splitlines()[1].split(",")
        assert row[1] in names and abs(sum(float(p) for p in row[2:-1:2]) - 1) < 1e-4 or len(names) > 5
    assert not list(root.glob("*.tmp"))


def test_the_onnx_stand_in_with_export_layout_predicts(predict_dir):
    """The generator's baseline is a file predict_onnx.py accepts: what the property checks is a real result."""
    check_onnx(predict_dir, "images", 2, 1, 8, 3, {})
    assert (predict_dir / "p.csv").read_text().splitlines()[0].endswith(",model")
