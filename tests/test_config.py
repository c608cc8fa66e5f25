"""Config loading: strict keys, types, overrides, and the shipped YAML files."""
import dataclasses

import re

import pytest

from fibrosis.config import Config, ConfigError, config_from_dict, config_to_dict, literal_values, load_config
from helpers.paths import REPO



def test_default_yaml_documents_exactly_the_defaults():
    # configs/default.yaml is the user's reference: it must not drift from the code.
    assert load_config(REPO / "configs" / "default.yaml") == Config()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)  # validates every key, type, range and enumerated value
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_unknown_key_names_key_and_allowed_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"learning_rate.*allowed.*batch_size"):
        load_config(f)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer, got '16'"):
        config_from_dict({"train": {"batch_size": "16"}})
    with pytest.raises(ConfigError, match="expected true/false"):
        config_from_dict({"train": {"amp": "yes"}})


def test_overrides_parse_yaml_values_and_nest():
    cfg = load_config(None, ["train.batch_size=16", "model.arch=resnet18",
                             "train.stages=[{name: head, epochs: 2, lr: 0.01}]"])
    assert cfg.train.batch_size == 16 and cfg.model.arch == "resnet18"
    assert cfg.train.stages[0].epochs == 2 and cfg.train.stages[0].lr == 0.01
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(None, ["train.batch_size"])


def test_config_is_frozen_and_round_trips():
    cfg = load_config(None, ["split.seed=3"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.split.seed = 4  # type: ignore[misc]
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, message", [
    ("ingest.cache_dtype=float32", r"ingest.cache_dtype: 'float32' is not one of \['uint8', 'uint16'\]"),
    ("train.preset=partal", r"train.preset: 'partal' is not one of"),
    ("evaluate.calibration=beta", r"evaluate.calibration: 'beta'"),
    ("score.study_aggregate=median", r"score.study_aggregate: 'median'"),
    ("split.test=0.5", r"split: fractions .* sum to 1"),
    ("evaluate.ci_level=95", r"evaluate.ci_level: 95.0 must lie in \(0, 1\)"),
    ("evaluate.deployment_prevalence=0", r"deployment_prevalence: 0.0"),
    ("train.batch_size=0", r"train.batch_size: 0 must be >= 1"),
])
def test_bad_values_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_scientific_notation_floats_are_numbers(tmp_path):
    # PyYAML reads 1e-3 as the string '1e-3'; a learning rate written that way must work.
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  head_lr: 1e-3\n  stages: [{name: head, epochs: 1, lr: 5e-4}]\n")
    cfg = load_config(f)
    assert cfg.train.head_lr == 0.001 and cfg.train.stages[0].lr == 0.0005
    with pytest.raises(ConfigError, match="expected a number, got 'fast'"):
        load_config(None, ["train.head_lr=fast"])


@pytest.mark.parametrize("key,allowed", [(k, a) for k, _, a in literal_values(Config())])
def test_every_enumerated_key_refuses_a_value_outside_its_set(key, allowed):
    data = config_to_dict(Config())
    *path, last = re.findall(r"\w+|\[\d+\]", key)
    node = data
    for part in path:  # "tune.arms[0].init" -> data["tune"]["arms"][0]
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    node[last] = "not-a-choice"
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert str(err.value) == f"{key}: 'not-a-choice' is not one of {list(allowed)}"


def test_enumerated_keys_are_the_literal_fields():
    assert {k for k, _, _ in literal_values(Config())} == {
        "ingest.cache_dtype", "ingest.polarity_qa", "train.preset", "train.imbalance", "evaluate.calibration",
        "evaluate.ece_strategy", "evaluate.fit_split", "score.study_aggregate", "score.engine", "tune.selection",
        "tune.final", "tune.epoch_criterion", "model.resize", "tune.probe_criterion", "tune.batchnorm"} | {
        f"tune.arms[{i}].{k}" for i in range(len(Config().tune.arms)) for k in ("init", "recipe", "preset")}
