"""`fibrosis tune`: fold integrity, the one-SE rule, the linear probe, the frozen-prefix split,
resume, and the ensemble checkpoint through `evaluate` and `score` (resnet18 at 32 px, CPU)."""
from __future__ import annotations

import csv
import json
import shutil
import warnings
from html import unescape

import numpy as np
import pytest
import torch

from helpers.manifest import row
from fibrosis.config import ConfigError, load_config
from fibrosis.data.manifest import ManifestRow, read_manifest
from fibrosis.data.synthetic import make_synthetic_cache
from fibrosis.evaluate.selection import first_choice, select_arm
from fibrosis.evaluate.tune_record import ArmTraits
from fibrosis.model.checkpoint import load_checkpoint, load_model
from fibrosis.model.ensemble import EnsembleNet
from fibrosis.model.net import build_model
from fibrosis.train.folds import check_folds, make_folds
from fibrosis.train.probe import fit_probe
from fibrosis.train.stages import forward_from, forward_range, last_stages, n_groups
from helpers.records import judged_arms


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread only waits (see test_train)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ folds


def _rows(n_patients: int = 40, seed: int = 0) -> list[ManifestRow]:
    """1-3 images per patient; ~25% positive patients; 20% of patients in test, some in calib."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        split = "test" if p % 5 == 0 else ("calib" if p % 11 == 3 else ("val" if p % 4 == 1 else "train"))
        label = int(p % 4 == 2 or p % 7 == 0)
        for k in range(int(rng.integers(1, 4))):
            rows.append(row(patient_key=f"p{p:03d}", label=label, split=split, content_hash=f"h{p}-{k}"))
    return rows


def test_folds_keep_patients_and_near_duplicates_together_and_never_touch_test():
    rows = _rows()
    dev_patients = sorted({r.patient_key for r in rows if r.split in ("train", "val")})
    links = [(dev_patients[0], dev_patients[1]), (dev_patients[5], dev_patients[9])]  # near-duplicates
    folds = make_folds(rows, folds=3, repeats=2, seed=0, links=links)
    assert len(folds) == 6
    for r in (0, 1):
        held = [i for f in folds if f.repeat == r for i in f.heldout]
        dev = [i for i, r in enumerate(rows) if r.split in ("train", "val")]
        assert sorted(held) == dev  # every development row held out exactly once per repeat
    for f in folds:
        assert not {rows[i].split for i in f.train + f.heldout} & {"test", "calib"}
        tr = {rows[i].patient_key for i in f.train}
        ho = {rows[i].patient_key for i in f.heldout}
        assert not tr & ho
        for a, b in links:  # a near-duplicate pair sits on one side of every fold
            assert (a in ho) == (b in ho)
        assert any(rows[i].label == 1 for i in f.heldout)
    # The two repeats deal differently.
    assert [f.heldout for f in folds[:3]] != [f.heldout for f in folds[3:]]


def test_fold_check_refuses_a_patient_on_both_sides():
    rows = _rows()
    folds = make_folds(rows, folds=3)
    f = folds[0]
    moved = f.train[0]  # put one image of a training patient into the held-out part
    other = [i for i in f.train if rows[i].patient_key == rows[moved].patient_key]
    bad = type(f)(f.repeat, f.fold, tuple(i for i in f.train if i != moved), tuple(sorted(f.heldout + (moved,))))
    if len(other) == 1:  # a one-image patient moved whole is no leak; use a patient with two images
        pytest.skip("first training patient has one image")
    with pytest.raises(RuntimeError, match="on both sides"):
        check_folds(rows, [bad] + folds[1:])


def test_too_few_positive_patients_for_the_folds_is_an_error():
    rows = [row(patient_key=f"p{i}", label=int(i < 2), split="train", content_hash=str(i)) for i in range(20)]
    with pytest.raises(ValueError, match=r"2 positive .* tune.folds=3 needs at least 3"):
        make_folds(rows, folds=3)


# ------------------------------------------------------------------ selection


ARMS = [  # name, pooled OOF AUC, DeLong SE, depth (0 = head only), lr_ratio
    {"name": "random-init", "auc": 0.60, "se": 0.06, "depth": 1000, "lr_ratio": 1.0},
    {"name": "head-only", "auc": 0.78, "se": 0.05, "depth": 0, "lr_ratio": 1.0},
    {"name": "last1-x0.1", "auc": 0.84, "se": 0.04, "depth": 1, "lr_ratio": 10.0},
    {"name": "last1-x0.01", "auc": 0.835, "se": 0.04, "depth": 1, "lr_ratio": 100.0},
    {"name": "all-x0.1", "auc": 0.86, "se": 0.03, "depth": 100, "lr_ratio": 10.0},
]


def test_one_standard_error_rule_on_hand_checkable_numbers():
    # Best: all-x0.1 at 0.86, SE 0.03 -> arms >= 0.83 qualify: last1-x0.1, last1-x0.01, all-x0.1.
    # Least unfrozen among them: depth 1; of the two, the slower backbone (lr / 100) wins.
    name, reason = first_choice(judged_arms(ARMS), "one-se")
    assert name == "last1-x0.01"
    assert "within one standard error (0.030)" in reason and "'all-x0.1' (0.860)" in reason
    # head-only (0.78) is outside 0.86 - 0.03; with a wider SE it is chosen.
    wide = [dict(a, se=0.09) if a["name"] == "all-x0.1" else a for a in ARMS]
    assert first_choice(judged_arms(wide), "one-se")[0] == "head-only"
    assert first_choice(judged_arms(ARMS), "best")[0] == first_choice(judged_arms(ARMS), "replicated")[0] == "all-x0.1"
    with pytest.raises(ValueError, match=r"tune.selection='worst'; allowed: \['replicated', 'one-se', 'best'\]"):
        first_choice(judged_arms(ARMS), "worst")
    # Alone at the top with nothing less unfrozen within one SE: the best arm itself.
    assert first_choice(judged_arms([ARMS[1], dict(ARMS[4], se=0.01)]), "one-se")[0] == "all-x0.1"


def test_select_arm_table_has_delong_ci_and_paired_tests():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(90)].astype(int)
    good = y * 1.5 + rng.normal(size=len(y))
    noise = rng.normal(size=len(y))
    arms = [ArmTraits("head-only", depth=0, lr_ratio=1.0, init="pretrained"),
            ArmTraits("random-init", depth=1000, lr_ratio=1.0, init="random")]
    sel = select_arm(y, {"head-only": good, "random-init": noise}, arms)
    assert sel.chosen == "head-only" and sel.random_control == "random-init"
    h = sel.arm("head-only").score
    assert h.ci and h.auc and h.vs_random and h.ci[0] < h.auc < h.ci[1] and h.vs_random.p < 0.01
    assert h.vs_random.difference == pytest.approx(h.auc - sel.arm("random-init").auc)
    vs_best = sel.arm("random-init").score.vs_best
    assert vs_best and vs_best.difference < 0


def test_one_se_rule_never_chooses_a_failed_arm_and_ranks_the_reference_simplest():
    ref = {"name": "reference", "auc": 0.80, "se": 0.05, "depth": 0, "lr_ratio": 1.0, "recipe": "reference"}
    probe = {"name": "head-only", "auc": 0.81, "se": 0.05, "depth": 0, "lr_ratio": 1.0, "recipe": "lp-ft"}
    # Equally unfrozen and within one SE: the plain baseline is the simpler choice.
    assert first_choice(judged_arms([probe, ref]), "one-se")[0] == "reference"
    broken = {"name": "last1", "auc": 0.99, "se": 0.01, "depth": 1, "lr_ratio": 10.0, "failed": "r0-f1: constant"}
    assert first_choice(judged_arms([probe, ref, broken]), "one-se")[0] == "reference"  # ties, not a model
    assert first_choice(judged_arms([probe, ref, broken]), "replicated")[0] == "head-only"
    with pytest.raises(ValueError, match="every arm failed"):
        first_choice(judged_arms([broken]), "replicated")


def test_select_arm_gives_a_failed_arm_no_auc():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20), np.zeros(60)].astype(int)
    arms = [ArmTraits("head-only", depth=0, lr_ratio=1.0),
            ArmTraits("dead", depth=1, lr_ratio=10.0, failed="r0-f0: constant")]
    sel = select_arm(y, {"head-only": y + rng.normal(size=80), "dead": np.zeros(80)}, arms)
    dead = sel.arm("dead").score
    assert dead.auc is None and dead.ci is None and dead.vs_best is None and sel.chosen == "head-only"


def test_constant_fold_logits_are_caught():
    from fibrosis.train.tune.results import constant_output

    assert constant_output([0.3, -1.2, 2.0]) is None
    assert constant_output([-2.0] * 5) and "constant" in constant_output([-2.0] * 5)
    # float32 noise around one value: a spread of 1e-6 on logits of size 2 is rounding, not ranking
    assert constant_output(np.float32(-2.0) + np.float32([0, 1e-6, -1e-6, 2e-6])) is not None
    assert constant_output([-2.0, -2.0 + 1e-3, -2.0 - 1e-3]) is None  # small but real


def test_replication_and_rival_on_hand_checkable_numbers():
    from fibrosis.evaluate.selection import replication, rival, rivals

    table = judged_arms([
        {"name": "reference", "auc": 0.70, "depth": 0, "lr_ratio": 1.0, "recipe": "reference"},
        {"name": "head-only", "auc": 0.72, "depth": 0, "lr_ratio": 1.0, "recipe": "lp-ft"},
        {"name": "head-only+tta", "auc": 0.74, "depth": 0, "lr_ratio": 1.0, "recipe": "lp-ft", "tta": True},
        {"name": "last1", "auc": 0.80, "depth": 1, "lr_ratio": 10.0, "recipe": "lp-ft"},
        {"name": "dead", "auc": None, "depth": 0, "lr_ratio": 100.0, "recipe": "lp-ft", "failed": "x"}])
    assert rival(table, "last1") == "head-only+tta"  # the best simpler arm (failed ones never count)
    assert rival(table, "head-only+tta") == "head-only" and rival(table, "head-only") == "reference"
    assert rival(table, "reference") is None
    assert rivals(table, "last1") == ["head-only+tta", "head-only", "reference"] and rivals(table, "reference") == []
    y = np.array([0, 0, 0, 1, 1])
    good, bad = np.array([0., 1, 2, 3, 4]), np.array([0., 3, 2, 1, 4])  # AUC 1 and 4/6
    reps = {"a": {0: good, 1: good}, "b": {0: bad, 1: bad}, "c": {0: good, 1: bad}}
    assert replication(y, "a", "b", reps).holds
    check = replication(y, "c", "b", reps)  # a win in repeat 0 and a tie in repeat 1: not replicated
    assert not check.holds and check.difference == pytest.approx([1 / 3, 0.0]) and check.repeats == [0, 1]


def test_a_choice_must_beat_every_arm_on_its_path_of_simpler_rivals():
    """Beating the first rival is not enough: last1 beats head-only+tta in both repeats but ties
    head-only in one, so head-only takes its place and is checked against the rest of the path."""
    from fibrosis.evaluate.selection import replicated_choice

    table = judged_arms([
        {"name": "reference", "auc": 0.70, "depth": 0, "lr_ratio": 1.0, "recipe": "reference"},
        {"name": "head-only", "auc": 0.72, "depth": 0, "lr_ratio": 1.0, "recipe": "lp-ft"},
        {"name": "head-only+tta", "auc": 0.74, "depth": 0, "lr_ratio": 1.0, "recipe": "lp-ft", "tta": True},
        {"name": "last1", "auc": 0.80, "depth": 1, "lr_ratio": 10.0, "recipe": "lp-ft"}])
    y = np.array([0, 0, 0, 1, 1])
    auc1, auc5, auc3 = np.array([0., 1, 2, 3, 4]), np.array([0., 1, 3, 2, 4]), np.array([0., 3, 2, 1, 4])  # AUC 1, 5/6, 4/6
    auc2 = np.array([0., 3, 4, 1, 2])  # AUC 2/6
    # last1 > head-only+tta in both repeats, but last1 = head-only in repeat 1: head-only is kept, and
    # it beats the reference in both.
    reps = {"last1": {0: auc1, 1: auc5}, "head-only+tta": {0: auc5, 1: auc3}, "head-only": {0: auc3, 1: auc5},
            "reference": {0: auc2, 1: auc2}}
    chosen, checks = replicated_choice(y, table, "last1", reps)
    assert chosen == "head-only"
    assert [(c.chosen, c.rival, c.holds) for c in checks] == [
        ("last1", "head-only+tta", True), ("last1", "head-only", False), ("head-only", "reference", True)]
    chosen, checks = replicated_choice(y, table, "last1", reps, failed=["last1"])  # a failed arm beats nothing
    assert chosen == "head-only" and checks[0].failed and not checks[0].holds and not checks[1].failed
    # ... and takes no place: head-only failed, so last1 is checked against the reference only after it
    chosen, checks = replicated_choice(y, table, "last1", reps, failed=["head-only"])
    assert chosen == "last1" and [c.rival for c in checks] == ["head-only+tta", "reference"]
    with pytest.raises(ValueError, match=r"'reference' failed in a further deal .* no simpler arm"):
        replicated_choice(y, table, "reference", reps, failed=["reference"])
    assert replicated_choice(y, table, "reference", reps) == ("reference", [])


def test_an_add_on_must_beat_its_own_recipe_without_it():
    """last1+aux's best simpler arm is head-only (0.72 > last1's 0.71), but the add-on's gain is
    judged against last1, the same recipe without it: last1 is on the path, and here it wins."""
    from fibrosis.evaluate.selection import replicated_choice, rivals

    table = judged_arms([
        {"name": "reference", "auc": 0.70, "depth": 0, "lr_ratio": 1.0, "recipe": "reference"},
        {"name": "head-only", "auc": 0.72, "depth": 0, "lr_ratio": 1.0, "recipe": "lp-ft"},
        {"name": "last1", "auc": 0.71, "depth": 1, "lr_ratio": 100.0, "recipe": "lp-ft"},
        {"name": "last1-aux", "auc": 0.75, "depth": 1, "lr_ratio": 100.0, "recipe": "lp-ft", "extras": 1,
         "base": "last1"}])
    assert rivals(table, "last1-aux") == ["last1", "head-only", "reference"]
    y = np.array([0, 0, 0, 1, 1])
    auc1, auc5, auc3, auc2 = (np.array([0., 1, 2, 3, 4]), np.array([0., 1, 3, 2, 4]), np.array([0., 3, 2, 1, 4]),
                              np.array([0., 3, 4, 1, 2]))  # AUC 1, 5/6, 4/6, 2/6
    reps = {"last1-aux": {0: auc1, 1: auc3}, "last1": {0: auc5, 1: auc5}, "head-only": {0: auc3, 1: auc2},
            "reference": {0: auc2, 1: auc2}}
    chosen, checks = replicated_choice(y, table, "last1-aux", reps)
    assert chosen == "last1" and [c.rival for c in checks] == ["last1", "head-only", "reference"]


def test_selection_adjusted_auc_hand_checked():
    from fibrosis.evaluate.selection import selection_adjusted

    folds = {"a": {"f0": 0.8, "f1": 0.6, "f2": None}, "b": {"f0": 0.7, "f1": 0.9, "f2": 0.5}}
    # chosen a: fold 0 it is the best (gap 0), fold 1 b is 0.3 better, fold 2 has one class for a: skipped
    adj = selection_adjusted(folds, "a", 0.75)
    assert adj.bias == pytest.approx(0.15) and adj.auc == pytest.approx(0.60) and adj.folds == 2
    assert selection_adjusted({"a": {"f0": 0.9}, "b": {"f0": 0.7}}, "a", 0.9).bias == 0.0


def test_reference_probe_is_scikit_learns_logistic_regression_cv():
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    from fibrosis.train.probe import REFERENCE_CS, fit_reference

    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 8)) * [1, 5, 0.2, 1, 1, 1, 1, 1] + 2
    y = (x[:, 0] + rng.normal(size=150) > 2.5).astype(int)
    groups = [f"p{i // 3}" for i in range(150)]
    p = fit_reference(x, y, groups, seed=4)
    splits = list(StratifiedGroupKFold(5, shuffle=True, random_state=4).split(x, y, groups))
    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9 announcing 1.10's attributes
        ref = LogisticRegressionCV(Cs=REFERENCE_CS, cv=splits, scoring="roc_auc", class_weight="balanced",
                                   max_iter=5000).fit(scaler.transform(x), y)
    np.testing.assert_allclose(p.logits(x), ref.decision_function(scaler.transform(x)), atol=1e-8)
    assert p.c == pytest.approx(float(np.ravel(ref.C_)[0]))


# ------------------------------------------------------------------ probe and stages


def test_linear_probe_solves_the_weighted_l2_problem_and_unstandardises_exactly():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 6)) * [1, 10, 0.1, 1, 1, 0] + [0, 5, 0, 0, 0, 3]  # a dead feature too
    y = (x[:, 0] + 0.1 * x[:, 1] + rng.normal(size=120) > 1.0).astype(int)
    groups = [f"g{i // 2}" for i in range(120)]
    p = fit_probe(x, y, groups, (0.01, 0.1, 1.0), inner_folds=3)
    assert p.c in (0.01, 0.1, 1.0) and set(p.inner_loss) == {0.01, 0.1, 1.0}
    assert p.c == min(p.inner_loss, key=p.inner_loss.get)
    mu, sd = x.mean(0), np.where(x.std(0) > 1e-6, x.std(0), 1.0)
    pw = (y == 0).sum() / y.sum()
    ref = LogisticRegression(C=p.c, class_weight={0: 1, 1: pw}, max_iter=5000, tol=1e-10).fit((x - mu) / sd, y)
    np.testing.assert_allclose(p.logits(x), ref.decision_function((x - mu) / sd), atol=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121"])
def test_prefix_then_suffix_equals_the_backbone(arch):
    torch.manual_seed(0)
    model = build_model(arch, "none", input_size=64).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = model.forward_features(x)
        for k in range(n_groups(model) + 1):
            got = forward_from(model, forward_range(model, x, 0, k), k)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert last_stages(model, 1)  # = PARTIAL[arch], checked inside


def test_arm_config_is_strict():
    with pytest.raises(ConfigError, match=r"unfreeze: 'layer9'"):
        load_config(None, ["tune.arms=[{name: a, unfreeze: layer9}]"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["tune.arms=[{name: a, lr: 0.1}]"])
    with pytest.raises(ConfigError, match="unique"):
        load_config(None, ["tune.arms=[{name: a}, {name: a}]"])


# ------------------------------------------------------------------ end to end


BASE = ["model.arch=resnet18", "model.weights=none", "model.input_size=32", "tune.folds=3",
        "tune.max_epochs=2", "tune.probe_c=[0.01, 1.0]", "tune.batch_size=8",
        "train.head_epochs=1", "train.finetune_epochs=2", "train.batch_size=8", "train.num_workers=0",
        "tune.arms=[{name: reference, recipe: reference}, {name: random-init, init: random, unfreeze: last1},"
        " {name: head-only}, {name: last1-x0.1, unfreeze: last1, lr_ratio: 10},"
        " {name: partial, recipe: train, preset: partial}]"]
NAMES = ["reference", "random-init", "head-only", "last1-x0.1", "partial"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("cache") / "c", 48, 32, pos_frac=0.4,
                                splits={"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)


@pytest.fixture(scope="module")
def tuned(cache, tmp_path_factory):
    from fibrosis.pipeline.tune import run_tune

    out = tmp_path_factory.mktemp("tune") / "t"
    result = run_tune(load_config(None, BASE), cache, out, progress=False)
    return out, result


@pytest.mark.slow
def test_tune_writes_table_choice_and_an_ensemble_checkpoint(tuned, cache):
    out, result = tuned
    names = [a.name for a in result.arms]  # tune.tta (default): each arm's TTA twin right after it
    assert names == [n + t for n in NAMES for t in ("", "+tta") if not (n == "random-init" and t)]
    assert result.chosen in names and result.reason.startswith(f"Chose {result.chosen!r}")
    assert result.random_control == "random-init"  # the control as trained, not its twin
    assert result.reference == "reference" and names[0] == "reference"  # shown first
    for a in result.arms:
        assert not a.failed, a  # the random control learns too: no constant fold model
        assert a.score.ci and a.score.roc and len(a.score.roc["fpr"]) > 2 and a.minutes >= 0 and a.oof_sd > 0
        assert (a.score.vs_random is None) == (a.name == "random-init")
        assert (a.score.vs_reference is None) == (a.name == "reference")
    # The finalists (the choice, its simpler rival, the reference) ran a second deal of the folds.
    finalists = ({result.chosen, result.first_choice, result.reference}
                 | {n for c in result.replication for n in (c.chosen, c.rival)})
    for a in result.arms:
        assert len(a.repeat_aucs) == (2 if a.name in finalists else 1), a.name
    adj = result.selection_adjusted
    assert adj and adj.auc <= adj.pooled_auc and adj.bias >= 0 and adj.folds == 3
    # The fine-tuning arm's budget came from the OOF curve; its other epochs' weights are gone.
    ft = result.arm("last1-x0.1")
    assert 1 <= ft.epoch <= 2 and len(ft.curve) == 3
    assert sorted(p.name for p in (out / "cv" / "last1-x0.1" / "r0-f0").glob("epoch-*.pt")) == [f"epoch-{ft.epoch}.pt"]
    json.loads((out / "tune.json").read_text())
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.ensemble and ckpt.ensemble.members == 3 and ckpt.threshold.chosen_on == "out-of-fold"
    assert ckpt.preprocessing.gray_fold == "rgb-stem"
    test_keys = {r["patient_key"] for r in csv.DictReader(open(cache / "manifest.csv")) if r["split"] == "test"}
    assert not test_keys & set(ckpt.split_keys["train"]["patients"])
    folds = list(csv.DictReader(open(out / "folds.csv")))
    assert not test_keys & {r["patient_key"] for r in folds}


@pytest.mark.slow
def test_ensemble_is_the_mean_logit_of_its_fold_models(tuned):
    out, _ = tuned
    model, _ = load_model(out / "best.pt")
    assert isinstance(model, EnsembleNet) and len(model.members) == 3
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        members = torch.stack([m(x).reshape(-1) for m in model.members])
        torch.testing.assert_close(model(x).reshape(-1), members.mean(0))
    assert not torch.allclose(members[0], members[1])  # three different fold models


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_result(cache, tuned, tmp_path):
    """A run killed with three (fold, arm) units unfinished: each later call trains only what is
    missing, and the finished run equals the uninterrupted one."""
    from fibrosis.pipeline.tune import run_tune

    out = tmp_path / "t"
    shutil.copytree(tuned[0], out)
    for name in ("best.pt", "tune.json"):
        (out / name).unlink()
    lost = [("head-only", "r0-f0"), ("last1-x0.1", "r0-f1"), ("last1-x0.1", "r0-f2")]
    for arm, fold in lost:
        shutil.rmtree(out / "cv" / arm / fold)
    for arm in {a for a, _ in lost}:  # the arm's pooled result and its TTA twin's need the units
        (out / "cv" / arm / "arm.json").unlink()
        (out / "cv" / f"{arm}+tta" / "arm.json").unlink()
    cfg = load_config(None, BASE)
    assert run_tune(cfg, cache, out, max_units=2, progress=False) is None  # "killed" after 2 units
    assert [(a, f) for a, f in lost if (out / "cv" / a / f / "done.json").is_file()] == lost[:2]
    assert not (out / "best.pt").exists()
    assert run_tune(cfg, cache, out, max_units=0, progress=False) is None  # nothing new: still stopped
    result = run_tune(cfg, cache, out, progress=False)
    ref = tuned[1]
    for a, b in zip(result.arms, ref.arms, strict=True):
        assert a.name == b.name and a.epoch == b.epoch
        assert a.score.auc == pytest.approx(b.score.auc, abs=1e-9)
    assert result.chosen == ref.chosen and (out / "best.pt").is_file()


@pytest.mark.slow
def test_resume_mid_unit_continues_from_the_saved_epoch(cache, tmp_path):
    from fibrosis.train.tune import setup
    from fibrosis.train.tune.models import prepare_base
    from fibrosis.train.tune.unit import run_unit

    ctx, folds, arms, reader = setup(load_config(None, BASE), cache, tmp_path / "t")
    arm = next(a for a in arms if a.name == "last1-x0.1")
    prepare_base(ctx, arm, arms, reader)
    full = run_unit(ctx, arm, folds[0], tmp_path / "full")
    assert run_unit(ctx, arm, folds[0], tmp_path / "cut", epoch_limit=1) is None  # "killed" after epoch 1
    assert torch.load(tmp_path / "cut" / "state.pt", weights_only=True)["epoch"] == 1
    resumed = run_unit(ctx, arm, folds[0], tmp_path / "cut")
    assert len(resumed.oof) == len(full.oof) == 3  # probe + 2 epochs
    np.testing.assert_allclose(resumed.oof, full.oof, atol=1e-6)
    np.testing.assert_allclose(resumed.train_loss, full.train_loss, atol=1e-6)


@pytest.mark.slow
def test_prefix_recomputed_per_batch_when_over_the_memory_cap_gives_the_same_unit(cache, tmp_path):
    """The augmented views (and plain activations) kept in memory, or recomputed per batch from
    the images with the same seeds: the same inputs, so the same training."""
    from fibrosis.train.tune import setup
    from fibrosis.train.tune.models import prepare_base
    from fibrosis.train.tune.unit import run_unit

    records = []
    for cap in (4096, 0):  # 0 MB: nothing kept, the frozen prefix runs again for every batch
        ctx, folds, arms, reader = setup(load_config(None, BASE + [f"tune.cache_mb={cap}"]), cache, tmp_path / str(cap))
        arm = next(a for a in arms if a.name == "last1-x0.1")
        prepare_base(ctx, arm, arms, reader)
        acts = ctx.acts[arm.base_key]
        assert acts.keep == acts.keep_views == (cap > 0)
        records.append(run_unit(ctx, arm, folds[1], tmp_path / str(cap) / "unit"))
    assert ctx.acts[arm.base_key].augment is not None  # fine-tuning saw augmented views, not the plain images
    np.testing.assert_allclose(records[0].oof, records[1].oof, atol=1e-5)
    np.testing.assert_allclose(records[0].train_loss, records[1].train_loss, atol=1e-5)


@pytest.mark.slow
def test_ensemble_round_trips_through_evaluate_and_score(tuned, cache, tmp_path, monkeypatch):
    from helpers.dicom_factory import chest_phantom, make_png
    from fibrosis.evaluate.run import evaluate_run
    from fibrosis.model.engine import onnxruntime_available
    from fibrosis.score.run import score

    out, result = tuned
    run = tmp_path / "run"
    shutil.copytree(out, run)
    metrics = json.loads(evaluate_run(run, cache, device="cpu").read_text())
    assert metrics["fit_split"] == "out-of-fold" and metrics["data"]["n"] == 12
    assert metrics["run"]["preset"].startswith(f"tune: arm {result.chosen!r}")
    assert metrics["gradcam"]["layer"].startswith("members.0.")
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.calibration == load_checkpoint(out / "best.pt").calibration  # not refitted
    from fibrosis.report.build import write_report

    html = unescape((write_report(run, tmp_path / "report") / "report.html").read_text())
    assert "How much to unfreeze?" in html and result.reason.split(":")[0] in html
    assert all(a.name in html for a in result.arms)
    frozen = json.loads(evaluate_run(run, cache, frozen=True, gradcam=False, device="cpu").read_text())
    assert frozen["discrimination"]["auc"] == pytest.approx(metrics["discrimination"]["auc"])

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k in range(3):
        make_png(inputs / f"x{k}.png", (chest_phantom(300, 300, seed=k) * 255).astype(np.uint8))
    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    engines = ["eager"] + (["onnx"] if onnxruntime_available() else [])
    got = {}
    for engine in engines:
        summary = score(run, inputs, tmp_path / f"{engine}.csv", engine=engine, progress=False, device="cpu",
                        gradcam_dir=tmp_path / "cam", workers=1)
        assert summary.ok() and summary.counts["ok"] == 3
        got[engine] = [float(r["logit_uncalibrated"]) for r in csv.DictReader(open(tmp_path / f"{engine}.csv"))]
    # The scored logit is the ensemble's mean logit of the same input (eager reference).
    for engine in engines[1:]:
        np.testing.assert_allclose(got[engine], got["eager"], atol=1e-3)


@pytest.mark.slow
def test_refit_option_leaves_one_model_trained_on_all_development_data(tuned, cache, tmp_path):
    from fibrosis.pipeline.tune import run_tune
    from fibrosis.evaluate.run import evaluate_run

    out = tmp_path / "t"
    shutil.copytree(tuned[0], out)  # every unit done: only the refit trains
    (out / "best.pt").unlink()
    result = run_tune(load_config(None, BASE + ["tune.final=refit"]), cache, out, progress=False)
    assert result.chosen == tuned[1].chosen and result.final == "refit"
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.ensemble is None and "refit on all development data" in ckpt.preset
    probe = torch.load(out / "refit" / "probe.pt", weights_only=True)
    assert probe["weight"].shape[0] == 512  # resnet18 features: the head solved on all dev rows
    model, _ = load_model(out / "best.pt")
    assert not isinstance(model, EnsembleNet)
    metrics = json.loads(evaluate_run(out, cache, gradcam=False, device="cpu").read_text())
    assert metrics["fit_split"] == "out-of-fold"


def test_calibrated_loss_ignores_logit_scale_and_judges_ranking():
    from fibrosis.train.probe import calibrated_log_loss
    from fibrosis.train.probe import weighted_log_loss

    y = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    z = np.array([-1.0, 0.2, 0.5, 2.0, -0.3, 0.1, -2.0, 0.4])
    # Growing logits (an overconfident later epoch) raise the raw loss but not the calibrated one...
    assert weighted_log_loss(y, 8 * z, 1.0) > weighted_log_loss(y, z, 1.0)
    assert calibrated_log_loss(y, 8 * z) == pytest.approx(calibrated_log_loss(y, z), rel=1e-9)
    # ...while a better ranking lowers it: swap one misranked pair into order.
    better = z.copy()
    better[[5, 7]] = better[[7, 5]]
    assert calibrated_log_loss(y, better) < calibrated_log_loss(y, z)
    # By hand for a 2-point case: Platt fits the base rate when the logits carry no information.
    assert calibrated_log_loss(np.array([0, 1]), np.array([0.0, 0.0])) == pytest.approx(np.log(2))
# ------------------------------------------------------------------ test-time augmentation twins


def test_one_se_rule_ranks_a_tta_twin_just_after_its_arm():
    twin = {"name": "last1-x0.01+tta", "auc": 0.845, "se": 0.04, "depth": 1, "lr_ratio": 100.0, "tta": True}
    # Within one SE of the best (0.86 - 0.03) and higher than its arm, but TTA counts as more: the arm wins.
    assert first_choice(judged_arms(ARMS + [twin]), "one-se")[0] == "last1-x0.01"
    # A twin that beats everything by more than the plain arms' reach is chosen (depth 0 < 1).
    best = {"name": "head-only+tta", "auc": 0.90, "se": 0.03, "depth": 0, "lr_ratio": 1.0, "tta": True}
    assert first_choice(judged_arms(ARMS + [best]), "one-se")[0] == "head-only+tta"


def test_arm_names_ending_in_plus_tta_are_reserved():
    with pytest.raises(ConfigError, match=r"tune.arms\[0\] \('a\+tta'\): names ending in '\+tta' are reserved"):
        load_config(None, ["tune.arms=[{name: a+tta}]"])
    assert load_config(None, ["tune.tta=false", "tune.arms=[{name: a+tta}]"]).tune.arms[0].name == "a+tta"


@pytest.mark.slow
def test_tta_twins_table_cache_and_identity_check(tuned, cache, tmp_path):
    from fibrosis.model.tta import DEFAULT_VARIANTS, Variant
    from fibrosis.train.tune import ArmResult, setup
    from fibrosis.train.tune.models import base_model, member
    from fibrosis.train.tune.tta import tta_twin

    out, result = tuned
    arms = {a.name: a for a in result.arms}
    assert "random-init+tta" not in arms  # the control is judged as trained
    for name in ("reference", "head-only", "last1-x0.1", "partial"):
        twin = arms[f"{name}+tta"]
        assert twin.twin and twin.twin.base_arm == name and twin.epoch == arms[name].epoch
        assert twin.depth == arms[name].depth and twin.score.ci and twin.twin.tta_seconds >= 0
        vs_base, auc, base_auc = twin.score.vs_base, twin.score.auc, arms[name].score.auc
        assert vs_base and auc and base_auc and vs_base.difference == pytest.approx(auc - base_auc)
        assert 0 <= vs_base.p <= 1 and arms[name].score.vs_base is None
        assert [v["name"] for v in twin.twin.tta_variants["variants"]] == [v.name for v in DEFAULT_VARIANTS]
        assert (out / "cv" / f"{name}+tta" / "arm.json").is_file()
        assert sorted(p.name for p in (out / "cv" / f"{name}+tta").glob("r0-f*.json")) == \
            ["r0-f0.json", "r0-f1.json", "r0-f2.json"]
    # The twin's models are its arm's: with the identity as the only view it reproduces the arm's OOF logits.
    work = tmp_path / "t"
    shutil.copytree(out, work)
    cfg = load_config(None, BASE)
    ctx, folds, arms_, reader = setup(cfg, cache, work)
    arm = next(a for a in arms_ if a.name == "last1-x0.1")
    res = ArmResult.read(arm, work / "cv" / arm.name / "arm.json")
    shutil.rmtree(work / "cv" / "last1-x0.1+tta")
    folds = [f for f in folds if f.repeat == 0]
    ident = tta_twin(ctx, res, folds, reader, work, arms_, variants=(Variant("identity"),))
    np.testing.assert_allclose(ident.oof, res.oof, atol=1e-4)
    # Cached: a second call reads arm.json back instead of predicting again.
    again = tta_twin(ctx, res, folds, reader, work, arms_, variants=DEFAULT_VARIANTS)
    assert again.variants == (Variant("identity"),) and np.array_equal(again.oof, ident.oof)
    # The shared frozen prefix over the views is a shortcut, not an approximation: each fold model with
    # TTA in its own forward (what best.pt will do) gives the twin's logits.
    from fibrosis.model.inference import predict_rows

    for name in ("head-only", "last1-x0.1"):
        arm = next(a for a in arms_ if a.name == name)
        epoch = arms[name].epoch
        rec = json.loads((out / "cv" / f"{name}+tta" / "r0-f1.json").read_text())
        base_model(ctx, arm)
        model = member(ctx, arm, work / "cv" / name / "r0-f1", epoch).set_tta(DEFAULT_VARIANTS)
        full = predict_rows(model, reader, rec["heldout"], 16, "cpu", amp=False)
        np.testing.assert_allclose(rec["oof"][0], full, atol=1e-4)
    # Over the memory cap the views' prefix is recomputed per batch: same logits.
    cap0 = tmp_path / "cap0"
    shutil.copytree(out, cap0)
    shutil.rmtree(cap0 / "cv" / "last1-x0.1+tta")
    ctx0, folds0, arms0, reader0 = setup(load_config(None, BASE + ["tune.cache_mb=0"]), cache, cap0)
    arm0 = next(a for a in arms0 if a.name == "last1-x0.1")
    folds0 = [f for f in folds0 if f.repeat == 0]
    twin0 = tta_twin(ctx0, ArmResult.read(arm0, cap0 / "cv" / arm0.name / "arm.json"), folds0, reader0, cap0, arms0)
    assert not ctx0.views[(arm0.base_key, DEFAULT_VARIANTS)].keep
    np.testing.assert_allclose(twin0.oof, json.loads((out / "cv" / "last1-x0.1+tta" / "arm.json").read_text())["oof"],
                               atol=1e-4)


@pytest.mark.slow
def test_choosing_a_tta_twin_packages_a_checkpoint_with_tta_on(tuned, cache, tmp_path):
    from fibrosis.model.tta import DEFAULT_VARIANTS, variants_of
    from fibrosis.train.tune.cv import cross_validate
    from fibrosis.train.tune.package import package

    out = tmp_path / "t"
    shutil.copytree(tuned[0], out)
    cfg = load_config(None, BASE)
    cv = cross_validate(cfg, cache, out, progress=False)  # everything cached: nothing trains or predicts
    assert [r.arm.name for r in cv.arms] == [a.name for a in tuned[1].arms]
    path = package(cfg, cache, out, cv, "last1-x0.1+tta")
    ckpt = load_checkpoint(path)
    assert ckpt.config["model"]["tta"] is True and ckpt.tune and ckpt.tune.arm == "last1-x0.1+tta"
    assert "test-time augmentation" in ckpt.preset and ckpt.ensemble and ckpt.ensemble.members == 3
    model, _ = load_model(path)
    assert isinstance(model, EnsembleNet) and variants_of(model) == DEFAULT_VARIANTS
    assert all(m.tta is None for m in model.members)  # applied once, by the ensemble
    from fibrosis.model import engine as E

    if E.onnxruntime_available():  # the ensemble with its views exports as one graph and agrees
        sample = E.verification_batch(32, model.preprocessing, n=3)
        _, agree = E.select_engine(model, "onnx", onnx_path=tmp_path / "ens.onnx", sample=sample, threshold=0.5)
        assert agree.ok, str(agree)
    plain = package(cfg, cache, out, cv, "last1-x0.1")  # the same arm without TTA: same weights
    ckpt_plain = load_checkpoint(plain)
    assert ckpt_plain.tta is None and ckpt_plain.config["model"]["tta"] is False
    assert all(torch.equal(ckpt.weights[k], v) for k, v in ckpt_plain.weights.items())


@pytest.mark.slow
def test_lp_ft_at_learning_rate_zero_reproduces_the_probe_exactly(cache, tmp_path):
    import dataclasses

    from fibrosis.train.tune import setup
    from fibrosis.train.tune.models import prepare_base
    from fibrosis.train.tune.unit import run_unit

    cfg = load_config(None, BASE)
    cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, lr=0.0))  # below tune.lr's range, on purpose
    ctx, folds, arms, reader = setup(cfg, cache, tmp_path / "t")
    ft, probe = (next(a for a in arms if a.name == n) for n in ("last1-x0.1", "head-only"))
    prepare_base(ctx, ft, arms, reader)
    rec = run_unit(ctx, ft, folds[0], tmp_path / "ft")
    assert len(rec.oof) == 3 and all(z == rec.oof[0] for z in rec.oof[1:])  # bit for bit, augmented epochs and all
    head = run_unit(ctx, probe, folds[0], tmp_path / "probe")
    np.testing.assert_allclose(rec.oof[0], head.oof[0], atol=1e-4)  # the network in float32, the probe in float64


@pytest.mark.slow
def test_train_recipe_arm_is_fibrosis_train_on_each_fold(tuned, cache):
    from fibrosis.data.cache import CacheReader
    from fibrosis.model.inference import predict_rows
    from fibrosis.train.tune.context import UnitRecord

    out, result = tuned
    arm = result.arm("partial")
    assert arm.recipe == "train" and arm.depth == 1 and arm.lr_ratio == pytest.approx(10.0)
    rows = read_manifest(cache / "manifest.csv")
    folds = [r for r in csv.DictReader(open(out / "folds.csv")) if r["repeat"] == "0" and r["fold"] == "0"]
    heldout = {r["content_hash"] for r in folds}
    unit = out / "cv" / "partial" / "r0-f0"
    ckpt = load_checkpoint(unit / "run" / "best.pt")
    assert [s["name"] for s in ckpt.stages] == ["head", "finetune"]  # the preset's own stages
    assert ckpt.stages[1]["unfreeze"] == ["layer4"]
    trained, val = set(ckpt.split_keys["train"]["images"]), set(ckpt.split_keys["val"]["images"])
    assert trained and val and not (trained | val) & heldout and not trained & val  # an inner validation part
    assert not (unit / "run" / "last.pt").exists()
    rec = UnitRecord.read(unit / "done.json")
    model, _ = load_model(unit / "run" / "best.pt")
    index = {r.content_hash: i for i, r in enumerate(rows)}
    assert sorted(rec.heldout) == sorted(index[h] for h in heldout)
    z = predict_rows(model, CacheReader(cache, rows), rec.heldout, 8, "cpu", amp=False)
    np.testing.assert_allclose(rec.oof[0], z, atol=1e-5)

