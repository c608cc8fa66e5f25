"""A small scored checkpoint (random-init resnet18 at 32 px, temperature 2, threshold 0.47) that
`score`, `monitor` and the DICOM writers take like an evaluated run."""
from __future__ import annotations

from pathlib import Path

import torch

from fibrosis.config import Config, IngestConfig, ModelConfig, ScoreConfig, config_to_dict
from fibrosis.model.calibration import TemperatureScaling
from fibrosis.model.checkpoint import save_checkpoint
from fibrosis.model.net import build_model

INGEST = IngestConfig(image_size=64, min_side=1)
THRESHOLD = 0.47
PATIENT_ID, PATIENT_NAME = "PAT-SECRET-4711", "Doe^Jane"


def make_checkpoint(path: Path, ingest: IngestConfig = INGEST, **extra) -> Path:
    torch.manual_seed(0)
    net = build_model("resnet18", "none", input_size=32)
    cfg = Config(ingest=ingest, model=ModelConfig(arch="resnet18", weights="none", input_size=32),
                 score=ScoreConfig(batch_size=3, workers=1, engine="eager"))
    payload = {"model": net.state_dict(), "config": config_to_dict(cfg), "preprocessing": net.preprocessing,
               "weights_info": net.weights_info, "pretrained": False,
               "calibration": TemperatureScaling(2.0).to_dict(),
               "threshold": {"format": 1, "scale": "calibrated probability", "default": "youden",
                             "value": THRESHOLD, "points": {"youden": THRESHOLD}}}
    payload.update(extra)
    return save_checkpoint(path, {k: v for k, v in payload.items() if v is not None})
