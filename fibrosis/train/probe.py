"""Linear probe: the head fitted to convergence on frozen features (L2 logistic regression).

A few epochs of SGD on a frozen backbone stop wherever the budget ends; the probe's
optimum is well defined, so it is solved (L-BFGS) rather than trained. Its L2 strength
is chosen by grouped inner cross-validation inside the training part of each outer fold
(pooled log-loss after Platt recalibration, :func:`calibrated_log_loss`: with a handful of
positives per inner fold a loss is far less noisy than an AUC). Positives are weighted n_neg / n_pos, the ``pos_weight`` that
fine-tuning then uses, so LP-FT continues from the optimum of the same objective.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from fibrosis.config import ProbeCriterion
from fibrosis.numeric import fit_logistic

logger = logging.getLogger(__name__)

MAX_ITER = 5000


@dataclass(frozen=True)
class Probe:
    weight: np.ndarray  # (num_features,) on the raw (unstandardised) features
    bias: float
    c: float  # chosen inverse L2 strength (on standardised features)
    inner_loss: dict[float, float]  # C -> inner-CV criterion (lower is better)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        return np.asarray(feats, np.float64) @ self.weight + self.bias

    def grid_end(self) -> str:
        """"lower" or "upper" when the chosen C lies at that end of a grid of two or more; else ""."""
        if len(self.inner_loss) < 2:
            return ""
        return "lower" if self.c == min(self.inner_loss) else "upper" if self.c == max(self.inner_loss) else ""


def log_grid_ends(probes: Sequence[Probe], grid: Sequence[float]) -> None:
    """One warning for the probes whose C lies at an end of ``grid`` (tune.probe_c): each fold's
    probe is fitted on its own, and one line per fold said the same thing five times over."""
    ends = [p.grid_end() for p in probes]
    hits = {end: ends.count(end) for end in ("lower", "upper") if end in ends}
    if hits:
        where = " and ".join(f"the {end} end in {n} of {len(ends)} fits" for end, n in hits.items())
        logger.warning("linear probe: C chosen at %s of tune.probe_c %s: the optimum may lie beyond it; "
                       "extend the grid", where, sorted(grid))


def weighted_log_loss(y: np.ndarray, z: np.ndarray, pos_weight: float) -> float:
    """Mean BCE-with-logits with positives weighted ``pos_weight`` (as BCEWithLogitsLoss)."""
    y, z = np.asarray(y, float), np.asarray(z, float)
    loss = pos_weight * y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)
    return float(loss.mean())


def calibrated_log_loss(y: np.ndarray, z: np.ndarray) -> float:
    """Mean log-loss of logits ``z`` after Platt recalibration (a + b z, unweighted, fitted on
    them): the loss of the probabilities a deployed model outputs, since `fibrosis tune` fits
    exactly that calibrator on its pooled out-of-fold logits.

    Why not the raw (class-weighted) loss: it also judges the logits' scale, which Platt
    removes. With weak features it is minimised by shrinking every logit towards a constant,
    so it picked the grid's strongest L2 for the linear probe (C = 1e-6 on the NIH sample,
    where the ranking is far better at C ~ 1e-3) and stopped fine-tuning at epoch 2 of a
    curve whose AUC kept rising to epoch 10. Judged after recalibration, only ranking and
    calibratable spread count."""
    y, z = np.asarray(y, float), np.asarray(z, float)
    sd = z.std()
    # The loss is invariant to a + b z; standardising keeps Newton's steps well conditioned
    # for the near-constant logits of a strongly regularised probe.
    z = (z - z.mean()) / sd if sd > 0 else np.zeros_like(z)
    (a, b), _, _ = fit_logistic(z, y)
    return weighted_log_loss(y, a + b * z, 1.0)


def _fit(x: np.ndarray, y: np.ndarray, c: float, pos_weight: float) -> LogisticRegression:
    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER, tol=1e-7,
                             class_weight={0: 1.0, 1: pos_weight})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below, with the C
        clf.fit(x, y)
    if int(clf.n_iter_[0]) >= MAX_ITER:  # "to convergence" is the point: say when it is not
        logger.warning("linear probe: L-BFGS did not converge in %d iterations at C=%g", MAX_ITER, c)
    return clf


def _inner_score(criterion: str, y: np.ndarray, z: np.ndarray) -> float:
    """Lower is better: the calibrated log-loss, or 1 - AUC."""
    if criterion == "calibrated-loss":
        return calibrated_log_loss(y, z)
    if criterion == "auc":
        return 1.0 - float(roc_auc_score(y, z))
    raise ValueError(f"tune.probe_criterion={criterion!r}; allowed: {list(get_args(ProbeCriterion))}")


def fit_probe(feats: np.ndarray, y: Sequence[int] | np.ndarray, groups: Sequence[str], c_grid: Sequence[float],
              inner_folds: int, seed: int = 0, quiet: bool = False, *,
              criterion: str = "calibrated-loss", standardise: bool = True) -> Probe:
    """Fit the head on ``feats`` (n, d); C chosen by inner grouped CV over ``groups`` by
    ``criterion`` (tune.probe_criterion). ``standardise``: the L2 penalty acts on features
    scaled to unit variance (else on the raw features). ``quiet``: a C at the end of the
    grid is logged at debug level (the caller says it once for all folds: :func:`log_grid_ends`)."""
    x = np.asarray(feats, np.float64)
    y = np.asarray(y, int)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(f"linear probe: {n_pos} positives of {len(y)} training rows; both classes needed")
    pw = (len(y) - n_pos) / n_pos
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)  # dead (always-zero) features stay zero, no division by 0
    if not standardise:
        mu, sd = np.zeros_like(mu), np.ones_like(sd)
    xs = (x - mu) / sd
    pos_groups = len({g for g, v in zip(groups, y) if v})
    k = min(inner_folds, pos_groups)
    losses: dict[float, float] = {}
    if len(c_grid) > 1 and k >= 2:
        splits = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(xs, y, groups))
        for c in c_grid:
            z = np.empty(len(y))
            for tr, ho in splits:
                z[ho] = _fit(xs[tr], y[tr], c, pw).decision_function(xs[ho])
            losses[float(c)] = _inner_score(criterion, y, z)
        # Smallest loss; on a tie the stronger regularisation (smaller C) wins.
        best = min(sorted(losses), key=lambda c: (round(losses[c], 10), c))
    else:
        best = float(c_grid[0])
    clf = _fit(xs, y, best, pw)
    w = clf.coef_[0] / sd
    b = float(clf.intercept_[0] - (w * mu).sum())
    probe = Probe(w, b, best, losses)
    if probe.grid_end():
        (logger.debug if quiet else logger.warning)(
            "linear probe: C=%g chosen at the %s end of tune.probe_c %s: the optimum may lie beyond it; extend "
            "the grid", best, probe.grid_end(), sorted(losses))
    return probe


REFERENCE_CS = 10  # LogisticRegressionCV's defaults: 10 values of C from 1e-4 to 1e4, ...
REFERENCE_FOLDS = 5  # ... and 5 inner folds


def fit_reference(feats: np.ndarray, y: Sequence[int] | np.ndarray, groups: Sequence[str], seed: int = 0,
                  inner_folds: int = REFERENCE_FOLDS) -> Probe:
    """The plain baseline a team would write without this tool: scikit-learn's
    ``StandardScaler`` + ``LogisticRegressionCV`` (its default C grid, C by inner-CV AUC,
    ``class_weight="balanced"``) on the pooled features. The inner folds are grouped by
    patient (plain StratifiedKFold would put a patient's images on both sides); otherwise
    scikit-learn's defaults, so the arm measures what the obvious recipe gives."""
    x = np.asarray(feats, np.float64)
    y = np.asarray(y, int)
    k = min(inner_folds, len({g for g, v in zip(groups, y) if v}))
    if k < 2:
        raise ValueError(f"reference probe: {int(y.sum())} positives in fewer than 2 patient groups")
    splits = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y, groups))
    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9 announcing 1.10's attribute layout
        clf = LogisticRegressionCV(Cs=REFERENCE_CS, cv=splits, scoring="roc_auc", class_weight="balanced",
                                   max_iter=MAX_ITER).fit(scaler.transform(x), y)
    sd = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w = clf.coef_[0] / sd
    b = float(clf.intercept_[0] - (w * scaler.mean_).sum())
    # (folds, Cs) inner AUCs: a dict by class up to scikit-learn 1.9, an array after
    scores = clf.scores_[1] if isinstance(clf.scores_, dict) else np.asarray(clf.scores_).reshape(len(splits), -1)
    inner = {float(c): 1.0 - float(a) for c, a in zip(clf.Cs_, np.asarray(scores).mean(0))}
    return Probe(w, b, float(np.ravel(clf.C_)[0]), inner)
