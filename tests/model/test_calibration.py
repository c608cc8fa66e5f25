"""Post-hoc calibrators: recovery of known parameters, JSON/weights_only round trips, errors."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression

from fibrosis.model import calibration as C
from fibrosis.numeric import sigmoid
def _data(n=50_000, scale=1.0, a=1.0, b=0.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, n)
    y = (rng.uniform(size=n) < sigmoid(a * z / scale + b)).astype(int)
    return z, y


def test_temperature_scaling_recovers_known_temperature():
    z, y = _data(scale=2.5)
    cal = C.TemperatureScaling().fit(z, y)
    assert cal.temperature == pytest.approx(2.5, rel=0.05)
    assert cal.fitted_on == C.FittedOn("val", 50_000, int(y.sum()))
    # monotone map: ranking (AUC) unchanged
    assert np.all(np.diff(cal.predict(np.sort(z))) >= 0)


def test_temperature_one_when_already_calibrated():
    z, y = _data(scale=1.0, seed=1)
    assert C.TemperatureScaling().fit(z, y).temperature == pytest.approx(1.0, abs=0.05)


def test_platt_recovers_slope_and_intercept():
    z, y = _data(a=0.7, b=-1.2, seed=2)
    cal = C.PlattScaling().fit(z, y)
    assert cal.a == pytest.approx(0.7, abs=0.03) and cal.b == pytest.approx(-1.2, abs=0.05)


def test_isotonic_matches_sklearn_and_is_monotone():
    z, y = _data(n=2000, scale=2.0, seed=3)
    cal = C.IsotonicCalibration().fit(z, y)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(z, y)
    grid = np.linspace(-15, 15, 301)
    assert cal.predict(grid) == pytest.approx(ref.predict(grid))
    assert np.all(np.diff(cal.predict(grid)) >= 0) and cal.predict(grid).min() >= 0


@pytest.mark.parametrize("method", C.METHODS)
def test_round_trip_through_weights_only_checkpoint(method):
    z, y = _data(n=3000, scale=1.7, seed=4)
    cal = C.make_calibrator(method).fit(z, y, split="calib")
    d = cal.to_dict()
    json.dumps(d)  # plain JSON types only
    buf = io.BytesIO()
    torch.save({"calibration": d}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["calibration"]
    record = C.CalibrationRecord.from_json(loaded, "x.pt")
    assert record.to_json() == d and record == cal.record()
    back = C.calibrator_from_record(record)
    assert back.method == method and back.fitted_on is not None and back.fitted_on.split == "calib"
    test = np.linspace(-8, 8, 50)
    assert back.predict(test) == pytest.approx(cal.predict(test))


def test_none_is_plain_sigmoid():
    assert C.make_calibrator("none").predict(np.array([0.0, 2.0])) == pytest.approx([0.5, 1 / (1 + np.exp(-2))])
    assert C.calibrator_from_record(None).method == "none"


def test_sigmoid_is_stable_for_extreme_logits():
    with np.errstate(over="raise"):
        p = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert p.tolist() == [0.0, 0.5, 1.0]


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"calibration method 'beta'; allowed: \['temperature', 'platt', "):
        C.make_calibrator("beta")
    with pytest.raises(ValueError, match=r"logits\[1\] = nan"):
        C.TemperatureScaling().fit([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="only one class"):
        C.TemperatureScaling().fit([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="x.pt: calibration dict format 7; this version reads 1"):
        C.CalibrationRecord.from_json({"format": 7, "method": "temperature"}, "x.pt")
    with pytest.raises(ValueError, match=r"x.pt: calibration params \['T'\] for method 'temperature'; "
                                         r"expected \['temperature'\]"):
        C.CalibrationRecord.from_json({"format": 1, "method": "temperature", "params": {"T": 2.0}}, "x.pt")



def test_platt_finite_on_separated_split_and_removes_a_logit_shift():
    # Platt's smoothed targets keep a perfectly separated split finite: targets are
    # (2+1)/(2+2) = 0.75 and 1/(2+2) = 0.25, so predictions stay inside [0.25, 0.75]-ish.
    cal = C.PlattScaling().fit([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1], "val")
    p = cal.predict([-2.0, 2.0])
    assert np.isfinite(cal.a) and 0.0 < p[0] < 0.5 < p[1] < 1.0
    # Class weighting shifts logits by log(pos_weight): Platt's intercept undoes it.
    rng = np.random.default_rng(0)
    z = rng.normal(-3.0, 1.5, 20000)
    y = (rng.random(20000) < 1.0 / (1.0 + np.exp(-z))).astype(float)
    cal = C.PlattScaling().fit(z + np.log(19.0), y, "val")
    assert cal.a == pytest.approx(1.0, abs=0.05)
    assert cal.b == pytest.approx(-np.log(19.0), abs=0.1)
