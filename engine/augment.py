"""Per-image augmentation of whole batches: crops and flips, TrivialAugment, RandAugment, random
erasing, MixUp and CutMix.

Every image gets its own draws, and every draw comes from the generator passed in, which lives on
the batch's device (no host round trips). torchvision.transforms.v2's TrivialAugmentWide,
RandAugment, RandomErasing, MixUp and CutMix draw one operation (or one box, one mixing weight)
per call and take their randomness from the global RNG, so a batch call would give every image the
same op; the ops below follow their definitions (op lists, magnitude ranges) per image instead.
"""
import functools
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

POLICIES = ("none", "crop", "flip_crop", "trivialaugment", "randaugment")
NUM_BINS = 31  # magnitude levels, as in torchvision
RANDAUGMENT_OPS, RANDAUGMENT_LEVEL = 2, 9  # torchvision's RandAugment defaults: 2 ops at magnitude 9 of 30
# op -> (largest magnitude in TrivialAugmentWide, in RandAugment, whether the sign is random).
# Translations are fractions of the image width (TrivialAugmentWide's 32 px on 32 px images, RandAugment's
# 150/331); shears are tan(angle); rotations degrees; blends 1 + magnitude; posterize the bits dropped.
OPS = {
    "identity": (0.0, 0.0, False),
    "shear_x": (0.99, 0.3, True),
    "shear_y": (0.99, 0.3, True),
    "translate_x": (1.0, 150 / 331, True),
    "translate_y": (1.0, 150 / 331, True),
    "rotate": (135.0, 30.0, True),
    "brightness": (0.99, 0.9, True),
    "color": (0.99, 0.9, True),
    "contrast": (0.99, 0.9, True),
    "sharpness": (0.99, 0.9, True),
    "posterize": (6.0, 4.0, False),
    "solarize": (255.0, 255.0, False),
    "autocontrast": (0.0, 0.0, False),
    "equalize": (0.0, 0.0, False),
}
OP_NAMES = list(OPS)
OP = {name: i for i, name in enumerate(OP_NAMES)}


@dataclass(frozen=True)
class Augmentation:
    """What a training loader does to each batch (data.augment, data.crop_padding, data.random_erasing,
    train.mixup_alpha, train.cutmix_alpha)."""
    policy: str = "none"
    crop_padding: int = 4
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    num_classes: int = 0  # of the targets MixUp and CutMix return
    flip: str = "random"  # data.flip: random | alternate (the loader passes which images to mirror)


def generator_for(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator on device seeded by (seed, epoch, rank): resumable per epoch, different per process."""
    digest = hashlib.sha256(f"augment {seed} {epoch} {rank}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@functools.lru_cache(maxsize=None)
def constant(values: tuple, device: torch.device) -> torch.Tensor:
    """A small constant tensor, copied to the device once rather than every batch (a CUDA sync)."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def uniform(n: int, generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """n floats uniform in [low, high) on the generator's device."""
    return torch.rand(n, generator=generator, device=generator.device) * (high - low) + low


def integers(n: int, high: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=generator.device)


def augment_images(images: torch.Tensor, aug: Augmentation, generator: torch.Generator,
                   flipped: torch.Tensor | None = None) -> torch.Tensor:
    """Crop, flip and the policy's ops, per image, on float images (B, C, H, W) on the 0..255 scale;
    flipped (B,) says which images to mirror with data.flip=alternate (else half of them at random)."""
    if aug.policy == "none":
        return images
    images = crop(images, aug.crop_padding, generator)
    if aug.policy != "crop":
        is_flipped = uniform(len(images), generator) < 0.5 if flipped is None else flipped
        images = torch.where(is_flipped.view(-1, 1, 1, 1), images.flip(3), images)
    if aug.policy == "trivialaugment":
        n = len(images)
        images = apply_ops(images, integers(n, len(OPS), generator), integers(n, NUM_BINS, generator) / (NUM_BINS - 1),
                           random_signs(n, generator), 0)
    elif aug.policy == "randaugment":
        level = torch.full((len(images),), RANDAUGMENT_LEVEL / (NUM_BINS - 1), device=images.device)
        for _ in range(RANDAUGMENT_OPS):
            images = apply_ops(images, integers(len(images), len(OPS), generator), level,
                               random_signs(len(images), generator), 1)
    return images


def augment_normalised(images: torch.Tensor, labels: torch.Tensor, aug: Augmentation,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random erasing, then MixUp/CutMix, on normalised images; returns images and targets: the labels
    (B,), or class probabilities (B, num_classes) when mixing."""
    if aug.random_erasing > 0:
        images = random_erasing(images, aug.random_erasing, generator)
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
        return mix(images, labels, aug, generator)
    return images, labels


def random_signs(n: int, generator: torch.Generator) -> torch.Tensor:
    return integers(n, 2, generator) * 2.0 - 1


def crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """A random crop of each image from a copy zero-padded by pad pixels: a shift of up to pad pixels."""
    n, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    dy, dx = integers(n, 2 * pad + 1, generator), integers(n, 2 * pad + 1, generator)
    rows = (dy.view(n, 1) + torch.arange(height, device=images.device)).view(n, 1, height, 1)
    cols = (dx.view(n, 1) + torch.arange(width, device=images.device)).view(n, 1, 1, width)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    return padded[batch, torch.arange(channels, device=images.device).view(1, -1, 1, 1), rows, cols]


def apply_ops(images: torch.Tensor, op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor,
              column: int) -> torch.Tensor:
    """Image i gets op[i] at level[i] (0..1 of the op's range in OPS[...][column]), negated if sign[i] < 0.

    Every op is computed for the whole batch and selected per image with torch.where: no host sync.
    """
    table = constant(tuple((v[column], float(v[2])) for v in OPS.values()), images.device)  # (num ops, 2)
    magnitude = table[op, 0] * level
    magnitude = torch.where(table[op, 1] > 0, magnitude * sign, magnitude)
    images = geometric(images, op, magnitude)
    images = blend(images, op, 1 + magnitude)
    shift = magnitude.round().clamp(0, 7).to(torch.uint8).view(-1, 1, 1, 1)  # posterize: bits dropped
    posterized = ((images.to(torch.uint8) >> shift) << shift).float()
    images = torch.where((op == OP["posterize"]).view(-1, 1, 1, 1), posterized, images)
    threshold = torch.where(op == OP["solarize"], 255 - magnitude, torch.full_like(magnitude, 256)).view(-1, 1, 1, 1)
    images = torch.where(images >= threshold, 255 - images, images)
    return select(images, op, {"autocontrast": autocontrast, "equalize": equalize})


def geometric(images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Shears, translations and rotations as one nearest-neighbour resampling, zero fill."""
    n = len(images)
    theta = torch.eye(2, 3, device=images.device).repeat(n, 1, 1)  # (B, 2, 3), identity for other ops
    is_op = {name: op == OP[name] for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")}
    zero = torch.zeros_like(magnitude)
    theta[:, 0, 1] = torch.where(is_op["shear_x"], magnitude, zero)
    theta[:, 1, 0] = torch.where(is_op["shear_y"], magnitude, zero)
    theta[:, 0, 2] = torch.where(is_op["translate_x"], 2 * magnitude, zero)  # normalised coordinates span 2
    theta[:, 1, 2] = torch.where(is_op["translate_y"], 2 * magnitude, zero)
    angle = torch.where(is_op["rotate"], magnitude.deg2rad(), zero)
    rotation = torch.stack([angle.cos(), -angle.sin(), angle.sin(), angle.cos()], 1).view(n, 2, 2)
    theta[:, :, :2] = rotation @ theta[:, :, :2]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def blend(images: torch.Tensor, op: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Brightness, color, contrast and sharpness: degenerate + factor * (image - degenerate), per image."""
    grey = greyscale(images)  # (B, 1, H, W)
    smooth = images.clone()
    kernel = constant(((1, 1, 1), (1, 5, 1), (1, 1, 1)), images.device) / 13  # PIL's SMOOTH filter
    channels = images.shape[1]
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(images, kernel.expand(channels, 1, 3, 3), groups=channels)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True).expand_as(grey)
    candidates = {"brightness": torch.zeros_like(grey), "color": grey, "contrast": mean, "sharpness": smooth}
    degenerate, factor_used = images, torch.ones_like(factor)
    for name, target in candidates.items():
        is_op = op == OP[name]
        degenerate = torch.where(is_op.view(-1, 1, 1, 1), target, degenerate)
        factor_used = torch.where(is_op, factor, factor_used)
    factor_used = factor_used.view(-1, 1, 1, 1)
    return (degenerate + factor_used * (images - degenerate)).clamp(0, 255)


def greyscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (B, 1, H, W), as torchvision computes it; grey images are returned as they are."""
    if images.shape[1] == 1:
        return images
    weights = constant((0.2989, 0.587, 0.114), images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def select(images: torch.Tensor, op: torch.Tensor, ops: dict) -> torch.Tensor:
    for name, fn in ops.items():
        images = torch.where((op == OP[name]).view(-1, 1, 1, 1), fn(images), images)
    return images


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Each channel of each image stretched to 0..255."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 255 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    return ((images - torch.where(high > low, low, torch.zeros_like(low))) * scale).clamp(0, 255)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel of each image, as PIL's ImageOps.equalize computes it."""
    n, channels, height, width = images.shape
    values = images.to(torch.uint8).long().view(n * channels, -1)  # (B*C, H*W)
    hist = torch.zeros(n * channels, 256, device=images.device).scatter_add_(1, values, torch.ones_like(values,
                                                                                                 dtype=torch.float))
    last = hist.gather(1, values.amax(1, keepdim=True))  # count of the brightest value present
    step = ((height * width - last) / 255).floor()  # (B*C, 1)
    before = hist.cumsum(1) - hist  # pixels darker than each value
    lut = ((step / 2).floor() + before).div(step.clamp_min(1)).floor().clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, values), values.float())
    return out.view(n, channels, height, width)


def random_erasing(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """With the probability, each image gets one rectangle set to 0 (the mean, on normalised images):
    area 2-33% of the image, aspect ratio 0.3-3.3 (log-uniform), as torchvision's RandomErasing."""
    n, _, height, width = images.shape
    area = uniform(n, generator, 0.02, 0.33) * height * width
    ratio = uniform(n, generator, math.log(0.3), math.log(3.3)).exp()
    box_h = (area * ratio).sqrt().round().clamp(1, height)
    box_w = (area / ratio).sqrt().round().clamp(1, width)
    top = (uniform(n, generator) * (height - box_h + 1)).floor()
    left = (uniform(n, generator) * (width - box_w + 1)).floor()
    is_erased = uniform(n, generator) < probability
    mask = box_mask(top, left, box_h, box_w, images) & is_erased.view(-1, 1, 1, 1)
    return images.masked_fill(mask, 0.0)


def box_mask(top: torch.Tensor, left: torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor,
             images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) True inside each image's box [top, top + box_h) x [left, left + box_w)."""
    rows = torch.arange(images.shape[2], device=images.device).view(1, -1, 1)
    cols = torch.arange(images.shape[3], device=images.device).view(1, 1, -1)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))
    return (inside_rows & inside_cols).unsqueeze(1)


def mix(images: torch.Tensor, labels: torch.Tensor, aug: Augmentation,
        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp and/or CutMix with the previous image in the batch (as torchvision pairs them), with a
    weight lam ~ Beta(alpha, alpha) per image; with both on, each image takes one of the two at random.
    Returns the images and targets (B, aug.num_classes) that sum to 1."""
    n = len(images)
    is_cutmix = torch.zeros(n, dtype=torch.bool, device=images.device)
    if aug.cutmix_alpha > 0:
        is_cutmix = uniform(n, generator) < 0.5 if aug.mixup_alpha > 0 else ~is_cutmix
    mix_lam = beta(aug.mixup_alpha or 1.0, n, generator)
    cut_lam = beta(aug.cutmix_alpha or 1.0, n, generator)
    mask, cut_lam = cutmix_boxes(cut_lam, images, generator)  # (B, 1, H, W), area actually kept
    partner = images.roll(1, dims=0)
    mixed = mix_lam.view(-1, 1, 1, 1) * images + (1 - mix_lam.view(-1, 1, 1, 1)) * partner
    images = torch.where(is_cutmix.view(-1, 1, 1, 1), torch.where(mask, partner, images), mixed)
    lam = torch.where(is_cutmix, cut_lam, mix_lam).view(-1, 1)
    one_hot = (labels.float() if labels.ndim == 2  # multi-label rows (B, K) mix as they are
               else torch.zeros(n, aug.num_classes, device=images.device).scatter_(1, labels.view(-1, 1), 1.0))
    return images, lam * one_hot + (1 - lam) * one_hot.roll(1, dims=0)


def cutmix_boxes(lam: torch.Tensor, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Per image a box of area (1 - lam) around a uniform centre, clipped to the image; returns its mask
    (B, 1, H, W) and the share of the image left outside it (the corrected lam)."""
    n, _, height, width = images.shape
    cut = (1 - lam).sqrt()
    centre_y, centre_x = uniform(n, generator, 0, height).floor(), uniform(n, generator, 0, width).floor()
    top = (centre_y - (cut * height / 2).round()).clamp(0, height)
    bottom = (centre_y + (cut * height / 2).round()).clamp(0, height)
    left = (centre_x - (cut * width / 2).round()).clamp(0, width)
    right = (centre_x + (cut * width / 2).round()).clamp(0, width)
    mask = box_mask(top, left, bottom - top, right - left, images)
    return mask, 1 - (bottom - top) * (right - left) / (height * width)


def beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws from Beta(alpha, alpha) as G1 / (G1 + G2), G ~ Gamma(alpha): torch.distributions
    cannot take a generator."""
    first, second = gamma(alpha, n, generator), gamma(alpha, n, generator)
    return first / (first + second).clamp_min(1e-12)


def gamma(alpha: float, n: int, generator: torch.Generator, tries: int = 16) -> torch.Tensor:
    """Gamma(alpha, 1) by Marsaglia and Tsang's method (2000), all tries drawn at once (each accepts
    with probability > 0.95, so 16 tries all fail with probability < 1e-20); alpha < 1 boosted by U^(1/alpha)."""
    shape = alpha + 1 if alpha < 1 else alpha
    d = shape - 1 / 3
    c = 1 / math.sqrt(9 * d)
    x = torch.randn(n, tries, generator=generator, device=generator.device)
    u = torch.rand(n, tries, generator=generator, device=generator.device)
    v = (1 + c * x).clamp_min(1e-12) ** 3
    accepted = (1 + c * x > 0) & (u.log() < 0.5 * x ** 2 + d - d * v + d * v.log())
    first = accepted.int().argmax(dim=1, keepdim=True)  # the first accepted try (0 if none: negligible)
    draws = d * v.gather(1, first).squeeze(1)
    if alpha < 1:
        draws = draws * uniform(n, generator).clamp_min(1e-12) ** (1 / alpha)
    return draws
