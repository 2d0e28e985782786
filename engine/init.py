"""Starting weights from the fast CIFAR-10 recipes, for any model (model.whiten, model.dirac).

    whiten  the first conv's filters become +-eigenvectors of the covariance of its input patches
            (kh x kw x C values each) over the training images, each divided by sqrt(eigenvalue + eps):
            its outputs are decorrelated, with variance ~1, from the first step (Page, 2018; airbench).
            With `frozen` the filters keep those values; the bias still learns.
    dirac   size-preserving convs (stride 1, same padding) start as the identity on their first
            in_channels outputs (torch.nn.init.dirac_), so a deep stack starts close to a shallow one.
"""
import torch
from torch import nn

from engine.errors import UserError
from engine.loaders import Loader
from model import ModelConfig

WHITEN_IMAGES = 5000  # training images, evenly spaced over the split, whose patches give the covariance
WHITEN_EPS = 5e-4  # added to each eigenvalue: directions with almost no variance are not blown up


def first_conv(model: nn.Module) -> nn.Conv2d:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs or convs[0].groups != 1:
        raise UserError("model.whiten: the model has no ungrouped nn.Conv2d to whiten; set model.whiten=none")
    return convs[0]


def patches(images: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Every kh x kw patch of normalised images (N, C, H, W), flattened: (N * positions, C * kh * kw)."""
    columns = nn.functional.unfold(images, kernel)  # (N, C * kh * kw, positions)
    return columns.transpose(1, 2).reshape(-1, columns.shape[1])


def whitening_filters(images: torch.Tensor, kernel: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues (D,), filters (D, C, kh, kw)), largest first: eigenvector / sqrt(eigenvalue + eps)."""
    flat = patches(images.double(), kernel)
    covariance = flat.T @ flat / len(flat)  # uncentred, as airbench: the images are normalised already
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors / (eigenvalues.clamp_min(0) + WHITEN_EPS).sqrt()).T
    return eigenvalues.float(), filters.reshape(len(filters), images.shape[1], *kernel).float()


def whiten(conv: nn.Conv2d, images: torch.Tensor) -> None:
    """Fill conv's filters with + and - the leading whitening filters (as many pairs as fit in out_channels; an odd
    last filter keeps its random init) and zero its bias."""
    _, filters = whitening_filters(images.to(conv.weight.device), conv.kernel_size)
    pairs = min(conv.out_channels // 2, len(filters))
    with torch.no_grad():
        conv.weight[:2 * pairs] = torch.cat([filters[:pairs], -filters[:pairs]])
        if conv.bias is not None:
            conv.bias.zero_()


def is_size_preserving(conv: nn.Conv2d) -> bool:
    odd = all(k % 2 == 1 for k in conv.kernel_size)  # an even kernel's identity would shift by half a pixel
    same = conv.padding == "same" or all(p == k // 2 for k, p in zip(conv.kernel_size, conv.padding))
    return (odd and same and conv.stride == (1, 1) and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.out_channels >= conv.in_channels)


def dirac(model: nn.Module) -> int:
    """Identity init of every size-preserving conv's first in_channels filters; returns how many convs."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and is_size_preserving(m)]
    with torch.no_grad():
        for conv in convs:
            nn.init.dirac_(conv.weight[:conv.in_channels])
    return len(convs)


def initialise(model: nn.Module, cfg: ModelConfig, train_loader: Loader, is_resumed: bool) -> None:
    """model.dirac and model.whiten on a fresh model (a resumed one has its weights already); model.whiten=frozen
    keeps the first conv's filters either way. Pretrained weights are left as they are, with a note."""
    if cfg.pretrained != "none":
        if cfg.dirac or cfg.whiten != "none":
            print("note: model.whiten and model.dirac have no effect with model.pretrained: the weights are trained")
        return
    if not is_resumed and cfg.dirac:
        dirac(model)
    if not is_resumed and cfg.whiten != "none":
        n = train_loader.num_images  # evenly spaced: folders are stored class by class
        spread = torch.linspace(0, n - 1, min(WHITEN_IMAGES, n)).round().long()
        images = train_loader.raw_images(spread).to(train_loader.device)
        whiten(first_conv(model), train_loader.normalise(images))
    if cfg.whiten == "frozen":
        first_conv(model).weight.requires_grad_(False)
