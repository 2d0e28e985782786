"""Every input format, built by the tests in every variant the rules name: image modes and damaged or
oversized images, IDX files, symbolic links in data folders, YAML, checkpoints, numbers at their limits.
Each is read in-process through the function the scripts use."""
import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import call_script
from engine import datasets, loaders
from engine.checkpoint import load_checkpoint
from engine.config import SEED_MAX, load_config
from engine.datasource import DataInfo, read_image
from engine.errors import UserError
from engine.loaders import Batching, Loader
import test as test_script

MAX_PIXELS = 50_000_000
DARK, LIGHT = 30, 220  # grey levels of the left and right halves of every test image


def halves(width: int = 16) -> np.ndarray:
    """(16, width) uint8: DARK on the left half, LIGHT on the right."""
    grey = np.full((16, width), DARK, dtype=np.uint8)
    grey[:, width // 2:] = LIGHT
    return grey


def with_alpha(mode: str) -> Image.Image:
    """Black everywhere, transparent on the left half: over white, the left is white and the right black."""
    alpha = np.full((16, 16), 255, dtype=np.uint8)
    alpha[:, :8] = 0
    black = Image.new(mode[:-1] if mode != "PA" else "P", (16, 16), 0)
    return Image.merge(mode, (*black.split(), Image.fromarray(alpha)))


def palette_with_transparency() -> Image.Image:
    img = Image.fromarray(np.where(halves() == DARK, 1, 0).astype(np.uint8), "P")
    img.putpalette([0, 0, 0, 255, 255, 255])  # index 0 black, index 1 white ...
    img.info["transparency"] = 1  # ... but index 1 (the left half) is transparent
    return img


# mode -> (file name, image, expected grey of the left and right halves)
CORPUS = {
    "1": ("bilevel.png", Image.fromarray(halves() > 128), (0, 255)),
    "L": ("grey.png", Image.fromarray(halves()), (DARK, LIGHT)),
    "L jpeg": ("grey.jpg", Image.fromarray(halves()), (DARK, LIGHT)),
    "P": ("palette.png", Image.fromarray(halves()).convert("RGB").convert("P"), (DARK, LIGHT)),
    "P gif": ("palette.gif", Image.fromarray(halves()).convert("P"), (DARK, LIGHT)),
    "P transparency": ("palette_t.png", palette_with_transparency(), (255, 0)),
    "LA": ("grey_alpha.png", with_alpha("LA"), (255, 0)),
    "RGBA": ("rgba.png", with_alpha("RGBA"), (255, 0)),
    "RGB bmp": ("rgb.bmp", Image.fromarray(halves()).convert("RGB"), (DARK, LIGHT)),
    "RGB webp": ("rgb.webp", Image.fromarray(halves()).convert("RGB"), (DARK, LIGHT)),
    "CMYK": ("cmyk.tif", Image.fromarray(halves()).convert("RGB").convert("CMYK"), (DARK, LIGHT)),
    "CMYK jpeg": ("cmyk.jpg", Image.fromarray(halves()).convert("RGB").convert("CMYK"), (DARK, LIGHT)),
    "I;16": ("grey16.png", Image.fromarray(halves().astype(np.uint16) * 257), (DARK, LIGHT)),
    "I": ("grey32.tif", Image.fromarray(halves().astype(np.int32) * 257), (DARK, LIGHT)),
    "F": ("float.tif", Image.fromarray(halves().astype(np.float32) / 255), (DARK, LIGHT)),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(CORPUS))
def test_every_image_mode_decodes_to_the_configured_channels_with_its_grey_levels(tmp_path, name, channels):
    filename, img, (left, right) = CORPUS[name]
    path = tmp_path / filename
    img.save(path)
    pixels = read_image(path, channels, 8, MAX_PIXELS)
    assert pixels.shape == (channels, 8, 8) and pixels.dtype == torch.uint8
    grey = pixels.float().mean(0)  # (8, 8)
    assert abs(grey[:, :3].mean().item() - left) <= 12, (Image.open(path).mode, grey)
    assert abs(grey[:, 5:].mean().item() - right) <= 12, (Image.open(path).mode, grey)


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(halves()).save(buf, "PNG")
    return buf.getvalue()


def bomb(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: what a decompression bomb shows before decoding."""
    data = bytearray(png_bytes())
    struct.pack_into(">II", data, 16, width, height)  # IHDR's width and height
    struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))  # and its checksum
    return bytes(data)


DAMAGED = {
    "empty.png": (b"", "is not a readable image"),
    "text.png": (b"not an image at all", "is not a readable image"),
    "half.png": (png_bytes()[: len(png_bytes()) // 2], "is not a readable image"),
    "header_only.png": (png_bytes()[:33], "is not a readable image"),
    "bomb.png": (bomb(10_000, 10_000), "10000x10000 = 100,000,000 pixels, over data.max_pixels (50,000,000)"),
    "huge_bomb.png": (bomb(60_000, 60_000), "more pixels than Pillow opens (a decompression bomb?)"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_and_oversized_images_are_named(tmp_path, name):
    content, message = DAMAGED[name]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        read_image(tmp_path / name, 1, 8, MAX_PIXELS)


def test_predict_names_a_decompression_bomb_and_predicts_the_rest(tiny_run, tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb(10_000, 10_000))
    Image.fromarray(halves()).save(tmp_path / "digit.png")
    code, out, err = call_script(test_script.main, str(tiny_run.run_dir), "--predict", "bomb.png", "digit.png",
                                 cwd=tmp_path)
    assert code == 1
    assert err.startswith("error: bomb.png is 10000x10000") and "over data.max_pixels" in err
    assert out.splitlines()[0].startswith(f"predictions of {tiny_run.run_dir / 'best.pt'} (cnn on digits, epoch")
    assert out.splitlines()[1].startswith("digit.png: ")


def test_the_pixel_limit_is_a_config_key(tmp_path):
    Image.fromarray(halves()).save(tmp_path / "small.png")
    with pytest.raises(UserError, match=r"16x16 = 256 pixels, over data.max_pixels \(100\)"):
        read_image(tmp_path / "small.png", 1, 8, load_config(None, ["data.max_pixels=100"]).data.max_pixels)


# --- IDX (MNIST's files) -------------------------------------------------------------------------

def idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist(tmp_path: Path, images: bytes | None = None, labels: bytes | None = None):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    good_images = idx(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    good_labels = idx(np.arange(20, dtype=np.uint8) % 10)
    (raw / "train-images-idx3-ubyte").write_bytes(good_images if images is None else images)
    (raw / "train-labels-idx1-ubyte").write_bytes(good_labels if labels is None else labels)
    cfg = load_config(None, ["data.name=mnist", f"data.root={tmp_path}", "data.cache_dir="])
    return lambda: datasets.load_split(cfg.data, "train"), good_images, good_labels


def test_well_formed_idx_files_load(tmp_path):
    load, _, _ = mnist(tmp_path)
    images, labels = load()
    assert images.shape == (20, 1, 28, 28) and labels.tolist() == [i % 10 for i in range(20)]


IDX_CASES = {  # name -> (make the images file, make the labels file) from the good ones, message
    "fewer labels": (lambda im: im, lambda lb: idx(np.arange(19, dtype=np.uint8) % 10), "holds 20 images but .* 19 labels"),
    "gzipped": (gzip.compress, lambda lb: lb, "is still gzip-compressed"),
    "truncated": (lambda im: im[:-100], lambda lb: lb, "truncated"),
    "extra bytes": (lambda im: im + b"\0", lambda lb: lb, "extra data"),
    "wrong type": (lambda im: im[:2] + b"\x09" + im[3:], lambda lb: lb, "header is wrong"),
    "wrong dimensions": (lambda im: im[:3] + b"\x02" + im[4:], lambda lb: lb, "header is wrong"),
    "empty": (lambda im: b"", lambda lb: lb, "header is wrong"),
    "label out of range": (lambda im: im, lambda lb: lb[:-1] + b"\x0c", "has label 12"),
    "image size": (lambda im: idx(np.zeros((20, 27, 28), np.uint8)), lambda lb: lb, r"\(27, 28\) pixels"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_damaged_idx_files_are_named(tmp_path, case):
    make_images, make_labels, message = IDX_CASES[case]
    _, good_images, good_labels = mnist(tmp_path / "good")
    load, _, _ = mnist(tmp_path, make_images(good_images), make_labels(good_labels))
    with pytest.raises(UserError, match=message):
        load()


# --- folders: symbolic links and classes -----------------------------------------------------------

def folder_set(root: Path, classes=("a", "b")) -> object:
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(halves()).save(root / split / name / f"{i}.png")
    return load_config(None, ["data.name=folder", f"data.root={root}", "data.channels=1"]).data


def test_symbolic_links_are_followed(tmp_path):
    cfg = folder_set(tmp_path / "set")
    Image.fromarray(halves()).save(tmp_path / "elsewhere.png")
    (tmp_path / "set" / "train" / "a" / "linked.png").symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "more").mkdir()
    Image.fromarray(halves()).save(tmp_path / "more" / "0.png")
    (tmp_path / "set" / "train" / "c").symlink_to(tmp_path / "more")
    (tmp_path / "set" / "test" / "c").symlink_to(tmp_path / "more")
    files, labels = datasets.source_of(cfg).split_files(cfg, "train")
    assert len(files) == 8 and labels.tolist() == [0] * 4 + [1] * 3 + [2]
    assert datasets.cache_path(cfg, "train") is not None


@pytest.mark.parametrize("link", ["dangling", "loop", "class loop"])
def test_broken_symbolic_links_are_named(tmp_path, link):
    cfg = folder_set(tmp_path)
    where = {"dangling": tmp_path / "train" / "a" / "gone.png", "loop": tmp_path / "train" / "a" / "loop.png",
             "class loop": tmp_path / "train" / "c"}[link]
    where.symlink_to(tmp_path / "nowhere.png" if link == "dangling" else where)
    for read in (lambda: datasets.source_of(cfg).split_files(cfg, "train"), lambda: datasets.cache_path(cfg, "train")):
        with pytest.raises(UserError, match=f"{where.name} is a broken symbolic link"):
            read()


def test_a_folder_set_with_one_class_is_refused(tmp_path):
    cfg = folder_set(tmp_path, classes=("only",))
    with pytest.raises(UserError, match="has one class folder \\(only\\); a classifier needs at least two"):
        datasets.describe(cfg)


# --- YAML -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("train:\n  lr: 0.1\n  lr: 0.2\n", "line 3 \\(key 'lr' appears twice\\)"),
    ("run: {}\nrun: {}\n", "key 'run' appears twice"),
    ("[" * 5000 + "]" * 5000, "nested too deeply|nested more than|not valid YAML"),
])
def test_yaml_that_would_be_misread_is_refused(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(tmp_path / "c.yaml", [])


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "c.yaml").write_bytes("run:\n  name: café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"c.yaml is not UTF-8 text \(byte 16\); save it as UTF-8"):
        load_config(tmp_path / "c.yaml", [])


# --- checkpoints and numbers ----------------------------------------------------------------------

@pytest.mark.parametrize("damage,message", [
    (lambda c: c["model"].__setitem__(next(iter(c["model"])), torch.full_like(next(iter(c["model"].values())),
                                                                              float("nan"))), "NaN or infinite"),
    (lambda c: c.pop("model"), "lacks a valid 'model' entry"),
    (lambda c: c["data"].pop("mean"), "'data' entry with keys"),
    (lambda c: c.__setitem__("epoch", "3"), "lacks a valid 'epoch' entry"),
])
def test_damaged_checkpoints_are_refused(tiny_run, tmp_path, damage, message):
    ckpt = torch.load(tiny_run.run_dir / "best.pt", weights_only=True)
    damage(ckpt)
    torch.save(ckpt, tmp_path / "damaged.pt")
    with pytest.raises(UserError, match=message):
        load_checkpoint(tmp_path / "damaged.pt")


def test_the_largest_seed_shuffles_and_splits(tmp_path):
    info = DataInfo(1, 2, ["a", "b"], [0.5], [0.5])
    loader = Loader(torch.zeros(9, 1, 2, 2, dtype=torch.uint8), torch.arange(9) % 2,
                    Batching(4, shuffle_seed=SEED_MAX), info, torch.device("cpu"))
    loader.set_epoch(3)
    assert [len(labels) for _, labels in loader] == [4, 5]  # the lone last image joins the batch before it
    assert len(loader) == 2
    loaders.train_val_split(torch.arange(10) % 2, 0.2, SEED_MAX)
    with pytest.raises(UserError, match="run.seed: must be between 0 and 9223372036854775807"):
        load_config(None, [f"run.seed={SEED_MAX + 1}"])
