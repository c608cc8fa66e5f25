"""Test-time augmentation: no flips, identity is exact, mean of the views by hand, geometry and
padding, the checkpoint record, every engine, Grad-CAM, and `evaluate` / `score` end to end
(random-init resnet18 at 32 px, CPU)."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from helpers.checkpoints import checkpoint_of

from fibrosis.config import Config, ModelConfig, config_to_dict, load_config
from fibrosis.model import engine as E
from fibrosis.model import tta as T
from fibrosis.model.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from fibrosis.model.ensemble import EnsembleNet
from fibrosis.model.net import build_model, build_model_from_config


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread only waits
    yield
    torch.set_num_threads(before)


def _net(tta=T.DEFAULT_VARIANTS, size: int = 32):
    torch.manual_seed(0)
    return build_model("resnet18", "none", input_size=size).set_tta(tta).eval()


def _asymmetric(n: int = 3, size: int = 32) -> torch.Tensor:
    """Smooth images brighter on the left than on the right (a 'heart'), normalised."""
    pre = build_model("resnet18", "none", input_size=size).preprocessing
    return torch.from_numpy(E.verification_batch(size, pre, n=n)) + torch.linspace(1.0, -1.0, size)


# ------------------------------------------------------------------ the variants


def test_no_variant_is_a_flip_and_all_are_small():
    for v in T.DEFAULT_VARIANTS:
        m = np.asarray(v.theta())[:, :2]
        assert np.linalg.det(m) > 0, v  # orientation preserved: not a mirror image
        assert abs(v.rotate_deg) <= 7 and 0.9 <= v.scale <= 1.1  # inside train.augment's range
    assert sum(v.is_identity for v in T.DEFAULT_VARIANTS) == 1
    assert 4 <= len(T.DEFAULT_VARIANTS) <= 5
    with pytest.raises(ValueError, match=r"scale=-1.0; allowed: 0.5 <= scale <= 2"):
        T.check_variants([T.Variant("mirror", scale=-1.0)])
    with pytest.raises(ValueError, match="repeats"):
        T.check_variants([T.Variant("a"), T.Variant("a", rotate_deg=1.0)])


def test_a_mirrored_image_scores_differently():
    net = _net()
    x = _asymmetric()
    with torch.no_grad():
        z, z_mirror = net(x), net(torch.flip(x, dims=[-1]))
    assert (z - z_mirror).abs().min() > 1e-4  # TTA did not average the mirror image in


def test_identity_only_tta_is_exactly_the_plain_model():
    x = _asymmetric()
    with torch.no_grad():
        plain = _net(None)(x)
        ident = _net((T.Variant("identity"),))(x)
    assert torch.equal(plain, ident)


def test_tta_logit_is_the_mean_of_the_views_computed_one_by_one():
    net = _net()
    x = _asymmetric(4)
    with torch.no_grad():
        got = net(x)
        views = [net.forward_plain(T.TTA([v], T.black(net.preprocessing)).warp(x)) for v in T.DEFAULT_VARIANTS]
        by_hand = torch.stack(views).mean(0)
    torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, views[0])  # and the views do differ from the identity
    net.train()  # training: one plain pass, the loop's own augmentation does the rest
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.forward_plain(x))


def test_warp_geometry_rotation_direction_scale_and_black_padding():
    size = 33  # odd: the centre is a pixel
    c = size // 2
    x = torch.zeros(1, 1, size, size)
    x[0, 0, c, c + 8] = 1.0  # a dot right of the centre
    with torch.no_grad():
        ccw = T.TTA([T.Variant("r", rotate_deg=30.0)], 0.0).warp(x)[0, 0]
    # "counter-clockwise as displayed": the dot moves up (smaller row), still right of the centre.
    r, col = np.unravel_index(int(ccw.argmax()), ccw.shape)
    assert (r, col) == (c - 4, c + 7)  # 8 px at 30 deg: (-8 sin 30, 8 cos 30) = (-4, 6.9)
    # scale > 1 zooms in: the dot moves away from the centre (14 px -> 14 * 1.07)
    img = torch.zeros(1, 1, size, size)
    img[0, 0, c, c + 14] = 1.0
    with torch.no_grad():
        zoom = T.TTA([T.Variant("s", scale=1.07)], 0.0).warp(img)[0, 0, c]
    centroid = float((zoom * torch.arange(size)).sum() / zoom.sum())
    assert centroid - c == pytest.approx(14 * 1.07, abs=0.05)
    # zooming out shows what lies outside the image: black (the normalised value of 0), not 0
    net = _net()
    black = T.black(net.preprocessing)
    flat = torch.full((1, 1, 32, 32), 0.7)
    with torch.no_grad():
        out = T.TTA([T.Variant("s", scale=0.9)], black).warp(flat)[0, 0]
    assert float(out[0, 0]) == pytest.approx(black, abs=1e-6)
    assert float(out[16, 16]) == pytest.approx(0.7, abs=1e-6)


# ------------------------------------------------------------------ checkpoint, ensemble, engines, CAM


def _payload(net, tta_on: bool, **extra):
    cfg = Config(model=ModelConfig(arch="resnet18", weights="none", input_size=32, tta=tta_on))
    return checkpoint_of(net, cfg, **extra)


def test_checkpoint_round_trip_keeps_the_recorded_variants(tmp_path):
    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.input_size=32", "model.tta=true"])
    torch.manual_seed(0)
    net = build_model_from_config(cfg.model).eval()
    assert T.variants_of(net) == T.DEFAULT_VARIANTS
    custom = (T.Variant("identity"), T.Variant("tilt", rotate_deg=3.0))  # e.g. yesterday's defaults
    net.set_tta(custom)
    path = save_checkpoint(tmp_path / "best.pt", _payload(net, True, tta=T.TTARecord(custom)))
    model, ckpt = load_model(path)
    assert T.variants_of(model) == custom and ckpt.tta and ckpt.tta.variants[1].rotate_deg == 3.0
    x = _asymmetric()
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))
    # A checkpoint from before TTA existed (no field, no config key) loads with TTA off.
    old = _payload(net, False)
    old.config["model"].pop("tta")
    model, _ = load_model(save_checkpoint(tmp_path / "old.pt", old))
    assert model.tta is None
    # model.tta on but no variants recorded: refused rather than guessing today's defaults.
    save_checkpoint(tmp_path / "bad.pt", _payload(net, True))
    with pytest.raises(CheckpointError, match="no 'tta' variants recorded"):
        load_model(tmp_path / "bad.pt")
    bad = T.TTARecord(custom).to_json()
    bad["variants"][0]["shear"] = 0.1
    raw = torch.load(save_checkpoint(tmp_path / "bad2.pt", _payload(net, True)), weights_only=True)
    torch.save({**raw, "tta": bad}, tmp_path / "bad2.pt")
    with pytest.raises(ValueError, match=r"tta.variants\[0\].*expected exactly the keys"):
        load_model(tmp_path / "bad2.pt")


def test_ensemble_applies_tta_once_for_all_members():
    torch.manual_seed(0)
    members = [build_model("resnet18", "none", input_size=32) for _ in range(2)]
    ens = EnsembleNet(members).set_tta(T.DEFAULT_VARIANTS).eval()
    x = _asymmetric()
    with torch.no_grad():
        by_hand = torch.stack([m.set_tta(T.DEFAULT_VARIANTS)(x) for m in members]).mean(0)
        torch.testing.assert_close(ens(x), by_hand, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="members carry TTA"):
        EnsembleNet(members)


def test_an_ensemble_without_set_tta_is_the_plain_member_mean():
    """Its ``tta`` starts as None (it was only ever set by set_tta): forward works at once."""
    torch.manual_seed(0)
    members = [build_model("resnet18", "none", input_size=32).eval() for _ in range(2)]
    ens = EnsembleNet(members).eval()
    x = _asymmetric()
    with torch.no_grad():
        torch.testing.assert_close(ens(x), torch.stack([m(x) for m in members]).mean(0))


@pytest.mark.parametrize("name", ["channels_last", "bf16", "onnx"])
def test_every_engine_agrees_with_eager_on_a_tta_model(name, tmp_path):
    if name == "onnx":
        pytest.importorskip("onnxruntime")
    net = _net()
    sample = E.verification_batch(32, net.preprocessing, n=4)
    eng, agree = E.select_engine(net, name, onnx_path=tmp_path / "m.onnx", sample=sample, threshold=0.5)
    assert eng.name == name and agree.ok, str(agree)
    with torch.no_grad():  # the reference really was the TTA model
        ref = net(torch.from_numpy(sample))[:, 0].numpy()
        plain = net.forward_plain(torch.from_numpy(sample))[:, 0].numpy()
    assert np.abs(eng(sample) - ref).max() <= E.TOLERANCES[name].logit + E.TOLERANCES[name].rtol * np.abs(ref).max()
    assert np.abs(ref - plain).max() > 10 * E.TOLERANCES["onnx"].logit  # TTA changed the logits measurably
    if name == "onnx":
        assert eng(sample[:3]).shape == (3,)  # dynamic batch through the warp


def test_gradcam_explains_the_unaugmented_view():
    from fibrosis.model.cam import compute_cams

    x = _asymmetric(2)
    with_tta = compute_cams(_net(), x.clone(), "backbone.layer4")
    without = compute_cams(_net(None), x.clone(), "backbone.layer4")
    assert with_tta.shape == (2, 32, 32)
    np.testing.assert_allclose(with_tta, without, atol=1e-5)


# ------------------------------------------------------------------ evaluate and score end to end


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    """A random-init resnet18 checkpoint with TTA over a 32 px synthetic cache (no training)."""
    from fibrosis.data.cache import manifest_hash
    from fibrosis.data.synthetic import make_synthetic_cache
    from fibrosis.io import read_csv
    from fibrosis.model.checkpoint import update_checkpoint

    root = tmp_path_factory.mktemp("tta")
    cache = make_synthetic_cache(root / "cache", n=80, size=32, pos_frac=0.3, seed=0,
                                 splits={"train": 0.5, "val": 0.25, "test": 0.25})
    net = _net()
    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.input_size=32", "model.tta=true",
                             "evaluate.bootstrap_resamples=200", "evaluate.gradcam_per_kind=1",
                             "score.engine=eager", "score.workers=1"])
    run = root / "run"
    save_checkpoint(run / "best.pt", dataclasses.replace(_payload(net, True, tta=T.TTARecord(T.DEFAULT_VARIANTS)),
                                                         config=config_to_dict(cfg), manifest_hash=manifest_hash(cache)))
    rows = read_csv(cache / "manifest.csv")
    keys = {s: {"patients": sorted({r["patient_key"] for r in rows if r["split"] == s}),
                "images": sorted({r["content_hash"] for r in rows if r["split"] == s})} for s in ("train", "val")}
    update_checkpoint(run / "best.pt", split_keys=keys)
    return run, cache, net


@pytest.mark.slow
def test_evaluate_and_score_apply_the_recorded_tta(tta_run, tmp_path, monkeypatch):
    from helpers.dicom_factory import chest_phantom, make_png
    from fibrosis.data.cache import CacheReader
    from fibrosis.evaluate.run import evaluate_run
    from fibrosis.model.inference import predict_rows, split_rows
    from fibrosis.evaluate.result import EvaluationResult
    from fibrosis.report.build import build_blocks
    from fibrosis.score.run import score

    src, cache, net = tta_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    m = json.loads(evaluate_run(run, cache, device="cpu").read_text())
    assert m["run"]["tta"]["variants"] == [dict(name=v.name, rotate_deg=v.rotate_deg, scale=v.scale)
                                           for v in T.DEFAULT_VARIANTS]
    assert m["gradcam"]["cases"]  # Grad-CAM ran on the TTA model
    # evaluate's logits are the TTA logits (predict_rows through forward), not the plain ones
    rows, idx = split_rows(cache, "test")
    got = [float(r["logit"]) for r in csv.DictReader(open(run / "eval" / "test" / "predictions.csv"))]
    ref = predict_rows(net, CacheReader(cache, rows), idx, 64, "cpu")
    np.testing.assert_allclose(got, ref, atol=1e-5)
    text = json.dumps(build_blocks(EvaluationResult.read(run / "eval" / "test" / "metrics.json"), set()))
    assert "mean logit over 5 views" in text and "rot-5 (rotate -5 deg)" in text and "never mirrored" in text

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k in range(3):
        make_png(inputs / f"x{k}.png", (chest_phantom(300, 300, seed=k) * 255).astype(np.uint8))
    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    engines = ["eager", "channels_last"] + (["onnx"] if E.onnxruntime_available() else [])
    scored = {}
    for engine in engines:
        summary = score(run, inputs, tmp_path / f"{engine}.csv", engine=engine, progress=False, device="cpu",
                        gradcam_dir=tmp_path / f"cam-{engine}", workers=1)
        assert summary.ok() and summary.counts["ok"] == 3
        scored[engine] = [float(r["logit_uncalibrated"]) for r in csv.DictReader(open(tmp_path / f"{engine}.csv"))]
        assert len(list((tmp_path / f"cam-{engine}").glob("*.png"))) == 3
    for engine in engines[1:]:
        np.testing.assert_allclose(scored[engine], scored["eager"], atol=1e-3)
    # and the scored logit is the TTA logit: switching TTA off in the checkpoint changes it
    plain = tmp_path / "plain"
    shutil.copytree(run, plain)
    ckpt = load_checkpoint(plain / "best.pt")
    ckpt.config["model"]["tta"] = False
    save_checkpoint(plain / "best.pt", dataclasses.replace(ckpt, tta=None))
    score(plain, inputs, tmp_path / "plain.csv", engine="eager", progress=False, device="cpu", workers=1)
    off = [float(r["logit_uncalibrated"]) for r in csv.DictReader(open(tmp_path / "plain.csv"))]
    assert np.abs(np.array(off) - np.array(scored["eager"])).max() > 1e-3


def test_head_of_mean_tta_features_is_the_tta_logit(tta_run):
    """Training's cached-feature validation (extract_features(tta=True)) = what predict_rows scores."""
    from fibrosis.data.cache import CacheReader
    from fibrosis.model.inference import extract_features, predict_rows, split_rows

    _, cache, net = tta_run
    rows, idx = split_rows(cache, "val")
    reader = CacheReader(cache, rows)
    feats = extract_features(net, reader, idx, 16, "cpu", tta=True)
    with torch.no_grad():
        from_feats = net.forward_head(feats)[:, 0].numpy()
    np.testing.assert_allclose(from_feats, predict_rows(net, reader, idx, 16, "cpu"), atol=1e-5)
    plain = extract_features(net, reader, idx, 16, "cpu")  # default: the image as given
    assert not torch.allclose(plain, feats)


@pytest.mark.slow
def test_training_with_model_tta_records_the_variants(tmp_path):
    """`fibrosis train` with model.tta: validation runs with TTA, best.pt records the variants."""
    from fibrosis.config import config_from_dict
    from fibrosis.data.synthetic import make_synthetic_cache
    from fibrosis.train.loop import train

    cache = make_synthetic_cache(tmp_path / "cache", n=40, size=32, pos_frac=0.3, seed=0)
    cfg = config_from_dict({
        "model": {"arch": "resnet18", "weights": "none", "input_size": 32, "tta": True},
        "train": {"preset": None, "stages": [{"name": "head", "epochs": 1, "lr": 0.01}], "batch_size": 8,
                  "num_workers": 0, "amp": False, "channels_last": False}})
    train(cfg, cache, tmp_path / "run", device="cpu")
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt.config["model"]["tta"] is True and ckpt.tta and ckpt.tta.variants == T.DEFAULT_VARIANTS
    model, _ = load_model(tmp_path / "run" / "best.pt")
    assert T.variants_of(model) == T.DEFAULT_VARIANTS
