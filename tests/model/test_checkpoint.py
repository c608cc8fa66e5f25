import random

import numpy as np
import pytest
import torch
from torch import nn

from fibrosis.model.checkpoint import (CheckpointError, load_checkpoint, load_model, rng_state,
                                 save_checkpoint, set_rng_state, update_checkpoint)
from fibrosis.config import Config, ModelConfig, config_to_dict
from fibrosis.model.net import build_model


@pytest.fixture
def ckpt_path(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", "none", input_size=32, dropout=0.1)
    cfg = Config(model=ModelConfig(arch="resnet18", weights="none", input_size=32, dropout=0.1))
    payload = {"model": model.state_dict(), "config": config_to_dict(cfg),
               "preprocessing": model.preprocessing, "weights_info": model.weights_info,
               "pretrained": False, "manifest_hash": "ab" * 32, "rng": rng_state()}
    path = save_checkpoint(tmp_path / "run" / "best.pt", payload)
    return path, model


def test_roundtrip_and_no_temp_files(ckpt_path):
    path, model = ckpt_path
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "fibrosis-checkpoint" and ckpt["manifest_hash"] == "ab" * 32
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]


def test_load_model_reproduces_outputs(ckpt_path):
    path, model = ckpt_path
    loaded, ckpt = load_model(path)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert not loaded.training and loaded.preprocessing == model.preprocessing
    assert loaded.pretrained is False


def test_a_checkpoint_written_with_the_summed_fold_loads_and_scores_as_it_did(tmp_path):
    """Before the exact stem, checkpoints held a 1-channel summed stem and a prose preprocessing
    record: they are rebuilt with that stem (not today's) and give the same logits."""
    torch.manual_seed(0)
    old = build_model("resnet18", "none", input_size=32, gray_fold="summed").eval()
    record = {**old.preprocessing.to_dict(),
              "gray_fold": "first conv weights summed over RGB; gray replicated x3 == folded",
              "resize": "cv2.INTER_AREA from the cache image to input_size x input_size"}
    cfg = Config(model=ModelConfig(arch="resnet18", weights="none", input_size=32))
    path = save_checkpoint(tmp_path / "old.pt", {"model": old.state_dict(), "config": config_to_dict(cfg),
                                                 "preprocessing": record, "weights_info": old.weights_info,
                                                 "pretrained": False, "manifest_hash": "ab" * 32})
    assert old.state_dict()["backbone.conv1.weight"].shape[1] == 1
    loaded, _ = load_model(path)
    assert loaded.preprocessing.gray_fold == "summed" and loaded.preprocessing.mean == old.preprocessing.mean
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), old(x))


def test_refuses_files_that_are_not_ours(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="format=None"):
        load_checkpoint(plain)
    code = tmp_path / "code.pt"
    torch.save({"format": "fibrosis-checkpoint", "format_version": 1, "m": nn.ReLU()}, code)
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(code)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_update_adds_calibration_and_threshold(ckpt_path):
    path, _ = ckpt_path
    update_checkpoint(path, calibration={"method": "temperature", "T": 1.7},
                      threshold={"sens90": {"logit": -0.3, "sensitivity": 0.9}})
    ckpt = load_checkpoint(path)
    assert ckpt["calibration"]["T"] == 1.7 and ckpt["threshold"]["sens90"]["logit"] == -0.3
    with pytest.raises(CheckpointError, match="protected"):
        update_checkpoint(path, model={})
    with pytest.raises(CheckpointError, match="not JSON-able"):
        update_checkpoint(path, calibration={"t": torch.ones(1)})


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    expect = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1])
    assert expect[2:] == got[2:]
