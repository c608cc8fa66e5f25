"""`fibrosis tune`, training side: how much of the backbone to fine-tune, by patient-level CV.

Read in this order: ``arms`` (what each arm trains), ``context`` (what the units share),
``activations`` (the frozen prefix run once), ``models``, ``unit`` and ``train_unit`` (one
fold x arm), ``results`` (an arm's pooled out-of-fold curves and budget), ``tta``
(test-time-augmentation twins), ``cv`` (every unit, the finalists' repeats) and ``package``
(OUT/best.pt). Judging the arms is inference statistics and lives in
fibrosis.evaluate.selection; the `tune` command (fibrosis.pipeline.tune) composes the two.
"""
from fibrosis.train.tune.cv import CVResult, cross_validate, extend_repeats, setup
from fibrosis.train.tune.results import ArmResult
from fibrosis.train.tune.package import package

__all__ = ["ArmResult", "CVResult", "cross_validate", "extend_repeats", "package", "setup"]
