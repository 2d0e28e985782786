"""Typed configuration: config.yaml -> dataclasses, dotted command-line overrides, validation.

Hand-written rather than OmegaConf: the dataclass walk below is short, gives one-line
messages with a did-you-mean hint, checks Literal choices and ranges, and reads YAML's
`1e-3` (a string to PyYAML) as a float.
"""
import copy
import dataclasses
import difflib
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from engine.datasets import SOURCES, check_source, source_of
from engine.columns import METRICS, metrics_for
from engine.errors import UserError, shown
from engine.escape import markdown_cell, printable
from engine.hooks import HOOKS
from engine.losses import LOSSES
from engine.needs import check_config
from engine.optim import OPTIMIZERS, SCHEDULERS
from engine.yamlfile import dump_yaml, flatten, parse_yaml, read_yaml, text_of
from model import MODELS, ModelConfig, model_class, settings_of

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


def at_least(low: float) -> dict:
    return {"min": low}


def between(low: float, high: float) -> dict:
    return {"min": low, "max": high}


POSITIVE = {"gt": 0}


def one_of(registry: dict) -> dict:
    """A name that must be a key of registry (a dict of MODELS' kind), checked against it as it is when loading."""
    return {"choices": registry}


@dataclass
class DataConfig:
    name: str = field(metadata=one_of(SOURCES))
    root: str
    image_size: Literal["auto"] | int = field(metadata=at_least(1))
    channels: Literal[1, 3]
    val_fraction: float = field(metadata=between(0.01, 0.9))
    folds: int = field(metadata=between(0, 100))
    fold: int = field(metadata=at_least(0))
    augment: Literal["none", "crop", "flip_crop", "trivialaugment", "randaugment"]
    crop_padding: int = field(metadata=at_least(0))
    flip: Literal["random", "alternate"]
    random_erasing: float = field(metadata=between(0.0, 1.0))
    sampler: Literal["shuffle", "balanced"]
    max_memory_mb: int = field(metadata=at_least(0))
    max_pixels: int = field(metadata=at_least(1))
    num_workers: Literal["auto"] | int = field(metadata=at_least(0))
    shuffle_buffer: int = field(metadata=at_least(1))
    cache_dir: str
    labels: str
    test_labels: str
    image_column: str
    label_column: str
    test_fraction: float = field(metadata=between(0.0, 0.9))
    multilabel: bool
    label_separator: str


@dataclass
class TrainConfig:
    epochs: int = field(metadata=at_least(1))
    batch_size: int = field(metadata=at_least(1))
    eval_batch_size: Literal["auto"] | int = field(metadata=at_least(1))
    accumulate: int = field(metadata=at_least(1))
    optimizer: str = field(metadata=one_of(OPTIMIZERS))
    lr: float = field(metadata=POSITIVE)
    momentum: Literal["auto"] | float = field(metadata=between(0.0, 0.999))
    nesterov: bool
    weight_decay: float = field(metadata=at_least(0.0))
    scheduler: str = field(metadata=one_of(SCHEDULERS))
    step_epochs: int = field(metadata=at_least(1))
    step_gamma: float = field(metadata=between(0.0, 1.0))
    loss: str = field(metadata=one_of(LOSSES))
    label_smoothing: float = field(metadata=between(0.0, 0.99))
    mixup_alpha: float = field(metadata=at_least(0.0))
    cutmix_alpha: float = field(metadata=at_least(0.0))
    class_weights: Literal["none", "balanced"] | list[float] = field(metadata=at_least(0.0))
    freeze_epochs: int = field(metadata=at_least(0))
    backbone_lr: float = field(metadata=at_least(0.0))
    best_metric: str = field(metadata=one_of(METRICS))
    patience: int = field(metadata=at_least(0))
    grad_clip: float = field(metadata=at_least(0.0))
    log_interval: int = field(metadata=at_least(1))
    ema_decay: float = field(metadata=between(0.0, 0.9999))
    ema_every: int = field(metadata=at_least(1))
    tta: Literal["none", "flip", "flip_shift"]
    val_every: int = field(metadata=at_least(0))


SEED_MAX = 2 ** 63 - 1  # torch seeds are 64-bit; each torchrun process adds its rank


@dataclass
class RunConfig:
    seed: int = field(metadata=between(0, SEED_MAX))
    device: str
    output_dir: str
    name: str
    threads: Literal["auto"] | int = field(metadata=between(0, 4096))
    channels_last: bool
    amp: Literal["auto", "none", "bf16", "fp16"]
    compile: bool
    cudnn_benchmark: bool
    deterministic: bool
    requeue: bool


@dataclass
class LogConfig:
    hooks: list[str] = field(metadata=one_of(HOOKS))
    mlflow_uri: str
    mlflow_checkpoint: bool


@dataclass
class Config:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    run: RunConfig
    log: LogConfig


def fail_unknown(key: str, known: list[str], path: str) -> None:
    guess = difflib.get_close_matches(key, known, n=1)
    listed = ", ".join(known)
    if len(listed) > 150:  # the line stays short: the first keys, and where to find them all
        listed = f"{listed[:listed.rindex(', ', 0, 150)]}, ... ({len(known)} in all: --help lists them)"
    hint = f"did you mean '{guess[0]}'?" if guess else f"known keys: {listed}"
    raise UserError(f"unknown config key {shown(path + key)}; {hint}")


def convert(tp: Any, value: Any, path: str, meta: dict) -> Any:
    """Check one value against its type hint and range; return it converted."""
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path + ".")
    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise UserError(f"{path}: expected a list, got {shown(value)}")
        if len(value) < meta.get("min_items", 0):
            raise UserError(f"{path}: needs at least {meta['min_items']} item(s), got {shown(value)}")
        return [convert(get_args(tp)[0], v, f"{path}[{i}]", meta) for i, v in enumerate(value)]
    if get_origin(tp) in (Union, UnionType):  # e.g. Literal["auto"] | int: the first alternative that fits
        for option in get_args(tp):
            try:
                return convert(option, value, path, meta)
            except UserError:
                pass
        allowed = [" | ".join(map(str, get_args(o))) if get_origin(o) is Literal else o.__name__ for o in get_args(tp)]
        low = f" >= {meta['min']}" if "min" in meta else ""
        raise UserError(f"{path}: expected {' or '.join(allowed)}{low}, got {shown(value)}")
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            choices = " | ".join(str(c) for c in get_args(tp))
            raise UserError(f"{path}: {shown(value)} is not allowed; use one of {choices}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{path}: expected true or false, got {shown(value)}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"{path}: expected a string, got {shown(value)}")
        if "choices" in meta and str(value) not in meta["choices"]:
            raise UserError(f"{path}: {shown(value)} is not allowed; use one of {' | '.join(meta['choices'])}")
        return str(value)
    return check_range(number(tp, value, path), path, meta)


def number(tp: type, value: Any, path: str) -> float:
    """An int or float; accepts strings such as '1e-3', which PyYAML does not read as floats."""
    kind = "an integer" if tp is int else "a number"
    if isinstance(value, bool):
        raise UserError(f"{path}: expected {kind}, got {shown(value)}")
    try:
        converted = tp(float(value)) if tp is float else int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise UserError(f"{path}: expected {kind}, got {shown(value)}") from None
    if tp is int and isinstance(value, float) and value != converted:
        raise UserError(f"{path}: expected an integer, got {shown(value)}")
    if converted != converted or converted in (float("inf"), float("-inf")):
        raise UserError(f"{path}: expected a finite number, got {shown(value)}")
    return converted


INT_MAX = 2 ** 31 - 1  # the upper bound of every integer key without its own: sizes and counts PyTorch can index


def check_range(value: float, path: str, meta: dict) -> float:
    if "gt" in meta and not value > meta["gt"]:
        raise UserError(f"{path}: must be greater than {meta['gt']}, got {shown(value)}")
    if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
        limit = f"between {meta['min']} and {meta['max']}" if "max" in meta else f"at least {meta['min']}"
        raise UserError(f"{path}: must be {limit}, got {shown(value)}")
    if isinstance(value, int) and "max" not in meta and value > INT_MAX:
        raise UserError(f"{path}: must be at most {INT_MAX:,}, got {shown(value)}")
    return value


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Turn a dict into the dataclass cls, naming any unknown, missing or ill-typed key."""
    if not isinstance(raw, dict):
        raise UserError(f"{path.rstrip('.') or 'config'}: expected a mapping of keys, got {shown(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            fail_unknown(str(key), list(fields), path)
    missing = [name for name in fields if name not in raw]
    if missing:
        if "[" in path:  # an item of a list the user gave, such as a conv block
            raise UserError(f"missing config key '{path}{missing[0]}'; give every key, as config.yaml's items do")
        raise UserError(f"missing config key '{path}{missing[0]}': {cls.__name__} declares it but config.yaml lacks "
                        "it; add its line, with a comment saying what it does, to config.yaml")
    hints = get_type_hints(cls)
    return cls(**{name: convert(hints[name], raw[name], path + name, f.metadata) for name, f in fields.items()})


def config_from_dict(raw: Any) -> Config:
    """Validate a plain dict (from YAML or a checkpoint) into a Config."""
    data = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(data, dict) and isinstance(data.get("augment"), bool):  # saved when augment was true/false
        raw = {**raw, "data": {**data, "augment": "flip_crop" if data["augment"] else "none"}}
    log = raw.get("log") if isinstance(raw, dict) else None
    if isinstance(log, dict) and isinstance(log.get("tensorboard"), bool):  # saved before log.hooks
        hooks = [*log.get("hooks", []), *(["tensorboard"] if log["tensorboard"] else [])]
        raw = {**raw, "log": {**{k: v for k, v in log.items() if k != "tensorboard"}, "hooks": hooks}}
    cfg = build(Config, with_unread_model_keys(raw))
    check_model_name(cfg.model.name)  # also when YAML read it as a number (model.name=0)
    if cfg.model.pretrained == "imagenet" and cfg.model.name in MODELS:
        raise UserError(f"model.pretrained: {cfg.model.name} has no ImageNet weights; use a torchvision model "
                        "such as resnet18, a PATH of your own weights, or none")
    if isinstance(cfg.train.class_weights, list) and not any(w > 0 for w in cfg.train.class_weights):
        raise UserError(f"train.class_weights: {shown(cfg.train.class_weights)} gives every class weight 0, so no "
                        "image counts in the loss; give the classes that should count a weight above 0, or balanced")
    check_config(cfg)  # what each feature needs of the other settings (engine/needs.py NEEDS)
    check_source(cfg.data.name)
    if cfg.data.fold >= max(cfg.data.folds, 1):
        raise UserError(f"data.fold={cfg.data.fold} needs data.folds above it (the folds are 0 .. folds-1); "
                        f"data.folds is {cfg.data.folds}")
    if cfg.data.folds == 1:
        raise UserError("data.folds=1 would validate on the whole training split; use 0 (data.val_fraction) or 2 "
                        "and more")
    if len(set(cfg.log.hooks)) < len(cfg.log.hooks):
        raise UserError(f"log.hooks: {shown(cfg.log.hooks)} names a hook twice; name each once")
    usable = [name for name, metric in metrics_for(cfg.data.multilabel).items() if metric.is_best]
    if cfg.train.best_metric not in usable:
        metric = METRICS[cfg.train.best_metric]
        why = (f"is for {'multi-label' if metric.multilabel else 'single-label'} data" if metric.is_best
               else "is lower for better models")
        raise UserError(f"train.best_metric={cfg.train.best_metric} {why}; use one of {' | '.join(usable)}")
    check_device_name(cfg.run.device, "run.device")
    check_plain_name(cfg.run.name, "run.name")
    return cfg


NAME_MAX = 100  # characters of a name that becomes a folder: room for suffixes within the 255-byte limit


def check_plain_name(name: str, key: str) -> None:
    """A name that becomes a file or folder: no separators, not . or .., printable, bounded length."""
    bad = [c for c in name if c in '/\\' or not c.isprintable()]
    if bad or name in (".", "..") or len(name.encode()) > NAME_MAX:
        problem = (f"contains {bad[0]!r}" if bad else "is too long" if len(name.encode()) > NAME_MAX
                   else "is not a folder name")
        raise UserError(f"{key}: {name[:40]!r}{'...' if len(name) > 40 else ''} {problem}; use a plain folder name "
                        f"of at most {NAME_MAX} characters without / or \\ (it becomes a folder under run.output_dir)")


def with_unread_model_keys(raw: Any) -> Any:
    """raw with the model.* keys that the chosen model does not read taken from config.yaml, so that a config
    names only the settings of its own architecture (see settings_of in model.py) and saves what it ran."""
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return raw
    check_model_name(model["name"])
    unread = {key: value for key, value in read_config(DEFAULT_CONFIG)["model"].items()
              if key not in settings_of(model["name"])}
    return {**raw, "model": {**model, **unread}}  # a value set for an unread key has no effect (load_config notes it)


def check_model_name(name: str) -> None:
    """model.name must name a model of MODELS or of torchvision."""
    if model_class(name) is None:
        raise UserError(f"model.name: {shown(name)} is not a registered model; use one of "
                        f"{' | '.join(MODELS)}, a torchvision model name (resnet18, efficientnet_b0, ...; "
                        "torchvision.models.list_models()) or add yours to MODELS in model.py")


def check_device_name(name: str, key: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise UserError(f"{key}: {shown(name)} is not allowed; use auto | cpu | cuda | cuda:N | mps")


@functools.lru_cache(maxsize=4096)
def is_text_key(cls: type, key: str) -> bool:
    """Whether the dotted key (list items by index: log.hooks.0) of the dataclass cls is typed str."""
    tp: Any = cls
    for part in key.split("."):
        if get_origin(tp) is list and part.isdigit():
            tp = get_args(tp)[0]
        elif dataclasses.is_dataclass(tp) and part in (hints := get_type_hints(tp)):
            tp = hints[part]
        else:
            return False
    return tp is str


STR_TAG, NULL_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:null"


def as_written(raw: Any, written: dict[str, yaml.ScalarNode], cls: type, where: str) -> Any:
    """raw (read from YAML) with each text key of cls holding its text as written, not what YAML made of it:
    `no`, `1.0e3`, `0x10`, `2024-01-01` stay that text; a bare | or > (a block scalar, so an empty text), an
    anchor (&x) with no value and null or ~ are refused, naming the key, the value and the quoting to use."""
    for key, node in written.items():
        if not is_text_key(cls, key):
            continue
        text = printable(text_of(node)[:40])
        if node.style in ("|", ">") and not node.value.strip():
            raise UserError(f"{where}: {key}: {text} begins a YAML block scalar, which is empty here; "
                            f"write {key}: \"{text}\"")
        if getattr(node, "anchor", None) and not node.value:
            raise UserError(f"{where}: {key}: {text} marks a YAML anchor and leaves the value empty; "
                            f"write {key}: \"{text}\"")
        if node.tag == NULL_TAG and node.value:
            raise UserError(f"{where}: {key}: YAML reads {node.value} as no value; write {key}: \"\" for none, "
                            f"or {key}: \"{node.value}\" for the text")
        if node.style is None and node.tag != STR_TAG:  # a number, boolean, date or empty (null): as written
            *parents, last = key.split(".")
            parent = raw
            try:
                for part in parents:
                    parent = parent[int(part) if isinstance(parent, list) else part]
                parent[int(last) if isinstance(parent, list) else last] = node.value
            except (KeyError, IndexError, TypeError, ValueError):  # a mapping where a list goes: build() names it
                pass
    return raw


def read_config(path: str | Path, cls: type | None = None) -> Any:
    """A config file (config.yaml, a --config recipe, a run's config.yaml; cls for another kind, such as a sweep
    file) as plain data, its text keys as written (as_written)."""
    written: dict[str, yaml.ScalarNode] = {}
    raw = read_yaml(path, written)
    return as_written(raw, written, cls or Config, f"config file {path}")


def apply_override(raw: dict, text: str) -> None:
    """Set one dotted key in the raw config: 'train.lr=0.01', 'model.conv_blocks.0.out_channels=8'. The value is
    YAML, except that a text key takes it as written unless it is quoted ('data.label_separator=|' is a |)."""
    key, sep, value_text = text.partition("=")
    if not sep or not key:
        raise UserError(f"override {shown(text)} is not of the form key=value, e.g. train.lr=0.01")
    if is_text_key(Config, key) and not value_text.startswith(("'", '"')):
        value = value_text
    else:
        value = parse_yaml(value_text, f"override {shown(text)}: the value") if value_text else ""
    *parents, last = key.split(".")
    node: Any = raw
    for part in parents:
        node = child(node, part, key)
    if isinstance(node, list):
        node[index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"override {shown(text)}: '{key}' goes below a value that has no keys")


def child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        return node[index(node, part, key)]
    if isinstance(node, dict):
        if part not in node:
            fail_unknown(part, list(node), key[: key.index(part)])
        return node[part]
    raise UserError(f"override '{key}': '{part}' goes below a value that has no keys")


def index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"override '{key}': '{part}' is not an index of a list of length {len(node)}")
    return int(part)


def with_defaults(raw: dict, defaults: dict | None = None) -> dict:
    """raw with any key it lacks taken from config.yaml (for configs saved before a key was added)."""
    merged = copy.deepcopy(read_config(DEFAULT_CONFIG) if defaults is None else defaults)
    for key, value in raw.items():
        is_section = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = with_defaults(value, merged[key]) if is_section else copy.deepcopy(value)
    return merged


def load_config(path: str | Path | None, overrides: list[str]) -> Config:
    """config.yaml, merged with the file at path if given (a recipe holding only the keys it changes,
    or a run's complete config.yaml), plus dotted overrides, validated."""
    raw = read_config(DEFAULT_CONFIG)
    if path is not None:
        file_raw = read_config(path)
        if not isinstance(file_raw, dict):
            raise UserError(f"config file {path} must map sections (data:, model:, ...) to keys, got {shown(file_raw)}")
        raw = with_defaults(file_raw, raw)
    for text in overrides:
        if not isinstance(raw, dict):
            break
        apply_override(raw, text)
    cfg = config_from_dict(raw)
    if cfg.data.multilabel and not cfg.data.label_separator:  # runs saved with one split at spaces; new ones say
        raise UserError('data.label_separator is empty, so the labels of a cell would be split at spaces; write '
                        'data.label_separator: " " for that, or the character between the labels (e.g. "|")')
    for note in without_effect(cfg, set_keys(file_raw if path is not None else {}, overrides)):
        print(f"note: {note}")
    return cfg


def set_keys(file_raw: dict, overrides: list[str]) -> list[str]:
    """The keys the user set: overrides, and the keys of a --config file whose value differs from config.yaml's."""
    defaults = flatten(read_config(DEFAULT_CONFIG))
    keys = [key for key, value in flatten(file_raw).items() if key in defaults and value != defaults[key]]
    keys += [".".join(text.partition("=")[0].split(".")[:2]) for text in overrides]  # model.conv_blocks.0.x
    return list(dict.fromkeys(keys))


PARTS = {"data.name": SOURCES, "train.loss": LOSSES, "train.optimizer": OPTIMIZERS, "train.scheduler": SCHEDULERS}


def without_effect(cfg: Config, keys: list[str]) -> list[str]:
    """A note for each key the user set that the chosen model, data source, loss, optimizer or schedule does
    not read (from what each declares: a model's SETTINGS, an entry's reads)."""
    model, data, train = cfg.model.name, cfg.data, cfg.train
    reads = settings_of(model)
    unread = {
        **{f"model.{key}": f"model.name={model} does not read it (it reads model.{', model.'.join(reads)})"
           for key in (f.name for f in dataclasses.fields(ModelConfig)) if key not in reads},
        **unread_by_parts(cfg),
        "data.crop_padding": "data.augment=none crops nothing" if data.augment == "none" else "",
        "data.val_fraction": (f"data.folds={data.folds} validates on fold data.fold instead" if data.folds else
                              f"data.name={data.name} reads the validation split its files hold"
                              if source_of(data).holds_val else ""),
        "train.backbone_lr": "model.pretrained=none: every layer is new" if cfg.model.pretrained == "none" else "",
        "train.loss": "data.multilabel=true trains with binary cross-entropy per label" if data.multilabel else "",
    }
    notes = [f"{key} has no effect: {unread[key]}" for key in keys if unread.get(key)]
    if train.tta != "none" and not source_of(data).mirrors:  # a recipe's choice, but rarely a good one here
        notes.append(f"train.tta={train.tta} mirrors the images, and a mirrored digit is another glyph or none: "
                     "expect a lower accuracy with it (the last line shows both); train.tta=none is the usual choice")
    return notes


def unread_by_parts(cfg: Config) -> dict[str, str]:
    """key -> why it has no effect, for each key that some entry of a registry in PARTS reads and no chosen one does."""
    def chosen(choice: str) -> str:
        section, _, key = choice.partition(".")
        return getattr(getattr(cfg, section), key)
    read = {f"{choice.partition('.')[0]}.{key}" for choice, registry in PARTS.items()
            for key in registry[chosen(choice)].reads}
    unread = {}
    for choice, registry in PARTS.items():
        readers: dict[str, list[str]] = {}
        for name, entry in registry.items():
            for key in entry.reads:
                readers.setdefault(f"{choice.partition('.')[0]}.{key}", []).append(name)
        unread.update({key: f"{choice}={chosen(choice)} does not read it ({' | '.join(names)} "
                            f"{'does' if len(names) == 1 else 'do'})" for key, names in readers.items()
                       if key not in read and key not in unread})
    return unread


def to_dict(cfg: Config) -> dict:
    """The config as plain data, with only the model.* keys its model reads."""
    raw = dataclasses.asdict(cfg)
    raw["model"] = {key: value for key, value in raw["model"].items() if key in settings_of(cfg.model.name)}
    return raw


def changed_keys(cfg: Config) -> list[str]:
    """key=value for each setting that differs from config.yaml; run.name is left out (each run sets it)."""
    defaults = flatten(to_dict(config_from_dict(read_config(DEFAULT_CONFIG))))
    changed = {key: value for key, value in flatten(to_dict(cfg)).items()
               if value != defaults.get(key) and key != "run.name"}
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=1000).strip()}" if isinstance(value, list)
            else f"{key}={value}" for key, value in changed.items()]


def to_yaml(cfg: Config) -> str:
    return dump_yaml(to_dict(cfg))


def config_keys(path: Path = DEFAULT_CONFIG) -> list[tuple[str, str, list[str]]]:
    """Every key of config.yaml as (dotted key, default, comment lines), read from its text: the one place
    keys are documented. A comment aligned under the one above continues it; a conv block's line is its
    list's default."""
    keys, stack = [], []
    for line in path.read_text().splitlines():
        continued = re.match(r"^ {20,}#\s*(.*)$", line)
        if continued and keys:
            keys[-1][2].append(continued[1])
        match = re.match(r"^( *)([A-Za-z_]\w*):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if not match:
            continue
        indent, key, value, comment = len(match[1]) // 2, match[2], match[3], match[4] or ""
        stack[indent:] = [key]
        if value or comment:
            keys.append((".".join(stack), value, [comment] if comment else []))
    return keys


def key_help(path: Path = DEFAULT_CONFIG) -> str:
    """Every key of config.yaml with its default and comment, for --help."""
    lines = []
    for key, value, comment in config_keys(path):
        lines.append(f"  {key:<24} {value:<12} {comment[0] if comment else ''}")
        lines += [f"  {'':<24} {'':<12} {more}" for more in comment[1:]]
    return "config keys (default, meaning):\n" + "\n".join(lines)


def key_reference(path: Path = DEFAULT_CONFIG) -> str:
    """docs/config.md's table of every key, made from config.yaml (tools/config_reference.py writes it there)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, value, comment in config_keys(path):
        meaning = markdown_cell(" ".join(comment))
        rows.append(f"| `{key}` | `{markdown_cell(value)}` | {meaning} |" if value else f"| `{key}` | | {meaning} |")
    return "\n".join(rows)
