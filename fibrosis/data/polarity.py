"""Is a displayed chest radiograph shown the right way round (lungs dark, bone bright)?

A header that lies about MONOCHROME1/2, or an export stored inverted, gives an image whose
lungs are bright and whose bones are dark; trained or scored as it is, it is a different
picture. One cue cannot tell: "the mediastinum is brighter than the lungs" fails on correct
films of children, of emphysema and of heavy soft tissue, which score as low as inverted ones
(on the 421 NIH developer images, two correct films scored -0.074 and -0.106 and the one
inverted film -0.068). Three cues of a frontal chest film are combined, each measured on the
image with its uniform edge bands (padding, scanner borders, shutters) trimmed off:

* ``mediastinum-lungs``: mean of the central column minus the mean of two lung boxes (> 0);
* ``corners-image``: median of the two top corners (air above the shoulders) minus the image's
  median (< 0: direct exposure is the darkest thing on a correctly shown film);
* ``below-lungs``: mean of the band under the lung fields (diaphragm, abdomen) minus the lung
  boxes (> 0).

Each cue changes sign exactly when the image is inverted, and so does their weighted sum, the
``score``: an image and its inversion score +s and -s. The weights were fitted without any
polarity labels, by logistic regression (no intercept) of each developer image (the 421 NIH PNGs,
the 163 demo DICOMs, the 4 chest films among the 16 robustness DICOMs) against its own inversion.
With 5-fold cross-validation every correct film scored >= +1.28 and the two inverted ones (one NIH
PNG, one DICOM whose header was rewritten to MONOCHROME1) -4.08 and -5.10; with the weights below,
correct films score +1.36 at least (mean +4.73, SD 1.08) and the inverted ones -3.93 and -4.96.
Neither marker nor wire brightness made it in: black label boxes and padding fragments made
"small dark blobs" as common on correct films as "small bright blobs". The verdict:

* ``as-shown``: score >= AS_SHOWN_FROM;
* ``inverted``: score <= INVERTED_TO (confident: far beyond what correct films reached);
* ``unsure``: in between.

What happens then is ``ingest.polarity_qa`` (:func:`fibrosis.data.pixels.polarity_action`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Verdict = Literal["as-shown", "unsure", "inverted"]
CUE_WEIGHTS = {"mediastinum-lungs": 3.17, "corners-image": -3.69, "below-lungs": 4.93}
AS_SHOWN_FROM = 0.0
INVERTED_TO = -2.5
ANALYSIS_SIDE = 128  # the cues are regional means: measured on a small copy
UNIFORM_SPREAD = 0.04  # an edge row/column whose 5-95th percentile spread is below this is a band
MIN_KEPT = 0.5  # trimming never keeps less than this share of a side


@dataclass(frozen=True)
class PolarityCheck:
    verdict: Verdict
    score: float  # > 0 shown correctly, < 0 inverted; the sum of the weighted cues
    cues: dict[str, float]

    def evidence(self) -> str:
        """``score=+4.712: mediastinum-lungs=+0.290, corners-image=-0.471, below-lungs=+0.462``."""
        return f"score={self.score:+.3f}: " + ", ".join(f"{k}={v:+.3f}" for k, v in self.cues.items())


def _uniform(lines: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(lines, [5, 95], axis=1)
    return (hi - lo) < UNIFORM_SPREAD


def _trim_edges(img: np.ndarray) -> np.ndarray:
    """``img`` without the uniform bands along its edges (at most 1 - MIN_KEPT of each side)."""
    for axis in (0, 1, 0):  # rows, columns, rows again (a column band can hide a row band's end)
        lines = img if axis == 0 else img.T
        flat = _uniform(lines)
        n, limit = len(flat), int(len(flat) * (1 - MIN_KEPT))
        top = int(np.argmin(flat)) if not flat.all() else n
        bottom = int(np.argmin(flat[::-1])) if not flat.all() else n
        top, bottom = min(top, limit // 2 + limit % 2), min(bottom, limit // 2)
        lines = lines[top:n - bottom]
        img = lines if axis == 0 else lines.T
    return img


def _box(img: np.ndarray, r0: float, r1: float, c0: float, c1: float) -> np.ndarray:
    h, w = img.shape
    top, left = int(r0 * h), int(c0 * w)
    return img[top:max(int(r1 * h), top + 1), left:max(int(c1 * w), left + 1)]


def mediastinum_lungs(img: np.ndarray) -> float:
    """Mean of the central (mediastinum/spine) column minus the mean of two lung-field boxes:
    positive for a frontal chest shown lungs-dark / bone-bright (the first cue)."""
    lungs = np.concatenate([_box(img, .30, .65, .15, .35).ravel(), _box(img, .30, .65, .65, .85).ravel()])
    return float(_box(img, .30, .65, .45, .55).mean() - lungs.mean())


def cues(content: np.ndarray) -> dict[str, float]:
    """The three cues (module docstring) of a display image in [0, 1] (no padding)."""
    img: np.ndarray = np.asarray(content, np.float32)
    h, w = img.shape
    scale = ANALYSIS_SIDE / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    img = _trim_edges(img)
    lungs = np.concatenate([_box(img, .30, .65, .15, .35).ravel(), _box(img, .30, .65, .65, .85).ravel()])
    corners = np.concatenate([_box(img, 0, .12, 0, .15).ravel(), _box(img, 0, .12, .85, 1).ravel()])
    median = float(np.median(img))
    return {"mediastinum-lungs": mediastinum_lungs(img),
            "corners-image": float(np.median(corners)) - median,
            "below-lungs": float(_box(img, .85, 1, .30, .70).mean() - lungs.mean())}


def check_polarity(content: np.ndarray) -> PolarityCheck:
    """The verdict on one display image (the cached image without its padding)."""
    measured = cues(content)
    score = float(sum(CUE_WEIGHTS[k] * v for k, v in measured.items()))
    verdict: Verdict = "as-shown" if score >= AS_SHOWN_FROM else ("inverted" if score <= INVERTED_TO else "unsure")
    return PolarityCheck(verdict, score, measured)
