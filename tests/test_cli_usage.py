"""Documented usage errors end in one line and exit status 2, never a traceback."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_factory import chest_phantom, make_dicom, to_stored
from fibrosis.cli.main import main
from fibrosis.data.synthetic import make_synthetic_cache


def _usage_error(capsys, argv: list[str], pattern: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert len(lines) == 1 and len(err.splitlines()) <= 2, err  # at most one warning besides
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    make_dicom(d / "a.dcm", to_stored(chest_phantom(64, 64), 12))
    return d


@pytest.mark.parametrize("text, pattern", [
    ("train:\n  batch_size: [1\n", "c.yaml: invalid YAML: line 3, column 1"),
    ("model:\n  arch: !!python/object/apply:os.system [echo]\n", "could not determine a constructor for the tag"),
    ("a: &x [1]\nb: *x\n", "found alias *x: YAML aliases are not allowed"),
])
def test_bad_yaml_config(tmp_path, capsys, text, pattern):
    (tmp_path / "c.yaml").write_text(text)
    _usage_error(capsys, ["split", "--cache", str(tmp_path), "--config", str(tmp_path / "c.yaml")], pattern)


def test_bad_override_yaml(tmp_path, capsys):
    _usage_error(capsys, ["split", "--cache", str(tmp_path), "--set", "train.batch_size=[1"],
                 "override 'train.batch_size=[1': invalid YAML")


def test_missing_weights_file_is_one_line(tmp_path, capsys):
    cache = make_synthetic_cache(tmp_path / "c", 16, 32, splits={"train": 0.5, "val": 0.5, "test": 0.0})
    _usage_error(capsys, ["train", "--cache", str(cache), "--out", str(tmp_path / "run"), "--device", "cpu",
                          "--set", "model.arch=resnet18", "--set", "model.weights=/missing.pth",
                          "--set", "model.input_size=32"],
                 "model.weights='/missing.pth': file not found")


def test_cache_that_is_a_file(tmp_path, capsys, images):
    f = tmp_path / "cache.txt"
    f.write_text("x")
    _usage_error(capsys, ["ingest", str(images), "--cache", str(f), "--no-progress"],
                 f"--cache {f}: is a file; expected a folder")
    _usage_error(capsys, ["ingest", str(images), "--cache", str(f / "sub"), "--no-progress"],
                 f"--cache {f / 'sub'}: cannot create the folder")
    _usage_error(capsys, ["split", "--cache", str(f)], f"--cache {f}: is a file; expected a folder")


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs /sys, unwritable even for root")
def test_unwritable_cache_folder(capsys, images):
    _usage_error(capsys, ["ingest", str(images), "--cache", "/sys/fibrosis-cache", "--no-progress"],
                 "--cache /sys/fibrosis-cache: cannot create the folder")


def test_score_out_that_is_a_folder(tmp_path, capsys, images):
    _usage_error(capsys, ["score", "--model", str(tmp_path), "--input", str(images), "--out", str(tmp_path)],
                 f"--out {tmp_path}: is a folder; expected a file path")


def test_log_file_that_is_a_folder(tmp_path, capsys):
    _usage_error(capsys, ["--log-file", str(tmp_path), "split", "--cache", str(tmp_path)],
                 f"--log-file {tmp_path}: cannot write")


def test_labels_row_with_an_extra_field(tmp_path, capsys, images):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,fibrosis\na.dcm,1,yes\n")
    _usage_error(capsys, ["ingest", str(images), "--cache", str(tmp_path / "c"), "--labels", str(labels),
                          "--no-progress"], "labels.csv:2: 3 fields; the header has 2")


def test_long_values_are_cut(tmp_path, capsys):
    line = _usage_error(capsys, ["split", "--cache", str(tmp_path), "--set", "split." + "k" * 100000 + "=1"],
                        "unknown key(s) ['kkk")
    assert len(line) < 1000
