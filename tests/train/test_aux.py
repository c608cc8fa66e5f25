"""Auxiliary-finding heads: masked loss, targets, model heads, checkpoint round trip."""
import numpy as np
import pytest
import torch

from helpers.checkpoints import checkpoint_of
from helpers.manifest import row
from fibrosis.model.net import build_model, set_aux_heads
from fibrosis.train.aux import aux_pos_weight, aux_targets, choose_aux, masked_bce

NAN = float("nan")


def test_masked_bce_is_the_mean_over_labelled_entries_and_ignores_missing_ones_exactly():
    z = torch.tensor([[0.0, 2.0], [1.0, -1.0]], requires_grad=True)
    t = torch.tensor([[1.0, NAN], [0.0, 1.0]])
    pw = torch.tensor([2.0, 3.0])
    loss = masked_bce(z, t, pw)
    # By hand: 2*log(1+e^0), log(1+e^1), 3*log(1+e^1) over the 3 labelled entries.
    expected = (2 * np.log(2) + np.log1p(np.e) + 3 * np.log1p(np.e)) / 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert z.grad[0, 1] == 0.0  # the missing entry: exactly no gradient
    assert (z.grad[[0, 1, 1], [0, 0, 1]] != 0).all()
    assert torch.isfinite(z.grad).all()


def test_masked_bce_of_an_all_missing_batch_is_zero_not_nan():
    z = torch.zeros(3, 2, requires_grad=True)
    loss = masked_bce(z, torch.full((3, 2), NAN), torch.ones(2))
    loss.backward()
    assert float(loss.detach()) == 0.0 and (z.grad == 0).all()


ROWS = [row(path="a", aux_labels="Effusion=1|Mass=0"), row(path="b", aux_labels="Effusion=0"),
        row(path="c", aux_labels=""), row(path="d", aux_labels="Effusion=1|Hernia=1|Mass=0"),
        row(path="e")]  # a manifest from before aux_labels existed


def test_targets_keep_missing_as_nan_never_negative():
    y = aux_targets(ROWS, [0, 1, 2, 3, 4], ["Effusion", "Mass"])
    np.testing.assert_array_equal(y, [[1, 0], [0, NAN], [NAN, NAN], [1, 0], [NAN, NAN]])
    np.testing.assert_allclose(aux_pos_weight(y), [0.5, 1.0])  # Mass: no positive -> plain BCE


def test_choose_aux_needs_positives_and_a_negative():
    names, dropped = choose_aux(ROWS, range(5), min_positives=2)
    assert names == ("Effusion",)
    assert set(dropped) == {"Hernia", "Mass"} and "0 positive" in dropped["Mass"]


def test_aux_heads_leave_the_fibrosis_output_unchanged():
    torch.manual_seed(0)
    model = build_model("resnet18", "none", input_size=32).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        set_aux_heads(model, ["Effusion", "Mass"])
        model.eval()
        after, both = model(x), model.forward_all(x)
    assert after.shape == (3, 1) and both.shape == (3, 3)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(both[:, :1], before)
    assert (both[:, 1:] == 0).all()  # zero-initialised: no kick to the backbone at step one
    with pytest.raises(ValueError, match="distinct"):
        set_aux_heads(model, ["A", "A"])


def test_checkpoint_with_aux_heads_round_trips(tmp_path):
    from fibrosis.model.checkpoint import AuxRecord, load_model, save_checkpoint
    from fibrosis.config import load_config

    torch.manual_seed(0)
    model = set_aux_heads(build_model("resnet18", "none", input_size=32), ["Effusion", "Mass"])
    with torch.no_grad():
        model.aux_head[-1].weight.normal_()
    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.input_size=32"])
    path = save_checkpoint(tmp_path / "a.pt", checkpoint_of(model, cfg, manifest_hash="x",
                                                          aux=AuxRecord(["Effusion", "Mass"], 0.5, [1.0, 1.0], {}, 2)))
    loaded, ckpt = load_model(path)
    assert ckpt.aux_names == ("Effusion", "Mass") and loaded.aux_names == ("Effusion", "Mass")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_all(x), model.eval().forward_all(x))


@pytest.fixture(scope="module")
def aux_cache(tmp_path_factory):
    from fibrosis.data.synthetic import make_synthetic_cache

    return make_synthetic_cache(tmp_path_factory.mktemp("cache") / "c", 48, 32, pos_frac=0.4,
                                splits={"train": 0.5, "val": 0.25, "test": 0.25}, seed=3, aux=True)


AUX_TRAIN = ["model.arch=resnet18", "model.weights=none", "model.input_size=32", "train.num_workers=0",
             "train.batch_size=8", "train.head_epochs=1", "train.finetune_epochs=1", "train.aux_weight=0.5",
             "train.aux_min_positives=2", "train.channels_last=false"]


@pytest.fixture(scope="module")
def aux_run(aux_cache, tmp_path_factory):
    from fibrosis.config import load_config
    from fibrosis.train.loop import train

    run = tmp_path_factory.mktemp("run") / "run"
    train(load_config(None, AUX_TRAIN), aux_cache, run, device="cpu")
    return run


@pytest.mark.slow
def test_training_with_aux_heads_records_them_and_keeps_one_fibrosis_output(aux_run, aux_cache):
    from fibrosis.config import config_from_dict, config_to_dict, load_config
    from fibrosis.model.checkpoint import load_checkpoint, load_model
    from fibrosis.train.loop import train

    ckpt = load_checkpoint(aux_run / "best.pt")
    assert ckpt.aux and ckpt.aux.names == ["Noise", "Stripes"] and ckpt.aux.weight == 0.5
    assert len(ckpt.aux.pos_weight) == 2
    model, _ = load_model(aux_run / "best.pt")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 1) and model.forward_all(x).shape == (2, 3)
        assert model.aux_head[-1].weight.abs().sum() > 0  # the heads trained (they start at zero)
    # Resume refuses a changed auxiliary weight like any other training key.
    d = config_to_dict(load_config(None, AUX_TRAIN))
    d["train"]["aux_weight"] = 1.0
    with pytest.raises(ValueError, match="aux_weight"):
        train(config_from_dict(d), aux_cache, aux_run, resume=True, device="cpu")


@pytest.mark.slow
def test_aux_checkpoint_round_trips_through_evaluate_gradcam_and_every_engine(aux_run, aux_cache, tmp_path,
                                                                              monkeypatch):
    import csv
    import json
    import shutil

    from helpers.dicom_factory import chest_phantom, make_png
    from fibrosis.evaluate.run import evaluate_run
    from fibrosis.model.engine import onnxruntime_available
    from fibrosis.report.build import write_report
    from fibrosis.score.run import score

    run = tmp_path / "run"
    shutil.copytree(aux_run, run)
    metrics = json.loads(evaluate_run(run, aux_cache, device="cpu").read_text())
    assert metrics["run"]["aux"]["names"] == ["Noise", "Stripes"]
    assert metrics["gradcam"]["layer"]  # Grad-CAM of the fibrosis output, aux heads present
    html = (write_report(run, tmp_path / "report") / "report.html").read_text()
    assert "Auxiliary heads" in html and "Noise, Stripes" in html

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k in range(3):
        make_png(inputs / f"x{k}.png", (chest_phantom(300, 300, seed=k) * 255).astype(np.uint8))
    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    engines = ["eager", "channels_last"] + (["onnx"] if onnxruntime_available() else [])
    got = {}
    for engine in engines:
        out = tmp_path / f"{engine}.csv"
        summary = score(run, inputs, out, engine=engine, progress=False, device="cpu", workers=1,
                        gradcam_dir=tmp_path / "cam", aux=engine == "eager")
        assert summary.ok() and summary.counts["ok"] == 3
        rows = list(csv.DictReader(open(out)))
        assert not any(k.startswith("p_") for k in rows[0])  # scores.csv: fibrosis only
        got[engine] = [float(r["logit_uncalibrated"]) for r in rows]
    for engine in engines[1:]:
        np.testing.assert_allclose(got[engine], got["eager"], atol=1e-3)
    aux_rows = list(csv.DictReader(open(tmp_path / "eager.aux.csv")))
    assert [r["path"] for r in aux_rows] == sorted(r["path"] for r in aux_rows) and len(aux_rows) == 3
    assert all(0 < float(r["p_Noise"]) < 1 and 0 < float(r["p_Stripes"]) < 1 for r in aux_rows)
    assert not (tmp_path / "channels_last.aux.csv").exists()  # not asked: ignored


def test_score_aux_on_a_model_without_aux_heads_is_refused(tmp_path):
    from fibrosis.config import load_config
    from fibrosis.model.checkpoint import save_checkpoint
    from fibrosis.score.run import score

    model = build_model("resnet18", "none", input_size=32)
    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.input_size=32"])
    save_checkpoint(tmp_path / "m.pt", checkpoint_of(model, cfg, manifest_hash="x"))
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="no auxiliary heads"):
        score(tmp_path / "m.pt", tmp_path / "in", tmp_path / "s.csv", aux=True, progress=False, device="cpu")


@pytest.mark.slow
def test_tune_aux_arm_reports_aux_oof_aucs_and_packages_the_heads(aux_cache, tmp_path):
    from fibrosis.pipeline.tune import run_tune
    from fibrosis.config import load_config
    from fibrosis.model.checkpoint import load_checkpoint, load_model

    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.input_size=32", "tune.folds=3",
                             "tune.max_epochs=2", "tune.probe_c=[0.01, 1.0]", "tune.batch_size=8",
                             "train.aux_min_positives=2", "tune.selection=best",
                             "tune.arms=[{name: last1, unfreeze: last1, lr_ratio: 10},"
                             " {name: last1-aux, unfreeze: last1, lr_ratio: 10, aux_weight: 1.0}]"])
    result = run_tune(cfg, aux_cache, tmp_path / "t", progress=False)
    arms = {a.name: a for a in result.arms}
    assert result.aux and result.aux.names == ["Noise", "Stripes"] and result.skipped_arms == {}
    assert arms["last1"].aux_auc == {} and set(arms["last1-aux"].aux_auc) == {"Noise", "Stripes"}
    assert arms["last1-aux"].score.vs_base is not None and arms["last1"].score.vs_base is None
    assert arms["last1-aux"].base == "last1" and arms["last1-aux"].extras == 1
    # The two arms differ only by the auxiliary loss: their fibrosis OOF logits differ.
    assert arms["last1"].score.auc != arms["last1-aux"].score.auc or arms["last1"].epoch != arms["last1-aux"].epoch
    # Package the aux arm whatever was chosen: its heads and their OOF AUCs travel in best.pt.
    from fibrosis.train.tune.cv import cross_validate
    from fibrosis.train.tune.package import package

    cv = cross_validate(cfg, aux_cache, tmp_path / "t", progress=False)  # all units done: reads arm.json
    path = package(cfg, aux_cache, tmp_path / "t", cv, "last1-aux")
    ckpt = load_checkpoint(path)
    assert ckpt.aux and ckpt.aux.names == ["Noise", "Stripes"] and ckpt.aux.oof_auc == arms["last1-aux"].aux_auc
    assert ckpt.config["train"]["aux_weight"] == 1.0
    model, _ = load_model(path)
    assert model.aux_names == ("Noise", "Stripes") and len(model.members) == 3


def test_tune_skips_aux_arms_with_a_reason_when_the_cache_has_no_auxiliary_labels(tmp_path):
    from fibrosis.config import load_config
    from fibrosis.data.synthetic import make_synthetic_cache
    from fibrosis.train import tune as T

    cache = make_synthetic_cache(tmp_path / "c", 24, 32, pos_frac=0.5, seed=1)  # no aux_labels
    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.input_size=32", "tune.folds=2",
                             "tune.arms=[{name: last1, unfreeze: last1}, {name: last1-aux, unfreeze: last1,"
                             " aux_weight: 1.0}]"])
    ctx, _, arms, _ = T.setup(cfg, cache, tmp_path / "t")
    assert [a.name for a in arms] == ["last1"]
    assert "no auxiliary finding" in ctx.skipped["last1-aux"] and ctx.aux_summary() == {}


def test_report_lists_the_auxiliary_findings_and_skipped_arms():
    from fibrosis.evaluate.tune_record import AuxSummary
    from fibrosis.report.sections.selection import tune_aux_blocks
    from helpers.records import judged_arms, tune_arm, tune_result

    a, a_aux = judged_arms([{"name": "a", "depth": 1, "lr_ratio": 10.0}, {"name": "a-aux", "depth": 1, "lr_ratio": 10.0}])
    t = tune_result(arms=[tune_arm(a), tune_arm(a_aux, aux_auc={"Mass": 0.71})],
                    aux=AuxSummary(["Mass"], {"Hernia": "2 positive"}, {"Mass": [12, 300]}),
                    skipped_arms={"b-aux": "no labels"})
    blocks = tune_aux_blocks(t)
    table = next(b for b in blocks if b["type"] == "table")
    assert table["rows"] == [["Mass", "12 / 300", "0.710"]] and table["header"][-1] == "OOF AUC, a-aux"
    text = " ".join(b.get("text", "") for b in blocks)
    assert "'b-aux' was not run: no labels" in text and "Hernia: 2 positive" in text
    assert tune_aux_blocks(tune_result(arms=[tune_arm(a)])) == []
