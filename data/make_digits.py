"""Build data/digits.pt, the embedded default data set, from scikit-learn's bundled copy.

Run once by a maintainer (needs scikit-learn, which is not a runtime dependency):
    pip install scikit-learn && python data/make_digits.py
"""
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def main() -> None:
    digits = load_digits()
    # Pixels are counts 0..16 of a 4x4 block; stretch them to 0..255 so every data set is uint8 0..255.
    images = torch.tensor(digits.images * 255.0 / 16.0).round().to(torch.uint8)  # (1797, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.int64)  # (1797,)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION,
        stratify=labels.numpy(), random_state=SPLIT_SEED)
    out = {
        "images": images,
        "labels": labels,
        "train_idx": torch.tensor(sorted(train_idx)),
        "test_idx": torch.tensor(sorted(test_idx)),
        "class_names": [str(d) for d in range(10)],
    }
    path = Path(__file__).with_name("digits.pt")
    torch.save(out, path)
    print(f"wrote {path}: {len(train_idx)} train + {len(test_idx)} test images, 8x8 grey")


if __name__ == "__main__":
    main()
