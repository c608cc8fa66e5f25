"""`fibrosis demo`: the whole pipeline on the bundled demo data, start to finish.

ingest (DICOM path) -> split -> tune (cross-validated: random init vs linear probe vs
fine-tuning the last blocks; leaves the chosen arm's fold ensemble) -> evaluate -> report
-> score, then the runs index of the work folder (WORK/index.html). Each step is the same
function the individual commands call; the demo only chooses the inputs (data/demo), the
config (configs/demo.yaml) and the backbone, and wipes its previous outputs so that a re-run
starts clean and gives the same numbers.

The backbone is ImageNet-pretrained either way: torchvision's ResNet-18 when its weights
are in the torch cache, else the MobileNetV2 bundled in ``data/weights`` (hash-checked).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from fibrosis import artefacts
from fibrosis.io import read_csv
from fibrosis.config import load_config
from fibrosis.pipeline.tune import run_tune
from fibrosis.data.split import split_cache
from fibrosis.words import plural

logger = logging.getLogger(__name__)

DEMO_SALT = "fibrosis-demo-public-nih-ids"
BUNDLED_WEIGHTS = "mobilenet_v2-imagenet-features.pth"  # data/weights/, see its SOURCE.md
BUNDLED_SHA256 = "221f65aa066671af07650dac6d86a51916c5a61f97e50f238fd3aa7a56bef257"


def demo_backbone(data: Path) -> list[str]:
    """Config overrides for a pretrained demo backbone: torchvision's ResNet-18 when its weights
    are already in the torch cache (no download attempted), else the bundled MobileNetV2;
    neither: configs/demo.yaml as is (ResNet-18, loud random-init fallback)."""
    from fibrosis.model.net import imagenet_file

    if imagenet_file("resnet18")[1].is_file():
        return ["model.arch=resnet18", "model.weights=imagenet"]
    bundled = data.parent / "weights" / BUNDLED_WEIGHTS  # <repo>/data/demo -> <repo>/data/weights
    if bundled.is_file():
        return ["model.arch=mobilenet_v2", f"model.weights={bundled}", f"model.weights_sha256={BUNDLED_SHA256}"]
    logger.warning("%s not found and no torchvision ResNet-18 weights in the torch cache: the demo "
                   "backbone will NOT be pretrained", bundled)
    return []


def find_demo_data(data: str | Path | None = None) -> tuple[Path, Path]:
    """The demo images folder and its config: an explicit path, $FIBROSIS_DEMO_DATA, or
    the source checkout this package runs from. An installed wheel carries no 7 MB of
    images, so there the user names the folder (``fibrosis demo --data DIR``)."""
    if data is None:
        data = os.environ.get("FIBROSIS_DEMO_DATA")
    if data is None:
        checkout = Path(__file__).resolve().parents[2]  # fibrosis/cli/demo.py -> repository root
        data = checkout / "data" / "demo"
    data = Path(data)
    config = data.parent.parent / "configs" / "demo.yaml"  # <repo>/data/demo -> <repo>/configs
    for what, path in (("demo images", data / "images"), ("demo config", config)):
        if not path.exists():
            raise FileNotFoundError(f"{path}: {what} not found; pass --data <repository>/data/demo "
                                    "(or set FIBROSIS_DEMO_DATA) from a checkout of fibrosis")
    return data, config


def run_demo(work: str | Path = "work/demo", *, quick: bool = False,
             report_dir: str | Path | None = None, data: str | Path | None = None) -> bool:
    """Run every stage on data/demo; True when every stage met its contract."""
    from fibrosis.evaluate.run import evaluate_run
    from fibrosis.data.ingest import ingest
    from fibrosis.report.build import write_report
    from fibrosis.score.run import score

    DEMO_DATA, DEMO_CONFIG = find_demo_data(data)
    work = Path(work)
    overrides = [f"ingest.labels_csv={DEMO_DATA / 'labels.csv'}", *demo_backbone(DEMO_DATA)]
    if quick:  # smoke-test size: 2 folds, one fine-tuning epoch, one probe strength, few bootstrap
        # resamples, eager scoring (the ONNX export of an ensemble costs ~20 s; tests/train/test_tune.py checks it)
        overrides += ["tune.folds=2", "tune.max_epochs=1", "tune.probe_c=[0.01]",
                      "evaluate.bootstrap_resamples=200", "score.engine=eager"]
    cfg = load_config(DEMO_CONFIG, overrides)
    if work.exists():
        shutil.rmtree(work)
    cache, run = work / "cache", work / f"{cfg.model.arch}-demo"
    report_dir = Path(report_dir) if report_dir else DEMO_DATA.parent.parent / "reports" / "demo"

    # The demo patients are public NIH pseudonyms, so a fixed salt hides nothing here; it
    # makes the patient keys -- hence the seeded split and every number after it -- the
    # same on every machine. (Real caches get a random salt, or $FIBROSIS_SALT.)
    cache.mkdir(parents=True)
    (cache / artefacts.SALT_KEY).write_text(DEMO_SALT)

    logger.info("demo 1/6: ingest %s", DEMO_DATA / "images")
    summary = ingest([DEMO_DATA / "images"], cache, cfg.ingest, progress=False)  # logs its summary
    if not summary.ok():
        return False

    logger.info("demo 2/6: patient-level split")
    split_cache(cache, cfg.split)  # logs its summary

    logger.info("demo 3/6: tune (%s, %s px): how much to unfreeze, by %d-fold patient-level CV",
                cfg.model.arch, cfg.model.input_size, cfg.tune.folds)
    run_tune(cfg, cache, run, progress=False)

    logger.info("demo 4/6: evaluate on the test split")
    evaluate_run(run, cache, split="test", cfg=cfg)

    logger.info("demo 5/6: validation report")
    out = write_report(run, report_dir)
    logger.info("report: %s", out)

    logger.info("demo 6/6: batch-score %s", DEMO_DATA / "score")
    scores = work / artefacts.SCORES
    # salt_dir=cache: the same salt as ingest, so patient keys match the manifest
    result = score(run, DEMO_DATA / "score", scores, progress=False, salt_dir=cache)
    logger.info("%s", result)
    logger.info("scores: %s (per study: %s)", scores, scores.with_suffix(".studies.csv"))
    logger.info("look at them and label them: fibrosis review --scores %s --run %s --truth %s", scores, run,
                DEMO_DATA / "score_expected.csv")
    from fibrosis.report.runs_page import write_runs_index  # reads metrics.json: scipy

    page, index = write_runs_index(work, report_roots=[report_dir])
    logger.info("runs index: %s (%s)", page, plural(index.n_evaluations, "evaluation"))
    # The scoring folder holds two deliberately broken files, so `error` rows are
    # expected; the demo succeeds when every file got the status it expects.
    expected = {r["image"]: r["expected"] for r in read_csv(DEMO_DATA / "score_expected.csv")}
    got = {Path(r["path"]).name: r["status"] for r in read_csv(scores)}
    if got != expected:
        logger.error("demo scoring: statuses %s differ from %s", got, DEMO_DATA / "score_expected.csv")
        return False
    return True
