import dataclasses
import random

import numpy as np
import pytest
import torch
from torch import nn

from fibrosis.model.checkpoint import (Checkpoint, CheckpointError, Training, load_checkpoint, load_model,
                                       rng_state, save_checkpoint, set_rng_state, update_checkpoint)
from fibrosis.config import Config, ModelConfig, config_to_dict
from fibrosis.model.calibration import CalibrationRecord, FittedOn
from fibrosis.model.net import build_model
from fibrosis.model.threshold import FitData, OperatingPointSpec, ThresholdRecord


@pytest.fixture
def ckpt_path(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", "none", input_size=32, dropout=0.1)
    cfg = Config(model=ModelConfig(arch="resnet18", weights="none", input_size=32, dropout=0.1))
    ckpt = Checkpoint(weights=model.state_dict(), config=config_to_dict(cfg), arch="resnet18",
                      preprocessing=model.preprocessing, weights_info=model.weights_info,
                      pretrained=False, manifest_hash="ab" * 32)
    path = save_checkpoint(tmp_path / "run" / "best.pt", ckpt)
    return path, model


def test_roundtrip_and_no_temp_files(ckpt_path):
    path, model = ckpt_path
    ckpt = load_checkpoint(path)
    assert ckpt.manifest_hash == "ab" * 32 and ckpt.arch == "resnet18" and ckpt.calibration is None
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "fibrosis-checkpoint" and raw["format_version"] == 1
    # unset optional fields stay out of the file; the rest is written under its own key
    assert "calibration" not in raw and "run" not in raw and raw["arch"] == "resnet18"
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]


def _raw(path, **change):
    data = torch.load(path, weights_only=True)
    data.update(change)
    torch.save(data, path)


def test_a_newer_schema_or_an_unknown_key_is_refused_in_one_line(ckpt_path):
    path, _ = ckpt_path
    _raw(path, format_version=2)
    with pytest.raises(CheckpointError, match=r"best.pt: schema 2; this version of fibrosis reads schema 1; "
                                              r"it was written by a newer version"):
        load_checkpoint(path)
    _raw(path, format_version=1, surprise=1)
    with pytest.raises(CheckpointError, match=r"best.pt: unknown checkpoint key\(s\) \['surprise'\]"):
        load_checkpoint(path)


# The plain data a `fibrosis tune` checkpoint has always carried for these entries, key order included.
TUNE_ENTRIES = {
    "tta": {"format": 1, "combine": "mean logit", "padding": "black (normalised intensity 0)",
            "variants": [{"name": "identity", "rotate_deg": 0.0, "scale": 1.0},
                         {"name": "rot+5", "rotate_deg": 5.0, "scale": 1.0}]},
    "aux": {"names": ["Mass"], "weight": 0.5, "pos_weight": [3.0], "dropped": {"Hernia": "1 positive"},
            "min_positives": 2, "oof_auc": {"Mass": 0.7}},
    "ensemble": {"format": 1, "members": 3, "combine": "mean logit", "arm": "last1", "epoch": 2, "folds": 3,
                 "repeats": 1},
    "tune": {"arm": "last1", "epoch": 2, "final": "ensemble"},
    "tune_selection": {"chosen": "last1", "reason": "Chose 'last1'.", "selection_adjusted_auc": 0.71},
}


def test_tune_entries_read_into_records_and_write_the_same_plain_data(ckpt_path):
    path, _ = ckpt_path
    _raw(path, **TUNE_ENTRIES)
    ckpt = load_checkpoint(path)
    assert ckpt.ensemble and ckpt.ensemble.members == 3 and ckpt.tune and ckpt.tune.final == "ensemble"
    assert ckpt.aux_names == ("Mass",) and ckpt.tta and ckpt.tta.variants[1].rotate_deg == 5.0
    assert ckpt.tune_selection and ckpt.tune_selection.selection_adjusted_auc == 0.71
    save_checkpoint(path, ckpt)
    raw = torch.load(path, weights_only=True)
    assert {k: raw[k] for k in TUNE_ENTRIES} == TUNE_ENTRIES
    assert [list(raw[k]) for k in TUNE_ENTRIES] == [list(v) for v in TUNE_ENTRIES.values()]
    again = load_checkpoint(path)
    assert [getattr(again, k) for k in TUNE_ENTRIES] == [getattr(ckpt, k) for k in TUNE_ENTRIES]
    _raw(path, ensemble={**TUNE_ENTRIES["ensemble"], "members": None, "extra": 1})
    with pytest.raises(CheckpointError, match=r"best.pt: ensemble has unknown entries \['extra'\]"):
        load_checkpoint(path)


def test_an_older_file_migrates_explicitly(ckpt_path):
    """Files from before ``arch`` had its own key take it from the config; a top-level
    ``history`` (now inside the training state) is dropped."""
    path, _ = ckpt_path
    data = torch.load(path, weights_only=True)
    del data["arch"]
    data["history"] = [{"epoch": 1}]
    torch.save(data, path)
    ckpt = load_checkpoint(path)
    assert ckpt.arch == "resnet18" and ckpt.history == []


def test_a_training_checkpoint_round_trips_its_resume_state(ckpt_path, tmp_path):
    path, _ = ckpt_path
    training = Training(optimizer={"state": {}}, scheduler={"last_epoch": 3}, stage=1, stage_name="finetune",
                        epoch=4, run={"stage": 1, "history": [{"epoch": 4, "val_auc": 0.7}]}, rng=rng_state(),
                        rng_per_rank=[rng_state()])
    ckpt = dataclasses.replace(load_checkpoint(path), training=training, best_val_auc=0.7, best_epoch=4)
    back = load_checkpoint(save_checkpoint(tmp_path / "last.pt", ckpt))
    assert back.training is not None and back.training.stage_name == "finetune" and back.history == [{"epoch": 4, "val_auc": 0.7}]
    assert back.best_val_auc == 0.7 and set(back.to_payload()) == set(ckpt.to_payload())
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw["stage"] == 1 and raw["run"]["history"][0]["epoch"] == 4  # flat on disk, as train wrote it
    del raw["rng"]
    torch.save(raw, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last.pt: a training checkpoint without \['rng'\]"):
        load_checkpoint(tmp_path / "last.pt")


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
    path = tmp_path / "old.pt"
    torch.save({"model": old.state_dict(), "config": config_to_dict(cfg), "preprocessing": record,
                "weights_info": old.weights_info, "pretrained": False, "manifest_hash": "ab" * 32,
                "format": "fibrosis-checkpoint", "format_version": 1}, path)
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
    calibration = CalibrationRecord("temperature", {"temperature": 1.7}, FittedOn("val", 10, 4))
    threshold = ThresholdRecord.of([OperatingPointSpec("sens90", "sensitivity>=0.9", 0.3, 0.9, 0.5)], "temperature",
                                   FitData("val", 10, 4, 8))
    update_checkpoint(path, calibration=calibration, threshold=threshold)
    ckpt = load_checkpoint(path)
    assert ckpt.calibration == calibration and ckpt.threshold == threshold
    with pytest.raises(CheckpointError, match=r"refusing to overwrite \['weights'\]; an update may set only"):
        update_checkpoint(path, weights={})
    with pytest.raises(CheckpointError, match="not JSON-able"):
        update_checkpoint(path, split_keys={"train": {"patients": torch.ones(1)}})
    with pytest.raises(CheckpointError, match="field 'tune_selection' is a dict; expected a TuneSelection"):
        update_checkpoint(path, tune_selection={"chosen": "x"})
    with pytest.raises(CheckpointError, match="field 'threshold' is a dict; expected a ThresholdRecord"):
        update_checkpoint(path, threshold=threshold.to_json())


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.save({"rng": rng_state()}, tmp_path / "r.pt")
    expect = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1])
    assert expect[2:] == got[2:]
