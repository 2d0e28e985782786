import pytest
import yaml

from engine.config import DEFAULT_CONFIG, config_from_dict, key_help, load_config, to_yaml
from engine.errors import UserError


def load(*overrides: str):
    return load_config(None, list(overrides))


def test_default_config_loads_with_typed_values():
    cfg = load()
    assert cfg.data.name == "digits"
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 4e-3  # YAML's 2e-3 is a string to PyYAML
    assert cfg.model.conv_blocks[0].out_channels > 0


def test_dotted_overrides_including_list_items():
    cfg = load("train.lr=0.01", "model.activation=tanh", "model.conv_blocks.1.kernel_size=5", "model.hidden=[32, 16]")
    assert cfg.train.lr == 0.01 and cfg.model.activation == "tanh"
    assert cfg.model.conv_blocks[1].kernel_size == 5 and cfg.model.hidden == [32, 16]


@pytest.mark.parametrize("override,message", [
    ("train.lrr=0.1", "unknown config key 'train.lrr'; did you mean 'lr'?"),
    ("trian.lr=0.1", "unknown config key 'trian'; did you mean 'train'?"),
    ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
    ("train.lr=-0.1", "train.lr: must be greater than 0, got -0.1"),
    ("train.epochs=0", "train.epochs: must be at least 1, got 0"),
    ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
    ("model.activation=swish", "model.activation: 'swish' is not allowed; use one of relu | leaky_relu | tanh | sigmoid | gelu"),
    ("model.name=no_such_net", "model.name: 'no_such_net' is not a registered model; use one of cnn | lenet5 | resnet"),
    ("data.augment=maybe", "data.augment: 'maybe' is not allowed; use one of none | crop | flip_crop | "
                           "trivialaugment | randaugment"),
    ("train.label_smoothing=1", "train.label_smoothing: must be between 0.0 and 0.99, got 1.0"),
    ("train.mixup_alpha=-1", "train.mixup_alpha: must be at least 0.0, got -1.0"),
    ("model.dropout=1.5", "model.dropout: must be between 0.0 and 1.0, got 1.5"),
    ("run.device=gpu", "run.device: 'gpu' is not allowed; use auto | cpu | cuda | cuda:N"),
    ("model.conv_blocks.7.stride=1", "'7' is not an index of a list of length 3"),
    ("train.lr", "override 'train.lr' is not of the form key=value"),
])
def test_bad_values_name_the_key_and_the_fix(override, message):
    with pytest.raises(UserError) as err:
        load(override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_key_is_named(tmp_path):
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    del raw["train"]["patience"]
    with pytest.raises(UserError, match="missing config key 'train.patience'"):
        config_from_dict(raw)


@pytest.mark.parametrize("text,message", [("", "is empty"), ("data: [unclosed", "is not valid YAML at line 1")])
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(path, [])


def test_resolved_config_round_trips_through_yaml():
    cfg = load("train.lr=3e-4")
    assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg


def test_every_key_has_a_comment_in_help():
    text = key_help()
    for section in ("data", "model", "train", "run"):
        for key in yaml.safe_load(DEFAULT_CONFIG.read_text())[section]:
            line = next(line for line in text.splitlines() if line.strip().startswith(f"{section}.{key} "))
            assert len(line.split(None, 2)) == 3, f"{section}.{key} has no comment in config.yaml"
