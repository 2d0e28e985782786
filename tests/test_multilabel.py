"""Multi-label classification (data.multilabel): the metrics against scikit-learn, the loss against PyTorch's,
and a tiny generated set that trains, reports (test.py's numbers are training's) and predicts."""
import json

import pytest
import torch
from PIL import Image

from conftest import TINY, call_script
from engine.checkpoint import load_checkpoint
from engine.datasets import describe
from engine.errors import UserError
from engine.multilabel import average_precision, bce, best_thresholds, scores_at
import test as test_script
from tools import export
import train

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


def test_average_precision_and_thresholds_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(200, 4, generator=generator) < 0.3).float()
    probs = ((targets + torch.rand(200, 4, generator=generator)) / 2).round(decimals=1)  # many ties
    for k in range(4):
        assert average_precision(probs[:, k], targets[:, k]) == pytest.approx(
            metrics.average_precision_score(targets[:, k].numpy(), probs[:, k].numpy()), abs=1e-12)
    thresholds = best_thresholds(probs, targets)
    scores = scores_at(probs, targets, thresholds)
    for k in range(4):
        candidates = [metrics.f1_score(targets[:, k], probs[:, k] >= t) for t in probs[:, k].unique().tolist()]
        assert scores["f1"][k] == pytest.approx(max(candidates), abs=1e-12)
    predicted = (probs >= torch.tensor(thresholds)).numpy()
    assert scores["micro_f1"] == pytest.approx(metrics.f1_score(targets.numpy(), predicted, average="micro"))
    assert scores["subset_accuracy"] == pytest.approx(metrics.accuracy_score(targets.numpy(), predicted))


def test_bce_is_pytorchs_with_pos_weight_and_smoothed_targets():
    logits, targets = torch.randn(6, 3), (torch.rand(6, 3) < 0.5).float()
    weight = torch.tensor([1.0, 2.0, 0.5])
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=weight, reduction="sum")(logits, targets * 0.9 + 0.05) / 6
    assert bce(logits, targets, weight, label_smoothing=0.1) == pytest.approx(expected.item(), rel=1e-6)


def write_multilabel(root, count=60):
    """root/img/<i>.png: grey with a coloured quarter per label present (some images have none)."""
    (root / "img").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    rows = ["file,labels,split"]
    for i in range(count):
        present = [name for name in COLOURS if torch.rand(1, generator=generator) < 0.5]
        image = Image.new("RGB", (8, 8), (128, 128, 128))
        for q, name in enumerate(present):
            image.paste(COLOURS[name], (4 * (q % 2), 4 * (q // 2), 4 * (q % 2) + 4, 4 * (q // 2) + 4))
        image.save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{' '.join(present)},{'test' if i >= count * 3 // 4 else 'train'}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")


def test_a_tiny_multilabel_set_trains_reports_and_predicts(tmp_path):
    write_multilabel(tmp_path)
    args = ["data.name=csv", f"data.root={tmp_path}", "data.labels=train.csv", "data.label_column=labels",
            "data.multilabel=true", "data.image_size=8", "data.val_fraction=0.25", "train.best_metric=map",
            "train.class_weights=balanced", "train.label_smoothing=0.1", "train.mixup_alpha=0.2", *TINY,
            "run.name=m"]
    code, out, err = call_script(train.main, *args, cwd=tmp_path)
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "m" / "best.pt")
    assert ckpt["data"]["class_names"] == ["blue", "green", "red"] and ckpt["data"]["multilabel"]
    assert len(ckpt["data"]["thresholds"]) == 3 and " map " in out
    code, out, err = call_script(test_script.main, "checkpoints/m", "--split", "val", cwd=tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "checkpoints" / "m" / "val_report.json").read_text())
    row = ckpt["history"][ckpt["epoch"] - 1]
    assert report["map"] == pytest.approx(row["val_map"], abs=1e-12)  # test.py's numbers are training's
    assert report["macro_f1"] == pytest.approx(row["val_macro_f1"], abs=1e-12)
    assert [r["threshold"] for r in report["per_label"]] == ckpt["data"]["thresholds"]
    assert (tmp_path / "checkpoints" / "m" / "val_label_scores.png").is_file()
    code, out, err = call_script(test_script.main, "checkpoints/m", "--predict", "img/0.png", cwd=tmp_path)
    assert code == 0, err
    labels = [pair.split()[0] for pair in out.splitlines()[-1].removeprefix("img/0.png:").split(",") if pair.strip()]
    assert set(labels) <= set(COLOURS)  # every label at or above its threshold, none when none is
    code, out, err = call_script(export.main, "checkpoints/m", cwd=tmp_path)
    assert code == 2 and "is a multi-label model (data.multilabel); the export" in err  # not yet: no softmax file


def test_multilabel_needs_a_csv_with_a_test_split(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="data.multilabel needs data.name=csv"):
        describe(tiny_cfg("data.multilabel=true").data)
