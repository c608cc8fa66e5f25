import pytest

from fibrosis.model.threshold import SCALE, FitData, OperatingPointSpec, PointDetail, ThresholdRecord

# What `fibrosis evaluate` stores, key for key and in this order.
STORED = {"format": 1, "scale": "calibrated probability", "calibration": "platt", "chosen_on": "val",
          "default": "youden", "value": 0.25,
          "points": {"youden": 0.25, "sensitivity_0.90": 0.125},
          "details": {"youden": {"rule": "youden", "sensitivity": 0.75, "specificity": 0.5},
                      "sensitivity_0.90": {"rule": "sensitivity>=0.9", "sensitivity": 1.0, "specificity": 0.25}},
          "fit_data": {"split": "val", "n": 8, "n_pos": 4, "n_patients": 6},
          "rule": "positive if calibrated probability >= threshold"}
POINTS = [OperatingPointSpec("youden", "youden", 0.25, 0.75, 0.5),
          OperatingPointSpec("sensitivity_0.90", "sensitivity>=0.9", 0.125, 1.0, 0.25)]


def test_record_of_chosen_points_is_the_stored_json():
    rec = ThresholdRecord.of(POINTS, "platt", FitData("val", 8, 4, 6))
    assert rec.to_json() == STORED and list(rec.to_json()) == list(STORED)
    assert ThresholdRecord.from_json(STORED, "best.pt") == rec
    assert rec.operating_points() == POINTS and rec.fit() == FitData("val", 8, 4, 6)


def test_older_and_hand_made_records_round_trip_unchanged():
    old = {k: v for k, v in STORED.items() if k not in ("details", "fit_data")}
    rec = ThresholdRecord.from_json(old, "best.pt")
    assert rec.to_json() == old and list(rec.to_json()) == list(old)
    assert rec.operating_points()[1] == OperatingPointSpec("sensitivity_0.90", "stored threshold 'sensitivity_0.90'",
                                                           0.125, None, None)
    assert rec.fit() == FitData("val", None, None, None)
    minimal = {"format": 1, "scale": SCALE, "default": "youden", "value": 0.5}
    assert ThresholdRecord.from_json(minimal, "x.pt") == ThresholdRecord(SCALE, "youden", 0.5)
    assert ThresholdRecord(SCALE, "youden", 0.5).to_json() == minimal
    assert PointDetail("youden", None, None).to_json() == {"rule": "youden", "sensitivity": None, "specificity": None}


@pytest.mark.parametrize("change, message", [
    ({"format": 2}, r"x.pt: threshold format=2; this version reads 1"),
    ({"value": "high"}, r"x.pt: threshold: value='high'; expected a number"),
    ({"points": {"youden": None}}, r"x.pt: threshold: points.youden=None; expected a number"),
    ({"fit_data": {"split": "val", "n": "8"}}, r"x.pt: threshold: fit_data.n='8'; expected a number"),
    ({"extra": 1}, r"x.pt: threshold: unknown key\(s\) \['extra'\]"),
])
def test_errors_name_the_file_and_the_key(change, message):
    with pytest.raises(ValueError, match=message):
        ThresholdRecord.from_json({**STORED, **change}, "x.pt")
    with pytest.raises(ValueError, match=r"x.pt: threshold: no 'value'"):
        ThresholdRecord.from_json({k: v for k, v in STORED.items() if k != "value"}, "x.pt")
