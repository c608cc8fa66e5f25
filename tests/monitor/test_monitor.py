"""`fibrosis monitor` end to end with constructed shifts.

One site of tiny DICOM phantoms is ingested, split, trained on (head only, resnet18 at
32 px) and evaluated, which writes the reference. Then fresh batches go through the real
`fibrosis score` and the monitor: the test split itself gives no alert; a changed VOI
window, only AP views, a manufacturer never seen and flipped labels each raise the alert
that names the cause.
"""
from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from fibrosis.cli.main import main
from fibrosis.config import load_config
from fibrosis.monitor.run import monitor

BITS = 12
N_SITE, N_BATCH = 132, 40


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread only waits (see test_train)
    yield
    torch.set_num_threads(before)


def phantom(seed: int, positive: bool) -> np.ndarray:
    """A chest phantom; "fibrosis" = brighter, textured lower lung fields (what the head learns)."""
    rng = np.random.default_rng(seed)
    img = chest_phantom(80, 72, seed=seed) * rng.uniform(0.8, 1.2)  # exposure varies between films
    y, x = np.mgrid[0:80, 0:72]
    lower_lungs = (y > 40) & (y < 62) & (np.abs(x - 36) > 8) & (np.abs(x - 36) < 26)
    # opacity of varying strength, and some in negatives too: separable, but not perfectly
    strength = rng.uniform(0.05, 0.3) if positive else rng.uniform(0.0, 0.1)
    img[lower_lungs] += strength * (1 + 0.4 * np.sin(x[lower_lungs] * 1.7))
    return np.clip(img, 0, 1)


def labels_csv(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}_labels.csv")  # beside the images: a CSV inside is an input


def write_batch(folder: Path, n: int, seed: int, *, flip: bool = False, **dicom: object) -> Path:
    """``n`` DICOMs (30% positive) and their labels CSV (labels inverted with ``flip``)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.r_[np.ones(round(0.3 * n), int), np.zeros(n - round(0.3 * n), int)])
    rows = []
    for i, y in enumerate(labels):
        name = f"im{seed}_{i:03d}.dcm"
        kw = {"view": "PA", "ImagerPixelSpacing": [0.2, 0.2], **dicom}
        make_dicom(folder / name, to_stored(phantom(seed * 1000 + i, bool(y)), BITS), bits_stored=BITS,
                   patient_id=f"P{seed}-{i}", PatientSex="FM"[i % 2], PatientAge=f"{40 + (i * 7) % 40:03d}Y", **kw)
        rows.append({"image": name, "fibrosis": int(1 - y if flip else y)})
    with open(labels_csv(folder), "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image", "fibrosis"])
        w.writeheader()
        w.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Ingest -> split -> train (head only) -> evaluate: a run with its reference.json."""
    from fibrosis.data.ingest import ingest
    from fibrosis.data.split import split_cache
    from fibrosis.evaluate.run import evaluate_run
    from fibrosis.train.loop import train

    root = tmp_path_factory.mktemp("site")
    images = write_batch(root / "images", N_SITE, 1)
    cfg = load_config(None, [
        "ingest.image_size=64", "ingest.min_side=1", "ingest.polarity_qa=keep",
        f"ingest.labels_csv={labels_csv(images)}", "split.train=0.5", "split.val=0.25", "split.test=0.25",
        "model.arch=resnet18", "model.weights=none", "model.input_size=32", "train.preset=head-only",
        "train.head_epochs=8", "train.head_lr=0.05", "train.num_workers=0", "train.batch_size=16",
        "evaluate.bootstrap_resamples=200", "evaluate.calibration=temperature", "evaluate.gradcam_per_kind=0", "score.workers=1", "score.engine=eager"])
    cache, run = root / "cache", root / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("FIBROSIS_SALT", "monitor-test")  # patient keys, hence the split, the same in every run
    ingest([images], cache, cfg.ingest, workers=1, progress=False)
    split_cache(cache, cfg.split)
    train(cfg, cache, run, device="cpu")
    evaluate_run(run, cache, "test", gradcam=False, device="cpu")
    yield {"root": root, "run": run, "cache": cache, "images": images}
    mp.undo()


def score_batch(site: dict, inputs: Path, name: str) -> Path:
    from fibrosis.score.run import score

    out = site["root"] / "scores" / f"{name}.csv"
    out.parent.mkdir(exist_ok=True)
    summary = score(site["run"], inputs, out, workers=1, engine="eager", progress=False,
                    salt_dir=site["cache"], device="cpu")
    assert summary.counts["error"] == 0
    return out


def test_reference_is_written_beside_the_evaluation(site):
    ref = json.loads((site["run"] / "eval" / "test" / "reference.json").read_text())
    metrics = json.loads((site["run"] / "eval" / "test" / "metrics.json").read_text())
    assert ref["n"] == metrics["data"]["n"] == len(ref["probabilities"]) == 33
    assert ref["categories"]["view_position"] == {"PA": 33} and ref["categories"]["manufacturer"] == {"TESTVENDOR": 33}
    assert ref["outcomes"] == {"n": N_SITE, "ok": N_SITE, "excluded": 0, "error": 0, "reasons": {}}  # whole cache
    assert len(ref["continuous"]["img_mean"]) == 33 and ref["continuous"]["pixel_spacing"] == [0.2] * 33
    assert ref["performance"]["auc"] == metrics["discrimination"]["auc"] > 0.8  # the head learned the opacity
    text = json.dumps(ref)
    assert "P1-" not in text and "im1_" not in text  # no patient IDs, no paths


def test_the_test_split_itself_gives_no_alert(site, tmp_path):
    from fibrosis.io import read_csv

    test_paths = [r["path"] for r in read_csv(site["cache"] / "manifest.csv") if r["split"] == "test"]
    listing = tmp_path / "test_split.csv"
    listing.write_text("path\n" + "\n".join(test_paths) + "\n")
    scores = score_batch(site, listing, "test_split")
    meta = read_csv(scores.with_name("test_split.meta.csv"))
    assert len(meta) == 33 and all(m["manufacturer"] == "TestVendor" and m["img_mean"] for m in meta)
    out = tmp_path / "mon"
    code = main(["monitor", "--run", str(site["run"]), "--scores", str(scores),
                 "--labels", str(labels_csv(site["images"])), "--out", str(out)])
    result = json.loads((out / "monitor.json").read_text())
    assert code == 0 and result["status"] == "ok" and result["alerts"] == [], result["alerts"]
    (window,) = result["windows"]
    perf = window["performance"]["metrics"]
    assert perf["auc"]["value"] == pytest.approx(perf["auc"]["reference"], abs=1e-9)  # same cases, same model
    means = next(c for c in window["checks"] if c["check"] == "img_mean")
    assert means["statistic"] == 0.0  # scoring computes the same image statistics as evaluation
    assert "No alert" in (out / "monitor.html").read_text()


@pytest.mark.parametrize("name,dicom,flip,cause", [
    ("voi", {"WindowCenter": 0.25 * 4095, "WindowWidth": 0.2 * 4095, "StudyDate": "20270105"}, False,
     "input shift: img_"),
    ("ap_only", {"view": "AP"}, False, "input shift: view_position"),
    ("new_vendor", {"Manufacturer": "NeverSeen Medical"}, False, "input shift: manufacturer"),
    ("flipped", {}, True, "performance: AUC"),
])
def test_each_constructed_shift_raises_the_alert_that_names_it(site, tmp_path, name, dicom, flip, cause):
    batch = write_batch(tmp_path / name, N_BATCH, {"voi": 11, "ap_only": 12, "new_vendor": 13, "flipped": 14}[name],
                        flip=flip, **dicom)
    scores = score_batch(site, batch, name)
    summary = monitor(site["run"], [scores], tmp_path / "mon", labels=labels_csv(batch), figures=name == "ap_only")
    hits = [a for a in summary.alerts if cause in a]
    assert hits, summary.alerts
    if name == "new_vendor":
        assert "'NEVERSEEN MEDICAL'" in hits[0] and "never seen in the reference" in hits[0]
    if name == "ap_only":
        assert "AP 40" in hits[0] and "n=40 vs reference 33" in hits[0]
        page = summary.html_path.read_text()
        assert html.escape(hits[0]) in page and page.count("data:image/png") == 3  # histogram, over time, mix
    if name == "voi":  # dated studies: the side file has the month, and windows go by month
        from fibrosis.io import read_csv

        assert {m["study_month"] for m in read_csv(scores.with_name("voi.meta.csv"))} == {"2027-01"}
        assert json.loads(summary.json_path.read_text())["window_mode"] == "month"
    # the other causes stay quiet: each batch differs from the reference in one way only
    others = [a for a in summary.alerts if "input shift" in a and cause not in a and name != "voi"]
    assert not others, others
