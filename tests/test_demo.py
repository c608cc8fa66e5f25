"""`fibrosis demo` (quick-start command 1) end to end, in its quick size."""
import csv
import json

import pytest

from fibrosis.io import file_sha256
from fibrosis.model.checkpoint import load_checkpoint
from fibrosis.cli.demo import run_demo


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path):
    work, report = tmp_path / "work", tmp_path / "report"
    assert run_demo(work, quick=True, report_dir=report)
    for name in ("report.html", "report.pdf", "metrics.json"):
        assert (report / name).stat().st_size > 0, name
    html = (report / "report.html").read_text()
    ckpt = load_checkpoint(work / "resnet18-demo" / "best.pt")
    # Offline (no torchvision weights in the torch cache) the report says so first.
    assert ("NOT ImageNet-pretrained" in html[:5000]) == (not ckpt["pretrained"])
    # The report's checkpoint hash is that of the file scoring reads (after evaluate stored
    # calibration and thresholds in it).
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["run"]["checkpoint_sha256"] == file_sha256(work / "resnet18-demo" / "best.pt")
    rows = list(csv.DictReader(open(work / "scores.csv")))
    statuses = sorted(r["status"].split(":")[0] for r in rows)
    # data/demo/score: 13 good files and the two broken on purpose.
    assert statuses == ["error"] * 2 + ["ok"] * 13
    assert (work / "scores.studies.csv").exists()
    # The fixed demo salt makes the split (hence every number) the same on every machine.
    manifest = list(csv.DictReader(open(work / "cache" / "manifest.csv")))
    counts = {s: sum(r["split"] == s for r in manifest) for s in ("train", "val", "test")}
    assert counts == {"train": 90, "val": 31, "test": 29}
