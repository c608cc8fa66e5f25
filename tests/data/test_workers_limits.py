"""Bounded reading: a worker's memory is bounded by
the largest legitimate image, not by what a hostile file claims or inflates to.

Peak memory is measured in a child process (its own ``ru_maxrss``) under an address-space cap,
so a regression fails the test instead of exhausting the machine.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_deflate_bomb, make_dicom, to_stored
from fibrosis.config import ConfigError, IngestConfig, load_config
from fibrosis.data.pixels import NOT_AN_IMAGE, InputError, load_image
from fibrosis.data.records import Decoded, Rejected
from fibrosis.data.workers import process_file
from helpers.processes import run_child

MIB = 1 << 20
# One file through process_file with the default config (or IngestConfig overrides); prints
# the result and this process's peak RSS in MiB. VmHWM, not ru_maxrss: the latter survives
# execve, so it would report the (large) pytest process this child was forked from.
CHILD = """
import json, re, sys
from fibrosis.config import IngestConfig
from fibrosis.data.workers import process_file
cfg = IngestConfig(**json.loads(sys.argv[2]))
r = process_file((sys.argv[1], "", {}), cfg)
hwm_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"status": type(r).__name__, "reason": getattr(r, "reason", ""), "hash": r.content_hash,
                  "rss_mib": hwm_kib / 1024}))
"""
BASELINE_MIB = 400  # the child imports numpy, OpenCV, pydicom (~70 MiB); a full read would be GBs


def child_process_file(path: Path, mem_gb: int = 4, **cfg) -> dict:
    res = run_child(["-c", CHILD, str(path), json.dumps(cfg)], timeout=120, mem_gb=mem_gb)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])


def test_reader_never_blocks_on_a_fifo_or_floods_from_a_device(tmp_path):
    """process_file on its own (a path can change type after discovery): a FIFO must not block
    the open or the read, and a link to /dev/zero must not be read at all."""
    os.mkfifo(tmp_path / "pipe.dcm")
    os.symlink("/dev/zero", tmp_path / "zero.dcm")
    code = ("import sys, json\n"
            "from fibrosis.config import IngestConfig\n"
            "from fibrosis.data.workers import process_file\n"
            "for p in sys.argv[1:]:\n"
            "    r = process_file((p, '', {}), IngestConfig())\n"
            "    print(json.dumps([type(r).__name__, getattr(r, 'reason', '')]))\n")
    res = run_child(["-c", code, str(tmp_path / "pipe.dcm"), str(tmp_path / "zero.dcm")], timeout=60, mem_gb=3)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines() == [
        '["Rejected", "not a regular file: a FIFO (named pipe); not opened"]',
        '["Rejected", "not a regular file: a character device; not opened"]']


def test_a_2gb_sparse_dicom_is_refused_unread(tmp_path):
    """DICM marker, then 2 GiB of holes: refused by its size before one byte is read."""
    path = tmp_path / "huge.dcm"
    try:
        with open(path, "wb") as fh:
            fh.write(b"\0" * 128 + b"DICM")
            fh.truncate(2 << 30)  # sparse: no disk space, no time
        got = child_process_file(path)
    finally:
        path.unlink(missing_ok=True)
    assert got["status"] == "Rejected" and got["hash"] == ""
    assert got["reason"] == (f"file is {2 << 30} bytes (2048 MiB); limit ingest.max_file_mb=600 MiB: "
                             "refused unread")
    assert got["rss_mib"] < BASELINE_MIB, got


def test_a_non_image_is_hashed_as_a_stream_not_held(tmp_path):
    """500 MiB that sniff as no image (under the cap): the content hash is still computed (a
    resumed score compares it), but from 1 MiB blocks, never the whole file in memory."""
    path = tmp_path / "junk.dcm"
    try:
        with open(path, "wb") as fh:
            fh.truncate(500 * MIB)
        got = child_process_file(path)
    finally:
        path.unlink(missing_ok=True)
    assert got["status"] == "Rejected" and got["reason"] == NOT_AN_IMAGE
    import hashlib

    h = hashlib.sha256()
    for _ in range(500):
        h.update(bytes(MIB))
    assert got["hash"] == h.hexdigest()
    assert got["rss_mib"] < BASELINE_MIB, got


def test_a_deflate_bomb_is_refused_before_it_is_inflated(tmp_path):
    """~650 KB on disk inflating to 640 MiB (past the 600 MiB default): measured in bounded
    steps and refused; pydicom would have inflated it whole (and then ingested it as ok)."""
    path = make_deflate_bomb(tmp_path / "bomb.dcm", to_stored(chest_phantom(80, 72), 12), 640 * MIB,
                             bits_stored=12)
    assert path.stat().st_size < 2 * MIB
    got = child_process_file(path, min_side=1, image_size=32)
    assert got["status"] == "Rejected"
    assert got["reason"] == (f"deflated dataset (transfer syntax 1.2.840.10008.1.2.1.99) inflates to more "
                             f"than 600 MiB from {path.stat().st_size} bytes; limit ingest.max_inflated_mb=600 "
                             "(a zip bomb, or raise the limit)")
    assert got["rss_mib"] < BASELINE_MIB, got


def test_inflated_cap_is_configurable_and_spares_legitimate_files(tmp_path):
    cfg = IngestConfig(image_size=32, min_side=1)
    px = to_stored(chest_phantom(1024, 1024), 12)  # 2 MiB of pixels, deflated
    path = make_dicom(tmp_path / "deflated.dcm", px, "deflate", bits_stored=12)
    assert path.stat().st_size < 2 * MIB
    assert load_image(path, dataclasses.replace(cfg, max_inflated_mb=3)).meta.rows == 1024
    with pytest.raises(InputError, match=r"inflates to more than 1 MiB .*ingest.max_inflated_mb=1"):
        load_image(path, dataclasses.replace(cfg, max_inflated_mb=1))
    # padding after the pixels counts as well: the element pydicom would inflate in memory
    padded = make_deflate_bomb(tmp_path / "padded.dcm", to_stored(chest_phantom(80, 72), 12), 4 * MIB,
                               bits_stored=12)
    assert isinstance(process_file((str(padded), "", {}), dataclasses.replace(cfg, max_inflated_mb=5)), Decoded)
    assert "max_inflated_mb=3" in process_file((str(padded), "", {}), dataclasses.replace(cfg, max_inflated_mb=3)).reason


def test_file_cap_is_configurable(tmp_path):
    cfg = IngestConfig(image_size=32, min_side=1)
    path = make_dicom(tmp_path / "big.dcm", to_stored(chest_phantom(1100, 1400), 12), bits_stored=12)
    size = path.stat().st_size
    assert 2 * MIB < size < 4 * MIB
    ok = process_file((str(path), "", {}), dataclasses.replace(cfg, max_file_mb=4))
    assert isinstance(ok, Decoded) and ok.content_hash
    got = process_file((str(path), "", {}), dataclasses.replace(cfg, max_file_mb=2))
    assert isinstance(got, Rejected) and got.kind == "error"
    assert got.reason == f"file is {size} bytes (3 MiB); limit ingest.max_file_mb=2 MiB: refused unread"


def test_caps_are_config_keys_that_must_be_positive(tmp_path):
    assert load_config(overrides=["ingest.max_file_mb=50", "ingest.max_inflated_mb=70"]).ingest.max_file_mb == 50
    for key in ("max_file_mb", "max_inflated_mb"):
        with pytest.raises(ConfigError, match=rf"ingest.{key}: 0 must be >= 1"):
            load_config(overrides=[f"ingest.{key}=0"])
