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
    (run,) = work.glob("*-demo")  # resnet18-demo with torchvision's weights cached, else mobilenet_v2-demo
    ckpt = load_checkpoint(run / "best.pt")
    # Pretrained either way: torchvision's ResNet-18 from the torch cache, or the bundled
    # MobileNetV2 (data/weights, hash-checked); so no NOT-pretrained banner.
    assert ckpt.pretrained and ckpt.weights_info["sha256"]
    assert "NOT ImageNet-pretrained" not in html
    # The demo answers "how much to unfreeze?" on its own data: the tune table, and the model
    # evaluated is the chosen arm's fold ensemble.
    assert "How much to unfreeze?" in html and "random-init" in html and "head-only" in html
    assert ckpt.ensemble and ckpt.ensemble.members == 2 and ckpt.threshold.chosen_on == "out-of-fold"
    assert "reference" in html and "partial" in html  # the plain baseline and `fibrosis train`'s preset
    # Fine-tuning continues from the probe without wrecking it: on every fold, the first epoch's
    # training loss stays within 1.5x of the probe's on the same (augmented) images. (Pretrained
    # arms: the random-init control's last stage starts from random weights, not from a fit.)
    tune = json.loads((run / "tune.json").read_text())
    tuned = [a["name"] for a in tune["arms"]
             if a["recipe"] == "lp-ft" and a["groups"] and a["init"] == "pretrained" and not a.get("tta")]
    assert tuned and not [a for a in tune["arms"] if a["failed"]]
    for name in tuned:
        for done in (run / "cv" / name).glob("r0-f*/done.json"):
            loss = json.loads(done.read_text())["train_loss"]
            assert len(loss) == 2 and loss[1] <= 1.5 * loss[0], (name, done.parent.name, loss)
    # The report's checkpoint hash is that of the file scoring reads.
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["run"]["checkpoint_sha256"] == file_sha256(run / "best.pt")
    rows = list(csv.DictReader(open(work / "scores.csv")))
    statuses = sorted(r["status"] for r in rows)
    assert all(bool(r["reason"]) == (r["status"] != "ok") for r in rows)
    # data/demo/score: 13 good files and the two broken on purpose.
    assert statuses == ["error"] * 2 + ["ok"] * 13
    assert (work / "scores.studies.csv").exists()
    # The fixed demo salt makes the split (hence every number) the same on every machine.
    manifest = list(csv.DictReader(open(work / "cache" / "manifest.csv")))
    counts = {s: sum(r["split"] == s for r in manifest) for s in ("train", "val", "test")}
    assert counts == {"train": 90, "val": 31, "test": 29}
