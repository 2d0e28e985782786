"""What each feature needs, stated once (NEEDS), and the one check every entry point makes before any work.

A row names a feature (the key or option that turns it on), when it is on, what it needs, the fix, and the
entry points that use it. train.py checks its config when loading it and the rest once its data is known
(channels, image size, multi-label, optimizer steps), before the run folder exists; test.py (also --predict),
tools/export.py and tools/demo.py check a checkpoint's config and data and their options before they evaluate,
calibrate, export or serve. An unsupported combination is one `error:` line naming the keys and the fix.
Combinations that can be supported are, rather than refused: test-time augmentation of a multi-label model
averages its sigmoids (engine/tta.py), and EMA warms its decay up (engine/ema.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from engine.datasets import SOURCES
from engine.errors import UserError
from engine.tta import SMALLEST
from model import ShapeError, build_model

if TYPE_CHECKING:
    from engine.config import Config
    from engine.datasource import DataInfo

TRAIN, TEST, PREDICT, EXPORT, DEMO = "train.py", "test.py", "test.py --predict", "tools/export.py", "tools/demo.py"
ENTRIES = (TRAIN, TEST, PREDICT, EXPORT, DEMO)


@dataclass(frozen=True)
class Use:
    """What an entry point is about to run: the run's config, its data's shape, the options given."""
    entry: str  # one of ENTRIES
    cfg: Config
    channels: int
    image_size: int
    multilabel: bool
    steps: int | None = None  # the run's optimizer steps (train.py once its data is loaded); None: nothing trains
    tta: str = "none"  # the views evaluation averages over: train.tta, or test.py / export.py --tta
    options: frozenset[str] = frozenset()  # the options given that turn a feature on (--calibrate, --int8, ...)


# What a feature needs: whether it holds, how the message says it, and (for the tests) a use that breaks it.
@dataclass(frozen=True)
class SingleLabel:
    def holds(self, use: Use) -> bool:
        return not use.multilabel

    def says(self, use: Use) -> str:
        return "single-label data (one class per image), and this model is multi-label (data.multilabel=true)"

    def broken(self, use: Use) -> Use:
        return replace(use, multilabel=True)


@dataclass(frozen=True)
class MinImage:
    side: Callable[[Use], int]  # the smallest image side it works on
    why: str

    def holds(self, use: Use) -> bool:
        return use.image_size >= self.side(use)

    def says(self, use: Use) -> str:
        side = self.side(use)
        return (f"images of at least {side}x{side} pixels ({self.why}), and these are {use.image_size}x"
                f"{use.image_size} (data.image_size)")

    def broken(self, use: Use) -> Use | None:
        side = self.side(use)
        return replace(use, image_size=side - 1) if side > 1 else None


@dataclass(frozen=True)
class MinSteps:
    steps: Callable[[Use], int]  # the fewest optimizer steps it works with
    why: str

    def holds(self, use: Use) -> bool:
        return use.steps is None or use.steps >= self.steps(use)

    def says(self, use: Use) -> str:
        epochs = use.cfg.train.epochs
        return (f"at least {self.steps(use)} optimizer steps ({self.why}), and this run has {use.steps} "
                f"(train.epochs={epochs} x {use.steps // max(epochs, 1)} per epoch)")

    def broken(self, use: Use) -> Use:
        return replace(use, steps=self.steps(use) - 1)


@dataclass(frozen=True)
class Setting:
    key: str  # a config key, section.name
    allowed: Callable[[Any], bool]
    wants: str  # what the message says it needs
    example: Any  # a value that is not allowed, for the tests

    def holds(self, use: Use) -> bool:
        return self.allowed(value_of(use.cfg, self.key))

    def says(self, use: Use) -> str:
        return f"{self.wants}, and {self.key} is {as_text(value_of(use.cfg, self.key))}"

    def broken(self, use: Use) -> Use:
        return replace(use, cfg=with_value(use.cfg, self.key, self.example))


@dataclass(frozen=True)
class Need:
    feature: str  # the key or option that turns the feature on
    is_on: Callable[[Use], bool]
    needs: SingleLabel | MinImage | MinSteps | Setting
    fix: str
    entries: tuple[str, ...] = ENTRIES
    turn_on: Callable[[Use], Use] = field(default=lambda use: use, compare=False)  # for the tests

    def refusal(self, use: Use) -> str | None:
        """The one line that refuses this use, or None when the feature is off or its need holds."""
        if use.entry not in self.entries or not self.is_on(use) or self.needs.holds(use):
            return None
        return f"{shown_feature(self.feature, use)} needs {self.needs.says(use)}; {self.fix}"


def value_of(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def as_text(value: Any) -> str:
    """A value as config.yaml writes it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def with_value(cfg: Config, key: str, value: Any) -> Config:
    section, _, name = key.partition(".")
    return replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})


def shown_feature(feature: str, use: Use) -> str:
    """A config key with its value (train.ema_decay=0.99), an option as it is (--calibrate)."""
    if feature == "tta":
        return f"test-time augmentation {use.tta} ({'train.tta' if use.entry == TRAIN else 'train.tta or --tta'})"
    return feature if feature.startswith("--") else f"{feature}={as_text(value_of(use.cfg, feature))}"


def with_option(option: str) -> Callable[[Use], Use]:
    return lambda use: replace(use, options=use.options | {option})


def first_kernel(use: Use) -> int:
    """The larger side of the model's first conv's kernel: model.whiten cuts the training images into patches of it."""
    for size in (use.image_size, 256):  # the kernel does not depend on the size; a size too small for the layers
        try:                             # is refused by the model itself, naming the layer
            with torch.device("meta"):  # shapes only
                model = build_model(use.cfg.model, use.channels, 2, size)
            break
        except NotImplementedError:  # a few torchvision models read values while initialising
            model = build_model(use.cfg.model, use.channels, 2, size)
            break
        except ShapeError:
            continue
    else:
        return 1
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return max(conv.kernel_size) if conv is not None else 1


def setting(*pairs: tuple[str, Any]) -> Callable[[Use], Use]:
    """turn_on for config keys: the use with these keys set."""
    def turn_on(use: Use) -> Use:
        cfg = use.cfg
        for key, value in pairs:
            cfg = with_value(cfg, key, value)
        return replace(use, cfg=cfg)
    return turn_on


LABEL_SETS = " | ".join(name for name, source in SOURCES.items() if "multilabel" in source.reads)  # csv | hf

NEEDS = (
    Need("tta", lambda use: SMALLEST[use.tta] > 1,
         MinImage(lambda use: SMALLEST[use.tta], "each view is shifted by one pixel, the border reflected"),
         "use train.tta=flip (or --tta flip), or larger images", turn_on=lambda use: replace(use, tta="flip_shift")),
    Need("model.whiten", lambda use: use.cfg.model.whiten != "none" and use.cfg.model.pretrained == "none",
         MinImage(first_kernel, "the training images are cut into patches of the first conv's kernel"),
         "set model.whiten=none, a smaller first kernel, or larger images (data.image_size)", (TRAIN,),
         turn_on=setting(("model.whiten", "init"))),
    Need("train.ema_decay", lambda use: use.cfg.train.ema_decay > 0,
         MinSteps(lambda use: use.cfg.train.ema_every, "the average is updated every train.ema_every steps; "
                  "without an update it holds the random initial weights"),
         "lower train.ema_every, raise train.epochs, or set train.ema_decay=0", (TRAIN,),
         turn_on=setting(("train.ema_decay", 0.99))),
    Need("--calibrate", lambda use: "--calibrate" in use.options, SingleLabel(),
         "a temperature calibrates a softmax over exclusive classes; a multi-label model's thresholds, chosen on the "
         "validation split, are its calibration: leave --calibrate out", (TEST, PREDICT),
         turn_on=with_option("--calibrate")),
    Need("--min-confidence", lambda use: "--min-confidence" in use.options, SingleLabel(),
         "each label has its own threshold (chosen on the validation split, stored with the model): leave "
         "--min-confidence out", (TEST, PREDICT, DEMO), turn_on=with_option("--min-confidence")),
    Need("--int8", lambda use: "--int8" in use.options, SingleLabel(),
         "the int8 file is checked by its top-1 test accuracy, which a multi-label model does not have: export it "
         "without --int8 (model.onnx is float32)", (EXPORT,), turn_on=with_option("--int8")),
    Need("train.nesterov", lambda use: use.cfg.train.nesterov,
         Setting("train.optimizer", lambda value: value == "sgd", "train.optimizer=sgd", "adamw"),
         "set train.optimizer=sgd or train.nesterov=false",
         turn_on=setting(("train.optimizer", "sgd"), ("train.nesterov", True))),
    Need("train.nesterov", lambda use: use.cfg.train.nesterov and use.cfg.train.optimizer == "sgd",
         Setting("train.momentum", lambda value: value == "auto" or value > 0, "train.momentum above 0", 0.0),
         "set train.momentum above 0 (or auto) or train.nesterov=false",
         turn_on=setting(("train.optimizer", "sgd"), ("train.nesterov", True))),
    Need("data.multilabel", lambda use: use.cfg.data.multilabel,
         Setting("data.name", lambda value: "multilabel" in SOURCES[value].reads,
                 f"a data source that reads label sets ({LABEL_SETS}: csv's labels in one cell separated by "
                 "data.label_separator, hf's a column of lists)", "digits"),
         "set data.name=csv (or hf), or data.multilabel=false",
         turn_on=setting(("data.name", "csv"), ("data.multilabel", True))),
    Need("data.multilabel", lambda use: use.cfg.data.multilabel,
         Setting("data.sampler", lambda value: value == "shuffle",
                 "data.sampler=shuffle (balanced draws by class, and a label set has no one class)", "balanced"),
         "set data.sampler=shuffle", turn_on=setting(("data.name", "csv"), ("data.multilabel", True))),
    Need("data.multilabel", lambda use: use.cfg.data.multilabel,
         Setting("data.test_fraction", lambda value: value == 0,
                 "a test split of its own, data.test_fraction=0 (a split of label sets cannot be stratified)", 0.2),
         "give a split column or data.test_labels, and data.test_fraction=0",
         turn_on=setting(("data.name", "csv"), ("data.multilabel", True))),
)


def check(use: Use) -> None:
    """Refuse the first need of NEEDS this use breaks, in one line."""
    for need in NEEDS:
        line = need.refusal(use)
        if line is not None:
            raise UserError(line)


def check_config(cfg: Config) -> None:
    """The needs a config alone decides (Setting rows), for every entry point, when the config is loaded."""
    use = Use(TRAIN, cfg, channels=cfg.data.channels, image_size=0, multilabel=cfg.data.multilabel)
    for need in NEEDS:
        if isinstance(need.needs, Setting):
            line = need.refusal(use)
            if line is not None:
                raise UserError(line)


def for_training(cfg: Config, info: DataInfo, steps: int) -> Use:
    """train.py's use: its config, the data it loaded and its optimizer steps over all epochs."""
    return Use(TRAIN, cfg, info.in_channels, info.image_size, info.multilabel, steps, cfg.train.tta)


def for_checkpoint(entry: str, ckpt: dict, tta: str | None = None, options: tuple[str, ...] = ()) -> Use:
    """A checkpoint reader's use: the checkpoint's config and data, the views it evaluates over (tta, default the
    run's train.tta) and the feature options given."""
    from engine.checkpoint import config_of, data_of

    cfg, info = config_of(ckpt), data_of(ckpt)
    return Use(entry, cfg, info.in_channels, info.image_size, info.multilabel, None, tta or cfg.train.tta,
               frozenset(options))


def option_names(**given: object) -> tuple[str, ...]:
    """The options that are set, as --names: option_names(calibrate=True, int8=False) -> ('--calibrate',)."""
    return tuple(f"--{name.replace('_', '-')}" for name, value in given.items() if value not in (None, False))

