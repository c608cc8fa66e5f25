"""Batch scoring end to end on tiny DICOMs: statuses, frozen settings, resume, determinism, refusal."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.checkpoints import PATIENT_ID, PATIENT_NAME, THRESHOLD, make_checkpoint, youden_threshold
from helpers.dicom_factory import chest_phantom, make_dicom, make_png, to_stored, truncate
from helpers.manifest import row
from fibrosis.data.records import Decoded, ImageMeta, PatientId
from fibrosis.score import run as S
from fibrosis.data.cache import CacheReader, CacheWriter, to_cache_dtype
from fibrosis.model.checkpoint import CheckpointError
from fibrosis.config import IngestConfig
from fibrosis.data.dataset import CacheDataset
from fibrosis.model.net import build_model
from helpers.paths import DEMO
from helpers.scores import status_text

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two studies (one with two frontal images), a lateral, a PNG and every kind of bad input."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "a").mkdir()
    (root / "b" / "deep").mkdir(parents=True)
    px = lambda seed: to_stored(chest_phantom(96, 80, seed=seed), 12)  # noqa: E731
    kw = dict(patient_id=PATIENT_ID, patient_name=PATIENT_NAME, bits_stored=12)
    make_dicom(root / "a" / "s1_pa.dcm", px(1), study_uid="1.2.3.1", sop_uid="1.2.3.1.1", **kw)
    make_dicom(root / "a" / "s1_ap.dcm", px(2), study_uid="1.2.3.1", sop_uid="1.2.3.1.2", view="AP", **kw)
    make_dicom(root / "a" / "s1_lat.dcm", px(3), study_uid="1.2.3.1", sop_uid="1.2.3.1.3", view="LL", **kw)
    make_dicom(root / "b" / "deep" / "s2.dcm", px(4), "rle", study_uid="1.2.3.2", sop_uid="1.2.3.2.1", **kw)
    make_png(root / "b" / "export.png", (chest_phantom(90, 90, seed=5) * 255).astype(np.uint8))
    truncate(make_dicom(root / "b" / "truncated.dcm", px(6), study_uid="1.2.3.3", **kw), 0.5)
    (root / "b" / "notes.dcm").write_text("not an image")
    (root / "b" / "empty.dcm").write_bytes(b"")
    make_dicom(root / "b" / "huge.dcm", np.zeros((2, 2), np.uint16), Rows=60000, Columns=60000, **kw)
    (root / "locked").mkdir()
    return root


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def locked(monkeypatch, inputs):
    """Make ``inputs/locked`` unlistable. chmod 000 does not stop root (CI runs as root),
    so the listing call itself fails as it would for a user without permission."""
    real = os.scandir
    target = str(inputs / "locked")

    def scandir(path="."):
        if os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")


def run(ckpt, inputs, out, **kw):
    kw.setdefault("progress", False)
    return S.score(ckpt.parent, inputs, out, device="cpu", **kw)


def test_scores_every_file_with_a_status_row(ckpt, inputs, tmp_path, locked):
    out = tmp_path / "scores.csv"
    summary = run(ckpt, inputs, out)
    rows = {Path(r["path"]).name: r for r in read(out)}
    assert set(rows) == {"s1_pa.dcm", "s1_ap.dcm", "s1_lat.dcm", "s2.dcm", "export.png", "truncated.dcm",
                         "notes.dcm", "empty.dcm", "huge.dcm", "locked"}
    for name in ("s1_pa.dcm", "s1_ap.dcm", "s2.dcm", "export.png"):
        r = rows[name]
        assert r["status"] == "ok" and r["engine"] == "eager" and r["model_id"] == summary.model_id
        p = float(r["probability_calibrated"])
        assert p == pytest.approx(1 / (1 + np.exp(-float(r["logit_uncalibrated"]) / 2.0)), abs=1e-6)  # T = 2
        assert int(r["decision_fibrosis"]) == int(p >= THRESHOLD) and float(r["threshold"]) == THRESHOLD
        assert r["threshold_name"] == "youden" and len(r["patient_key"]) == 16
    assert rows["s1_pa.dcm"]["sop_uid"] == "1.2.3.1.1" and rows["s1_ap.dcm"]["view_position"] == "AP"
    assert status_text(rows["s1_lat.dcm"]).startswith("excluded: (0018,5101) ViewPosition='LL'")
    assert status_text(rows["truncated.dcm"]).startswith("error: truncated")
    assert status_text(rows["notes.dcm"]).startswith("error: not a DICOM")
    assert status_text(rows["empty.dcm"]).startswith("error: not a DICOM")
    assert "Rows=60000" in rows["huge.dcm"]["reason"] and rows["huge.dcm"]["status"] == "error"
    assert status_text(rows["locked"]) == "error: cannot list folder: Permission denied"
    assert all(r["status"] in ("ok", "excluded", "error") and bool(r["reason"]) == (r["status"] != "ok")
               for r in rows.values())
    assert summary.counts == {"ok": 4, "excluded": 1, "error": 5} and not summary.ok()
    assert "ok 4, excluded 1, error 5" in str(summary)
    paths = [r["path"] for r in read(out)]
    assert paths == sorted(paths)
    # pseudonymous only: neither the raw PatientID nor the name is in any output
    for f in (out, out.with_suffix(".studies.csv")):
        text = f.read_text()
        assert PATIENT_ID not in text and "Doe" not in text
    studies = {r["study_uid"]: r for r in read(out.with_suffix(".studies.csv"))}
    s1 = studies["1.2.3.1"]
    probs = [float(rows[n]["probability_calibrated"]) for n in ("s1_pa.dcm", "s1_ap.dcm")]
    assert s1["n_images"] == "2" and float(s1["probability_calibrated"]) == max(probs)
    assert s1["patient_key"] == rows["s1_pa.dcm"]["patient_key"]
    assert studies["1.2.3.2"]["n_images"] == "1" and len(studies) == 3  # + the PNG's file-derived study


def test_mean_aggregate_and_ok_run(ckpt, inputs, tmp_path, locked):
    good = tmp_path / "good"
    good.mkdir()
    for name in ("s1_pa.dcm", "s1_ap.dcm"):
        (good / name).write_bytes((inputs / "a" / name).read_bytes())
    out = tmp_path / "s.csv"
    summary = run(ckpt, good, out, study_aggregate="mean")
    assert summary.ok() and summary.counts == {"ok": 2}
    probs = [float(r["probability_calibrated"]) for r in read(out)]
    (study,) = read(out.with_suffix(".studies.csv"))
    assert study["aggregate"] == "mean" and float(study["probability_calibrated"]) == pytest.approx(np.mean(probs), abs=2e-6)


@pytest.mark.slow
def test_resume_after_kill_is_byte_identical(ckpt, inputs, tmp_path, locked):
    full = tmp_path / "full.csv"
    run(ckpt, inputs, full)
    killed = tmp_path / "killed.csv"
    lines = full.read_bytes().split(b"\n")
    killed.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:17])  # header + 3 rows + torn row
    summary = run(ckpt, inputs, killed)
    assert summary.resumed == 3 and sum(summary.counts.values()) == 10 - 3  # nothing re-scored
    assert killed.read_bytes() == full.read_bytes()
    again = run(ckpt, inputs, killed)  # complete output: nothing to do, nothing duplicated
    assert again.resumed == 10 and not again.counts and killed.read_bytes() == full.read_bytes()
    # re-running from scratch gives the same bytes (deterministic order and engine)
    fresh = tmp_path / "fresh.csv"
    run(ckpt, inputs, fresh)
    assert fresh.read_bytes() == full.read_bytes()


def test_worker_processes_give_the_same_rows(ckpt, inputs, tmp_path, locked):
    one, two, four = tmp_path / "one.csv", tmp_path / "two.csv", tmp_path / "four.csv"
    run(ckpt, inputs, one, workers=1)
    run(ckpt, inputs, two, workers=2)
    assert one.read_bytes() == two.read_bytes()
    # Another batch size: the same rows, the same decisions; the logits equal to float32
    # rounding (CPU convolution kernels sum in a batch-size-dependent order).
    run(ckpt, inputs, four, workers=2, batch_size=4)
    a, b = read(one), read(four)
    assert [(r["path"], r["status"]) for r in a] == [(r["path"], r["status"]) for r in b]
    for ra, rb in zip(a, b):
        for key, v in ra.items():
            try:
                assert float(v) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-6), key
            except ValueError:  # not a number: identical text
                assert v == rb[key], key


def test_resume_refuses_rows_of_another_model(ckpt, inputs, tmp_path, locked):
    out = tmp_path / "scores.csv"
    run(ckpt, inputs, out)
    other = make_checkpoint(tmp_path / "other" / "best.pt", threshold=youden_threshold(0.9))
    with pytest.raises(ValueError, match="scored by model_id=.*must not be mixed"):
        S.score(other, inputs, out, progress=False, device="cpu")


def test_ingest_settings_come_from_the_checkpoint(tmp_path, inputs, locked):
    """A checkpoint trained with AP excluded excludes AP here too: no way to score otherwise."""
    ck = make_checkpoint(tmp_path / "run" / "best.pt",
                         ingest=IngestConfig(image_size=64, min_side=1, excluded_views=("LL", "AP")))
    good = tmp_path / "in"
    good.mkdir()
    (good / "ap.dcm").write_bytes((inputs / "a" / "s1_ap.dcm").read_bytes())
    summary = S.score(ck, good, tmp_path / "o.csv", progress=False, device="cpu")
    (row,) = read(tmp_path / "o.csv")
    assert status_text(row).startswith("excluded: (0018,5101) ViewPosition='AP'") and summary.ok()


def test_model_input_matches_training_transform(tmp_path, ckpt):
    """Scoring's input == what CacheDataset (eval, no augmentation) gives for the cached image."""
    img = chest_phantom(64, 64, seed=9).astype(np.float32)
    stored = to_cache_dtype(img, "uint8")
    net = build_model("resnet18", "none", input_size=32)
    writer = CacheWriter(tmp_path / "cache", 64, "uint8", {"sig": 1})
    (placed,) = writer.write_shard(0, [stored], [row(path="x", label=1)], [])
    reader = CacheReader(tmp_path / "cache", [placed])
    x_train, _ = CacheDataset(reader, [0], net.preprocessing, augment=None)[0]
    x_score = S.model_input(stored, "uint8", net.preprocessing)
    assert x_score.shape == (1, 32, 32) and x_score.dtype == np.float32
    np.testing.assert_array_equal(x_score, x_train.numpy())


def test_refuses_foreign_checkpoints(tmp_path, inputs):
    plain = tmp_path / "state.pt"
    torch.save(build_model("resnet18", "none").state_dict(), plain)
    with pytest.raises(CheckpointError, match="format="):
        S.score(plain, inputs, tmp_path / "o.csv", progress=False, device="cpu")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fibrosis-checkpoint", "format_version": 1, "payload": np.random.default_rng(0)}, evil)
    with pytest.raises(CheckpointError, match="not a loadable"):
        S.score(evil, inputs, tmp_path / "o.csv", progress=False, device="cpu")
    assert not (tmp_path / "o.csv").exists()


def test_refuses_unevaluated_checkpoint(tmp_path, inputs):
    ck = make_checkpoint(tmp_path / "best.pt", threshold=None, calibration=None)
    with pytest.raises(ValueError, match="run `fibrosis evaluate`"):
        S.score(ck, inputs, tmp_path / "o.csv", progress=False, device="cpu")


def test_gradcam_overlays_for_positives(tmp_path, inputs, locked):
    """Threshold 0 makes every scored image positive: one overlay PNG per ok image."""
    ck = make_checkpoint(tmp_path / "run" / "best.pt", threshold=youden_threshold(0.0))
    out, cams = tmp_path / "o.csv", tmp_path / "cams"
    run(ck, inputs / "a", out, gradcam_dir=cams)
    assert sorted(p.name for p in cams.iterdir()) == ["1.2.3.1.1.png", "1.2.3.1.2.png"]
    import cv2

    img = cv2.imread(str(cams / "1.2.3.1.1.png"))
    assert img.shape == (32, 32, 3) and img.std() > 0


def _rank(rank: int, world: int, port: int, ckpt: str, inputs: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    summary = S.score(ckpt, inputs, out, progress=False, device="cpu", workers=1)
    Path(f"{out}.summary{rank}").write_text(f"{dict(summary.counts)}|{summary.resumed}")


@pytest.mark.slow
def test_torchrun_ranks_shard_and_merge(ckpt, inputs, tmp_path, monkeypatch):
    """Two gloo processes, as torchrun starts them: same file as one process, part files gone."""
    import socket

    import torch.multiprocessing as tmp

    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    single, multi = tmp_path / "single.csv", tmp_path / "multi.csv"
    S.score(ckpt, inputs / "b", single, progress=False, device="cpu", workers=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.spawn(_rank, args=(2, port, str(ckpt), str(inputs / "b"), str(multi)), nprocs=2, join=True)
    assert multi.read_bytes() == single.read_bytes()
    assert multi.with_suffix(".studies.csv").read_bytes() == single.with_suffix(".studies.csv").read_bytes()
    assert not list(tmp_path.glob("multi.csv.rank*"))
    # rank 0 reports the counts of all ranks
    counts, resumed = (tmp_path / "multi.csv.summary0").read_text().split("|")
    assert eval(counts) == {"ok": 2, "error": 4} and resumed == "0"


class _Shifted:
    """An engine that passed the synthetic check but is off on real images (+0.5 logit)."""

    name = "onnx"

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        with torch.no_grad():
            return self.net(torch.from_numpy(x))[:, 0].numpy() + np.float32(0.5)

    def describe(self):
        return "shifted"


@pytest.mark.parametrize("auto", [True, False])
def test_first_real_batch_rechecks_the_engine(tmp_path, ckpt, auto):
    from fibrosis.model.checkpoint import load_model
    from fibrosis.model.engine import EngineError
    from fibrosis.score.output import RowWriter

    net, ck = load_model(ckpt)
    fz = S.frozen_settings(ck, ckpt, "f" * 64)
    writer = RowWriter(tmp_path / "o.csv")
    scorer = S.Scorer(net, _Shifted(net), fz, writer, batch_size=2, salt="s", auto=auto, gradcam_dir=None)
    x = np.stack([S.model_input(to_cache_dtype(chest_phantom(64, 64, seed=i), "uint8"), "uint8",
                                net.preprocessing) for i in range(2)])
    meta = [ImageMeta(sop_uid=f"1.{i}", study_uid="1", series_uid="1", view_position="PA",
                      source_format="dicom", patient_id=PatientId(PATIENT_ID)) for i in range(2)]
    results = [Decoded(f"/p{i}", "h", meta[i], (), np.zeros(1)) for i in range(2)]
    if not auto:
        with pytest.raises(EngineError, match="real images"):
            for r, xi in zip(results, x):
                scorer.add(r, xi)
        return
    for r, xi in zip(results, x):
        scorer.add(r, xi)
    writer.close()
    rows = read(tmp_path / "o.csv")
    with torch.no_grad():
        ref = net(torch.from_numpy(x))[:, 0].numpy()
    assert [r["engine"] for r in rows] == ["eager", "eager"]
    np.testing.assert_allclose([float(r["logit_uncalibrated"]) for r in rows], ref, atol=1e-6)
    assert PATIENT_ID not in (tmp_path / "o.csv").read_text()


def test_demo_score_folder_matches_its_expected_statuses(tmp_path, monkeypatch):
    """data/demo/score: the files the demo ends by scoring, with their documented outcomes."""
    demo = DEMO
    if not (demo / "score_expected.csv").is_file():
        pytest.skip("data/demo not present")
    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    ck = make_checkpoint(tmp_path / "run" / "best.pt", ingest=IngestConfig(image_size=64))
    out = tmp_path / "scores.csv"
    summary = S.score(ck, demo / "score", out, progress=False, device="cpu")
    got = {Path(r["path"]).name: r["status"] for r in read(out)}
    expected = {r["image"]: r["expected"] for r in read(demo / "score_expected.csv")}
    assert got == expected
    assert not summary.ok() and summary.counts["error"] == 2
    studies = read(out.with_suffix(".studies.csv"))
    assert len(studies) == 10 and sum(int(s["n_images"]) for s in studies) == 13


@pytest.mark.slow
def test_outputs_inside_the_input_folder_are_not_scored(ckpt, inputs, tmp_path, monkeypatch):
    monkeypatch.delenv("FIBROSIS_SALT", raising=False)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "pa.dcm").write_bytes((inputs / "a" / "s1_pa.dcm").read_bytes())
    out = folder / "scores.csv"
    first = run(ckpt, folder, out, gradcam_dir=folder / "cams")
    second = run(ckpt, folder, out, gradcam_dir=folder / "cams")  # scores.csv, salt.key now inside
    assert first.ok() and second.ok() and second.resumed == 1 and not second.counts
    assert (folder / "salt.key").is_file() and [Path(r["path"]).name for r in read(out)] == ["pa.dcm"]
