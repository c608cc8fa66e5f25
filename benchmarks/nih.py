"""The shared NIH sample and MobileNetV2 weights as the NIH benchmarks use them (transfer,
probe_choices, tune_views): where they are, and the one way their caches are built."""
from __future__ import annotations

import logging
from pathlib import Path

from fibrosis import artefacts
from fibrosis.config import IngestConfig, SplitConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data" / "nih-cxr14-sample"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet-features.pth"
SHA = "221f65aa066671af07650dac6d86a51916c5a61f97e50f238fd3aa7a56bef257"  # of WEIGHTS (its SOURCE.md)
SALT = "fibrosis-benchmark-public-nih-ids"  # NIH patient ids are public pseudonyms
log = logging.getLogger("nih")


def prepare_cache(data: Path, cache: Path, size: int, dtype: str = "uint8") -> Path:
    """Ingest the sample into ``cache`` (one fixed salt, so the patient split is the same on every
    machine) and split it (60/20/20, seed 0). Every run re-ingests (a no-op on unchanged files) so
    that a labels or config change since the cache was built reaches the manifest; split is a
    no-op too."""
    from fibrosis.data.ingest import ingest
    from fibrosis.data.split import split_cache

    cache.mkdir(parents=True, exist_ok=True)
    (cache / artefacts.SALT_KEY).write_text(SALT)
    cfg = IngestConfig(image_size=size, cache_dtype=dtype, labels_csv=str(data / "labels.csv"),
                       label_column="fibrosis", findings_column="finding_labels")
    log.info("ingest %s: %s", cache, ingest([data / "images"], cache, cfg, progress=False))
    split_cache(cache, SplitConfig())
    return cache
