"""Hostile config files: YAML alias bombs, YAML syntax errors and unknown tags, huge files,
and values too long to print."""
from __future__ import annotations

import resource

import pytest

from fibrosis.config import ConfigError, load_config


def _bomb(tmp_path):
    """327 bytes that expand to 9**8 = 43 million strings once walked or printed."""
    items = ["&a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for prev, name in zip("abcdefg", "bcdefgh"):
        items.append(f"&{name} [" + ",".join(f"*{prev}" for _ in range(9)) + "]")
    f = tmp_path / "bomb.yaml"
    f.write_text("evaluate:\n  data_source: [" + ",\n    ".join(items) + "]\n")
    return f


def test_yaml_alias_bomb_is_refused_without_expanding(tmp_path):
    f = _bomb(tmp_path)
    assert f.stat().st_size < 400
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match=r"bomb.yaml: invalid YAML: line 3, column \d+: found alias \*a: "
                                          r"YAML aliases are not allowed") as exc:
        load_config(f)
    # Before: a 351 MB message and 684 MiB peak RSS (measured); now a short line.
    assert len(str(exc.value)) < 300
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB


def test_long_values_are_cut_in_messages(tmp_path):
    f = tmp_path / "long.yaml"
    f.write_text("evaluate:\n  data_source: [" + ", ".join(["x" * 50] * 2000) + "]\n")
    with pytest.raises(ConfigError, match=r"data_source: expected a string, got \['xxx.*\.\.\. \(\d+ characters\)$") as exc:
        load_config(f)
    assert len(str(exc.value)) < 300
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml: \d+ bytes; expected a config of at most 1048576 bytes"):
        load_config(big)


@pytest.mark.parametrize("text, message", [
    ("train:\n  batch_size: [1\n", r"c.yaml: invalid YAML: line 3, column 1: .*expected ',' or '\]'"),
    ("train: {batch_size: 1\n", r"c.yaml: invalid YAML: line \d+"),
    ("model:\n  arch: !!python/object/apply:os.system [echo hi]\n",
     r"c.yaml: invalid YAML: line 2, column 9: could not determine a constructor for the tag "
     r"'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("model:\n  arch: !custom resnet18\n", r"could not determine a constructor for the tag '!custom'"),
    ("train:\n  seed: " + "9" * 5000 + "\n", r"c.yaml: invalid YAML value: Exceeds the limit"),
])
def test_yaml_errors_are_config_errors_naming_file_and_line(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f)


def test_override_with_broken_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match=r"override 'train.batch_size=\[1': invalid YAML: line 1, column 3"):
        load_config(None, ["train.batch_size=[1"])
    with pytest.raises(ConfigError, match=r"override 'model.arch=\*x': invalid YAML: .*found alias \*x"):
        load_config(None, ["model.arch=*x"])
