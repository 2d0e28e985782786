"""k-fold cross-validation: data.folds / data.fold split the training split, tools/kfold.py runs and resumes."""
import pytest
import torch

from conftest import TINY, call_script, snapshot
from engine.config import load_config
from engine.errors import UserError
from engine.loaders import train_val_split


def test_folds_are_disjoint_stratified_and_cover_the_training_split():
    labels = torch.arange(103) % 3
    vals = [train_val_split(labels, 0.1, seed=7, folds=4, fold=k)[1] for k in range(4)]
    assert sorted(torch.cat(vals).tolist()) == list(range(103))  # every image validates exactly once
    for k, val in enumerate(vals):
        assert 8 <= min(torch.bincount(labels[val], minlength=3).tolist())  # each class in each fold (34 or 35 / 4)
        train_idx, same = train_val_split(labels, 0.1, seed=7, folds=4, fold=k)
        assert torch.equal(same, val) and not set(train_idx.tolist()) & set(val.tolist())


@pytest.mark.parametrize("overrides, message", [
    (["data.folds=3", "data.fold=3"], "data.fold=3 needs data.folds above it"),
    (["data.fold=1"], "data.fold=1 needs data.folds above it"),
    (["data.folds=1"], "data.folds=1 would validate on the whole training split"),
])
def test_a_fold_outside_the_folds_is_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


def test_kfold_runs_every_fold_then_keeps_them_and_continues_an_unfinished_one(tmp_path):
    from tools import kfold

    args = ["--folds", "2", *TINY, "train.epochs=1"]
    code, out, err = call_script(kfold.main, *args, cwd=tmp_path)
    assert code == 0, err
    folder = tmp_path / "checkpoints" / "kfold" / "digits-cnn-2folds"
    rows = (folder / "folds.csv").read_text().splitlines()
    assert rows[0] == "fold,val accuracy,test accuracy,best epoch" and len(rows) == 3
    assert "val accuracy: " in out and " ± " in out and (folder / "folds.png").is_file()

    kept = snapshot(folder / "fold-0")
    (folder / "fold-1" / "MODEL_CARD.md").unlink()  # as if stopped after training, before its card
    code, out, err = call_script(kfold.main, *args, cwd=tmp_path)
    assert code == 0, err
    assert "fold-0: done before, kept" in out and "fold-1: continuing from epoch 1" in out
    assert snapshot(folder / "fold-0") == kept and (folder / "fold-1" / "MODEL_CARD.md").is_file()
    assert (folder / "folds.csv").read_text().splitlines() == rows  # the same numbers

    code, _, err = call_script(kfold.main, *args, "train.lr=0.05", cwd=tmp_path)
    assert code == 2 and "fold-0 was trained with other settings (train.lr: 0.004, now 0.05); give --name" in err
