"""Documented usage errors end in one line and exit status 2, never a traceback."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
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
    _usage_error(capsys, ["train", "--cache", str(cache), "--run", str(tmp_path / "run"), "--device", "cpu",
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
    _usage_error(capsys, ["score", "--run", str(tmp_path), "--input", str(images), "--out", str(tmp_path)],
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


SMALL = ("--set", "ingest.min_side=1", "--set", "ingest.image_size=32")  # the 64 px fixture image


def test_a_duplicate_yaml_key_is_refused_like_an_unknown_one(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batch_size: 4\n  head_lr: 0.01\n  batch_size: 64\n")
    _usage_error(capsys, ["split", "--cache", str(tmp_path), "--config", str(cfg)],
                 "c.yaml: invalid YAML: line 4, column 3: duplicate key 'batch_size' (first given on line 2)")


@pytest.mark.parametrize("where", ["labels", "input list"])
def test_a_csv_field_over_the_limit_is_one_line(tmp_path, capsys, images, where):
    big = "x" * 140_000
    f = tmp_path / ("labels.csv" if where == "labels" else "list.csv")
    if where == "labels":
        f.write_text(f"image,fibrosis\na.dcm,1\n{big}.dcm,0\n")
        argv = [str(images), "--labels", str(f)]
    else:
        f.write_text(f"path\n{images / 'a.dcm'}\n{big}\n")
        argv = [str(f)]
    _usage_error(capsys, ["ingest", *argv, "--cache", str(tmp_path / "c"), "--no-progress"],
                 f"{f.name}:3: a field longer than 131072 characters")


def test_a_second_ingest_on_a_cache_in_use_names_the_holder(tmp_path, capsys, images):
    from fibrosis.data.cache import CacheLock

    cache = tmp_path / "c"
    cache.mkdir()
    argv = ["ingest", str(images), "--cache", str(cache), "--no-progress", *SMALL]
    with CacheLock(cache):  # as a running ingest holds it
        _usage_error(capsys, argv, f"c: cache is in use by PID {os.getpid()}")
    assert main(argv) == 0  # free again


@pytest.mark.parametrize("name", ["manifest.csv", "rejects.csv", "consolidated.json", "cache.json", "salt.key",
                                  ".ingest.lock"])
def test_a_fifo_among_the_cache_files_is_refused_not_waited_on(tmp_path, capsys, images, monkeypatch, name):
    from helpers.processes import deadline

    monkeypatch.delenv("FIBROSIS_SALT", raising=False)  # salt.key is read from the cache
    cache = tmp_path / "c"
    argv = ["ingest", str(images), "--cache", str(cache), "--no-progress", *SMALL]
    assert main(argv) == 0
    capsys.readouterr()
    (cache / name).unlink()
    os.mkfifo(cache / name)
    with deadline(30, f"ingest blocked on the FIFO at {name}"):
        if name == "consolidated.json":  # a record ingest can do without: rebuilt, the FIFO replaced unread
            assert main(argv) == 0 and (cache / name).is_file()
        else:
            _usage_error(capsys, argv, f"{name}: not a regular file: a FIFO (named pipe)")
