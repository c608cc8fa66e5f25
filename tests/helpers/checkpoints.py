"""A small scored checkpoint (random-init resnet18 at 32 px, temperature 2, threshold 0.47) that
`score`, `monitor` and the DICOM writers take like an evaluated run."""
from __future__ import annotations

from pathlib import Path

import torch

from fibrosis.config import Config, IngestConfig, ModelConfig, ScoreConfig, config_to_dict
from fibrosis.model.calibration import TemperatureScaling
from fibrosis.model.checkpoint import Checkpoint, save_checkpoint
from fibrosis.model.net import build_model
from fibrosis.model.threshold import SCALE, ThresholdRecord

INGEST = IngestConfig(image_size=64, min_side=1)
THRESHOLD = 0.47
PATIENT_ID, PATIENT_NAME = "PAT-SECRET-4711", "Doe^Jane"


def checkpoint_of(net, cfg: Config, **fields) -> Checkpoint:
    """The record `train` would write for ``net`` under ``cfg`` (no training state), with ``fields``."""
    return Checkpoint(weights=net.state_dict(), config=config_to_dict(cfg), arch=cfg.model.arch,
                      preprocessing=net.preprocessing, weights_info=dict(net.weights_info),
                      pretrained=bool(net.pretrained), **fields)


def youden_threshold(value: float) -> ThresholdRecord:
    """A hand-made threshold record: one Youden point, no fit-split details."""
    return ThresholdRecord(SCALE, "youden", value, points={"youden": value})


def make_checkpoint(path: Path, ingest: IngestConfig = INGEST, **extra) -> Path:
    torch.manual_seed(0)
    net = build_model("resnet18", "none", input_size=32)
    cfg = Config(ingest=ingest, model=ModelConfig(arch="resnet18", weights="none", input_size=32),
                 score=ScoreConfig(batch_size=3, workers=1, engine="eager"))
    fields = {"calibration": TemperatureScaling(2.0).record(),
              "threshold": youden_threshold(THRESHOLD), **extra}
    return save_checkpoint(path, checkpoint_of(net, cfg, **fields))
