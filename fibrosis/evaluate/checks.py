"""Guards of `fibrosis evaluate`: which settings apply, which split may be reported, and
that no patient or image the model was trained or selected on is reported as held out.

Kept apart from ``evaluate`` (numbers) because these are the checks a clinician's
trust rests on: each one refuses with an error that names the split, the counts and
the fix, or (for old checkpoints that cannot be checked) leaves a warning that
travels into metrics.json and the report.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fibrosis.data.manifest import ManifestRow
from fibrosis.config import Config, ConfigError, merge_dicts, config_from_dict, config_to_dict, parse_override

logger = logging.getLogger(__name__)

ALL = "all"  # every manifest row, split column or not: external validation with frozen=True
OVERRIDABLE = ("evaluate",)  # evaluation reads only this section from the config


def resolve_config(ckpt_config: Mapping[str, Any] | None, cfg: Config | None,
                   overrides: Sequence[str] = ()) -> Config:
    """The effective config: ``cfg`` if given (an explicit full config), else the run's own
    resolved config from the checkpoint, with ``overrides`` (``evaluate.KEY=VALUE``) on top.

    Overrides of other sections are refused: evaluation does not read them, and silently
    accepting ``train.*`` here would suggest it changed something.
    """
    data: dict[str, Any] = config_to_dict(cfg) if cfg is not None else dict(ckpt_config or {})
    for text in overrides:
        over = parse_override(text)
        bad = sorted(set(over) - set(OVERRIDABLE))
        if bad:
            raise ConfigError(f"evaluate: override {text!r} sets section {bad[0]!r}, which evaluation does not "
                              f"use; allowed: {', '.join(s + '.*' for s in OVERRIDABLE)}")
        data = merge_dicts(data, over)
    return config_from_dict(data)


def check_evaluated_split(split: str, fit_split: str | None, frozen: bool,
                          stored_fit_split: str | None = None) -> None:
    """Refuse reporting on cases the model, its calibration or its thresholds were fitted on."""
    if split == "train":
        raise ValueError("split='train' was used to fit the model; its numbers say nothing about new "
                         "patients. Report on a held-out split (test), or on another site's cache with "
                         f"frozen=True, split={ALL!r}")
    if split == ALL and not frozen:
        raise ValueError(f"split={ALL!r} (every row of the cache) is allowed only with frozen=True: refitting "
                         "calibration and thresholds needs a separate fit split (val/calib) of the same cache")
    if not frozen and split == fit_split:
        raise ValueError(f"split={split!r} is also the calibration/threshold split; report on a held-out split "
                         "(test) so thresholds are not chosen on the cases they are judged on")
    if frozen and split == stored_fit_split:
        raise ValueError(f"split={split!r} is the split the stored calibration and thresholds were fitted on; "
                         f"report on a held-out split (test) or another site's cache (split={ALL!r})")
    if split == "val":
        raise ValueError("split='val' selected the best checkpoint (early stopping), so its numbers are "
                         "optimistic; report on a held-out split (test)")


def _overlap(keys: Mapping[str, Any], names: Sequence[str], rows: Sequence[ManifestRow]
             ) -> tuple[int, int, int, int]:
    """(patients in the checkpoint's ``names`` splits, patients in rows, images ..., images in rows)."""
    seen_p = set().union(*(keys.get(n, {}).get("patients", ()) for n in names))
    seen_i = set().union(*(keys.get(n, {}).get("images", ()) for n in names))
    pats = {r.patient_key for r in rows} - {""}
    imgs = {r.content_hash for r in rows} - {""}
    return len(pats & seen_p), len(pats), len(imgs & seen_i), len(imgs)


def check_split_isolation(split_keys: Mapping[str, Any], split: str, rows: Sequence[ManifestRow],
                          fit_split: str | None, fit_rows: Sequence[ManifestRow] | None,
                          split_seed: int | None = None) -> None:
    """Refuse when an evaluated patient/image was in the checkpoint's train or val split, or
    a fit-split patient/image was in its train split (val as fit split is by design).

    ``split_keys`` is the checkpoint's {"train"|"val": {"patients": [...], "images": [...]}}.
    Patients catch a re-split; content hashes also catch the same image under another key.
    """
    fix = ("the manifest was probably re-split after training: re-split with the original seed"
           + (f" (split.seed={split_seed})" if split_seed is not None else "")
           + " or evaluate on a fresh cache that shares no patients with training")
    p, np_, i, ni = _overlap(split_keys, ("train", "val"), rows)
    if p or i:
        raise ValueError(f"split {split!r}: {p} of {np_} patient(s) and {i} of {ni} image(s) were in the "
                         f"checkpoint's train or val split, so its numbers would not be held out; {fix}")
    if fit_split is not None and fit_rows:
        p, np_, i, ni = _overlap(split_keys, ("train",), fit_rows)
        if p or i:
            raise ValueError(f"fit split {fit_split!r}: {p} of {np_} patient(s) and {i} of {ni} image(s) were "
                             f"in the checkpoint's train split; calibration and thresholds fitted on training "
                             f"cases are optimistic; {fix}")


def manifest_warning(trained_hash: str | None, current_hash: str, split: str, fit_split: str | None) -> str | None:
    """For checkpoints without ``split_keys``: a warning when the manifest is not the one
    the model was trained on (a re-split could have moved training patients into ``split``)."""
    if trained_hash == current_hash:
        return None
    what = f"the {split!r} split" + (f" and no training patient in the fit split {fit_split!r}" if fit_split else "")
    old = f"sha256 {trained_hash[:12]}..." if trained_hash else "not recorded"
    return (f"manifest differs from the one the model was trained on (evaluated sha256 {current_hash[:12]}..., "
            f"training {old}) and the checkpoint predates recorded train/val patient keys: cannot verify "
            f"that no training or validation patient is in {what}. If this cache was re-split, re-split "
            "with the original seed; retraining records the keys and makes this a hard check")
