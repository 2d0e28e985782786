"""Grad-CAM (test.py --cam) on a data set whose class is decided only by a bright patch at a known place."""
import torch
from PIL import Image

from engine.checkpoint import data_of, load_checkpoint, model_from_checkpoint
from engine.datasource import read_image
from engine.explain import grad_cam
from engine.loaders import Batching, Loader
import test as test_script
from train import train

SIZE = 16
PATCH = slice(5, 11)  # rows and columns of the bright patch
# Without pooling the last conv layer's map keeps the image's 16x16 and each cell sees 7x7 pixels, so the
# map can localise; with the default three max pools one cell would see the whole image.
NO_POOLS = [f"model.conv_blocks.{i}.pool=none" for i in range(3)]


def make_patch_folders(root, per_class: dict[str, int]) -> None:
    """Dim noise everywhere; in class 'patch' also a bright 6x6 square at PATCH, in class 'blank' not."""
    generator = torch.Generator().manual_seed(0)
    for split, count in per_class.items():
        for name in ("blank", "patch"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = torch.randint(0, 80, (SIZE, SIZE), generator=generator, dtype=torch.uint8)
                if name == "patch":
                    image[PATCH, PATCH] = 255
                Image.fromarray(image.numpy()).save(root / split / name / f"{i}.png")


def test_heatmap_peaks_inside_the_patch(tiny_cfg, tmp_path, capsys):
    make_patch_folders(tmp_path / "patches", {"train": 60, "test": 8})
    run_dir = train(tiny_cfg("data.name=folder", f"data.root={tmp_path / 'patches'}", "data.channels=1",
                             f"data.image_size={SIZE}", "data.val_fraction=0.2", "train.epochs=5",
                             "train.batch_size=16", *NO_POOLS))
    ckpt = load_checkpoint(run_dir / "best.pt")
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    files = sorted((tmp_path / "patches" / "test" / "patch").glob("*.png"))
    images = torch.stack([read_image(f, 1, SIZE, max_pixels=10_000) for f in files])
    loader = Loader(images, torch.zeros(len(files), dtype=torch.int64), Batching(len(files)), data_of(ckpt),
                    torch.device("cpu"))
    heat, probs = grad_cam(model, next(iter(loader))[0])
    assert heat.shape == (len(files), SIZE, SIZE) and heat.min() >= 0 and heat.max() == 1
    assert (probs.argmax(1) == data_of(ckpt).class_names.index("patch")).all()
    for file, heatmap in zip(files, heat):
        row, col = divmod(int(heatmap.argmax()), SIZE)
        assert PATCH.start <= row < PATCH.stop and PATCH.start <= col < PATCH.stop, (file, row, col)

    test_script.cam(run_dir / "best.pt", str(files[0]), torch.device("cpu"), max_pixels=10_000)
    assert (run_dir / "gradcam.png").read_bytes()[:4] == b"\x89PNG"
    assert "predicted patch (" in capsys.readouterr().out
