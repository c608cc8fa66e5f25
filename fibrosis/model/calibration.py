"""Post-hoc probability calibration of the model's logit: temperature, Platt, isotonic.

A calibrator is fitted on the validation (or dedicated calibration) split only and
then frozen; it is stored inside the checkpoint as a :class:`CalibrationRecord` (plain
JSON on disk, so that ``torch.load(..., weights_only=True)`` can read it) and scoring
applies exactly the mapping that was evaluated.

* temperature: p = sigmoid(z / T), one parameter, keeps the ranking (AUC) intact.
* platt: p = sigmoid(a * z + b), also fixes a shifted base rate; keeps the ranking.
* isotonic: monotone step-wise map z -> p (linear between knots); flexible but can
  over-fit small sets and creates ties (AUC may drop slightly).
* none: p = sigmoid(z).
"""
from __future__ import annotations

import logging
import math
import typing
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import optimize

from fibrosis.config import CalibrationMethod
from fibrosis.numeric import MetricWarning, check_binary, fit_logistic, sigmoid

logger = logging.getLogger(__name__)

METHODS = typing.get_args(CalibrationMethod)
FORMAT = 1


def _check_logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits, float)
    if z.ndim != 1:
        raise ValueError(f"logits shape {z.shape}; expected a 1-D array of binary logits")
    bad = ~np.isfinite(z)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"logits[{i}] = {z[i].item()!r}: {int(bad.sum())} non-finite logit(s); "
                         "expected finite numbers")
    return z


@dataclass(frozen=True, slots=True)
class FittedOn:
    """The split a calibrator was fitted on."""
    split: str
    n: int
    n_pos: int

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "n": self.n, "n_pos": self.n_pos}


# A calibrator's parameters: its constructor's keyword arguments (a number each, or the
# isotonic knots), so they differ by method.
Params = dict[str, float | list[float]]


@dataclass(frozen=True, slots=True)
class CalibrationRecord:
    """A fitted calibrator as the checkpoint (key ``calibration``) and metrics.json store it."""
    method: str
    params: Params
    fitted_on: FittedOn | None  # None: never fitted (stored as {})

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method,
                "params": {k: list(v) if isinstance(v, list) else v for k, v in self.params.items()},
                "fitted_on": self.fitted_on.to_json() if self.fitted_on else {}}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "CalibrationRecord":
        """Validate a stored record; errors name ``where`` (the checkpoint) and the key."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: calibration={data!r}; expected a record (written by fibrosis evaluate)")
        if data.get("format") != FORMAT:
            raise ValueError(f"{where}: calibration dict format {data.get('format')!r}; this version reads {FORMAT}")
        method = data.get("method")
        if method not in _CLASSES:
            raise ValueError(f"{where}: calibration method {method!r} in checkpoint; allowed: {list(METHODS)}")
        params = data.get("params", {})
        if not isinstance(params, dict) or not all(
                isinstance(v, (int, float)) or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))
                for v in params.values()):
            raise ValueError(f"{where}: calibration params={params!r}; expected numbers or lists of numbers")
        try:
            _CLASSES[method](**params)
        except TypeError:
            raise ValueError(f"{where}: calibration params {sorted(params)} for method {method!r}; expected "
                             f"{sorted(_CLASSES[method]().params())}") from None
        fit = data.get("fitted_on", {})
        try:
            fitted_on = FittedOn(str(fit["split"]), int(fit["n"]), int(fit["n_pos"])) if fit else None
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: calibration fitted_on={fit!r}; expected split, n and n_pos") from None
        return cls(str(method), dict(params), fitted_on)


class Calibrator:
    """Base class: ``fit(logits, y)`` on the calibration split, ``predict(logits)`` -> probabilities."""

    method: ClassVar[str] = "none"

    def __init__(self) -> None:
        self.fitted_on: FittedOn | None = None

    def fit(self, logits: Any, y_true: Any, split: str = "val") -> "Calibrator":
        y, z = check_binary(y_true, _check_logits(logits), score_name="logits")
        self._fit(z, y.astype(float))
        self.fitted_on = FittedOn(split, int(len(y)), int(y.sum()))
        logger.info("calibration %s fitted on %s (n=%d, positives=%d): %s", self.method, split,
                    len(y), int(y.sum()), self.params())
        return self

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        pass

    def predict(self, logits: Any) -> np.ndarray:
        return sigmoid(_check_logits(logits))

    def params(self) -> Params:
        return {}

    def record(self) -> CalibrationRecord:
        return CalibrationRecord(self.method, self.params(), self.fitted_on)

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON (what metrics.json shows as ``calibrator``)."""
        return self.record().to_json()


class TemperatureScaling(Calibrator):
    method = "temperature"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        def nll(log_t: float) -> float:
            p = np.clip(sigmoid(z / math.exp(log_t)), 1e-12, 1 - 1e-12)
            return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

        # NLL is unimodal in log T; bound T to [0.01, 100] so separable data cannot run off.
        res = optimize.minimize_scalar(nll, bounds=(math.log(0.01), math.log(100.0)), method="bounded",
                                       options={"xatol": 1e-8})
        self.temperature = float(math.exp(res.x))
        if self.temperature <= 0.0101 or self.temperature >= 99.0:
            warnings.warn(f"temperature {self.temperature:.3g} hit its bound [0.01, 100]: the logits of the "
                          "calibration split are (nearly) separable or uninformative; calibration is "
                          "unreliable", MetricWarning, stacklevel=3)

    def predict(self, logits: Any) -> np.ndarray:
        return sigmoid(_check_logits(logits) / self.temperature)

    def params(self) -> Params:
        return {"temperature": self.temperature}


class PlattScaling(Calibrator):
    method = "platt"

    def __init__(self, a: float = 1.0, b: float = 0.0) -> None:
        super().__init__()
        self.a, self.b = float(a), float(b)

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        # Platt's (1999) smoothed targets: (N+ + 1)/(N+ + 2) for positives and 1/(N- + 2)
        # for negatives. They keep the fit finite when a small validation split is
        # perfectly separated by the logit (plain maximum likelihood diverges there),
        # and act as a mild prior on tiny sets.
        n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
        targets = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        beta, _, ok = fit_logistic(z, targets)
        if not ok:
            raise ValueError(f"Platt scaling did not converge on {len(y)} cases "
                             f"({int(n_pos)} positive); use calibration=temperature instead")
        self.b, self.a = float(beta[0]), float(beta[1])

    def predict(self, logits: Any) -> np.ndarray:
        return sigmoid(self.a * _check_logits(logits) + self.b)

    def params(self) -> Params:
        return {"a": self.a, "b": self.b}


class IsotonicCalibration(Calibrator):
    method = "isotonic"

    def __init__(self, x: list[float] | None = None, y: list[float] | None = None) -> None:
        super().__init__()
        self.x = list(x or [])
        self.y = list(y or [])

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(z, y)
        self.x = [float(v) for v in iso.X_thresholds_]
        self.y = [float(v) for v in iso.y_thresholds_]

    def predict(self, logits: Any) -> np.ndarray:
        if not self.x:
            raise ValueError("isotonic calibrator has no knots: fit it (or load a fitted one) first")
        # Same mapping as IsotonicRegression.predict: linear between knots, clipped outside.
        return np.interp(_check_logits(logits), self.x, self.y)

    def params(self) -> Params:
        return {"x": list(self.x), "y": list(self.y)}


_CLASSES: dict[str, type[Calibrator]] = {
    "temperature": TemperatureScaling, "platt": PlattScaling,
    "isotonic": IsotonicCalibration, "none": Calibrator}


def make_calibrator(method: str) -> Calibrator:
    if method not in _CLASSES:
        raise ValueError(f"calibration method {method!r}; allowed: {list(METHODS)}")
    return _CLASSES[method]()


def calibrator_from_record(record: CalibrationRecord | None) -> Calibrator:
    """Rebuild a stored calibrator (None -> identity sigmoid)."""
    if record is None:
        return Calibrator()
    cal = _CLASSES[record.method](**record.params)
    cal.fitted_on = record.fitted_on
    return cal
