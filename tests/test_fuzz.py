"""Property-based fuzzing (Hypothesis) of the config layer and of every script's command line: random
overrides, random YAML documents, random values for every key, random argument lists. The properties:
a config either loads (and its saved form loads back to the same config) or fails with one UserError;
a script exits 0 or 2 (1 for --predict with unreadable files), never shows a traceback, prints at most
one `error:` line, and leaves an existing run's files byte-identical.

Examples are derandomised and bounded so CI is fast and repeatable; FUZZ_EXAMPLES=2000 explores more,
with fresh random cases each run."""
import os
import shutil

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="Hypothesis is an extra: pip install -r requirements-extras.txt")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from conftest import TINY, call_script, copy_run, snapshot  # noqa: E402
from engine.config import DEFAULT_CONFIG, config_from_dict, flatten, load_config, to_dict, to_yaml  # noqa: E402
from engine.errors import UserError  # noqa: E402
import test as test_script  # noqa: E402
from tools import compare  # noqa: E402
from tools import summary  # noqa: E402
import train  # noqa: E402

EXPLORE = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    """Bounded, repeatable examples in CI; FUZZ_EXAMPLES=N for N random ones per property."""
    return settings(max_examples=EXPLORE or examples, derandomize=not EXPLORE, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


DEFAULTS = yaml.safe_load(DEFAULT_CONFIG.read_text())
KEYS = sorted(flatten(DEFAULTS)) + [f"model.conv_blocks.{i}.{key}" for i in (0, 2, 3) for key in
                                    ("out_channels", "kernel_size", "stride", "padding", "pool", "pool_stride")]
KEYS += ["model.hidden.0", "model.hidden.1", "train", "data.name.x", "run..seed", "", "x" * 50]
ODD_TEXT = ["auto", "none", "cpu", "cuda:7", "1e-3", "-0", "[", "{a: 1}", "!!python/object/apply:os.system [ls]",
            "&a [*a]", "0x10", "1_000", ".inf", ".nan", "~", "'", "\"\\x00\"", "2e308", "café", "a\tb", "null"]
VALUES = st.one_of(
    st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=12), st.lists(st.integers(-3, 300), max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["out_channels", "kernel_size", "pool"]), st.integers(-1, 9)),
             max_size=2))


def as_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


OVERRIDES = st.one_of(
    st.builds(lambda key, value: f"{key}={as_yaml(value)}", st.sampled_from(KEYS), VALUES),
    st.builds(lambda key, text: f"{key}={text}", st.sampled_from(KEYS), st.sampled_from(ODD_TEXT)),
    st.text(max_size=30))


def loads_or_refuses(load) -> None:
    """The config property: a Config whose saved YAML loads back to itself, or one UserError."""
    try:
        cfg = load()
    except UserError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg  # what a run saves repeats the run
    assert config_from_dict(to_dict(cfg)) == cfg  # and what a checkpoint stores


@fuzz(50)
@given(st.lists(OVERRIDES, max_size=4))
def test_random_overrides_load_or_give_one_user_error(overrides):
    loads_or_refuses(lambda: load_config(None, overrides))


def mutated_config(lines: list[str], edits: list[tuple[int, int]]) -> str:
    """config.yaml with lines dropped, doubled, cut or given a stray character."""
    lines = list(lines)
    for kind, where in edits:
        i = where % len(lines)
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[i])  # a key given twice
        elif kind == 2:
            lines[i] = lines[i][: len(lines[i]) // 2]
        else:
            lines[i] = lines[i][:where % 7] + "\t:-[{'\"&*!|>%@`"[where % 15] + lines[i][where % 7:]
    return "\n".join(lines)


DOCUMENTS = st.one_of(
    st.builds(mutated_config, st.just(DEFAULT_CONFIG.read_text().splitlines()),
              st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000)), min_size=1, max_size=3)),
    st.recursive(VALUES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["data", "model", "train", "run", "log", "name", "lr"]), inner, max_size=4)).map(as_yaml),
    st.text(max_size=60))


@fuzz(30)
@given(DOCUMENTS, st.sampled_from([b"", b"\xff\xfe", b"\xe9"]))
def test_random_yaml_documents_load_or_give_one_user_error(tmp_path_factory, document, prefix):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_bytes(prefix + document.encode())
    loads_or_refuses(lambda: load_config(path, []))


# --- the command lines ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tiny_run, tmp_path_factory):
    """A copy of the tiny run beside inputs a user might pass: images, broken files, folders."""
    root = tmp_path_factory.mktemp("fuzz")
    copy_run(tiny_run, root)
    shutil.copy(tiny_run.run_dir / "metrics.csv", root / "metrics.csv")
    (root / "empty.pt").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / "bad.yaml").write_text("train: {lr: 1, lr: 2}\n")
    from PIL import Image
    Image.new("L", (12, 12), 200).save(root / "digit.png")
    return root


PATHS = ["checkpoints/r", "checkpoints/r/best.pt", "checkpoints/r/last.pt", "checkpoints", "digit.png",
         "empty.pt", "notes.txt", "missing", "bad.yaml", "metrics.csv", ".", "..", "/", "checkpoints/r/config.yaml"]
SAFE_TRAIN_KEYS = [k for k in KEYS if k.split(".")[0] in ("train", "model", "run", "log") and k not in (
    "train.epochs", "train.batch_size", "train.eval_batch_size", "model.hidden", "run.compile", "run.deterministic",
    "run.threads", "run.output_dir", "run.name") and "out_channels" not in k]
TRAIN_OVERRIDES = st.builds(lambda key, value: f"{key}={as_yaml(value)}", st.sampled_from(SAFE_TRAIN_KEYS), VALUES)
FLAGS = {
    "train": ["--resume", "--print-config", "--config", "--help-me"],
    "test": ["--split", "--top-k", "--predict", "--output", "--feature-maps", "--batch-size", "--config"],
    "summary": ["--checkpoint", "--config"],
    "compare": ["--output"],
}
ARGUMENTS = st.one_of(st.sampled_from(PATHS), st.sampled_from(["-3", "0", "1", "5", "val", "test", "x" * 300]),
                      OVERRIDES)
SCRIPTS = {"train": train.main, "test": test_script.main, "summary": summary.main, "compare": compare.main}
RUN_FILES = ("best.pt", "last.pt", "config.yaml", "metrics.csv", "curves.png")


def argv(script: str):
    token = st.one_of(st.sampled_from(FLAGS[script]), ARGUMENTS)
    if script == "train":  # quick runs only: tiny, one epoch, into a scratch folder, unless refused first
        fixed = [*TINY, "train.epochs=1", "run.threads=1", "run.output_dir=scratch"]
        return st.lists(st.one_of(token, TRAIN_OVERRIDES), max_size=4).map(lambda rest: fixed + rest)
    return st.lists(token, max_size=5)


def check_ending(workdir, script: str, args: list[str]) -> None:
    before = snapshot(workdir / "checkpoints" / "r")
    code, out, err = call_script(SCRIPTS[script], *args, cwd=workdir)
    assert "Traceback" not in err + out
    predicting = "--predict" in args
    assert code in ((0, 1, 2) if predicting else (0, 2)), (code, err)
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert predicting or len(error_lines) <= 1, err
    after = snapshot(workdir / "checkpoints" / "r")
    assert {p: h for p, h in after.items() if p.name in RUN_FILES} == {
        p: h for p, h in before.items() if p.name in RUN_FILES}, args


@pytest.mark.parametrize("script,examples", [("train", 15), ("test", 15), ("summary", 15), ("compare", 10)])
def test_random_command_lines_end_cleanly(workdir, script, examples, monkeypatch):
    torch_threads = __import__("torch").get_num_threads()

    @fuzz(examples)
    @given(argv(script))
    def run(args):
        check_ending(workdir, script, args)
    try:
        run()
    finally:
        __import__("torch").set_num_threads(torch_threads)
