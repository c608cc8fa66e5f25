"""`fibrosis tune`, training side: how much of the backbone to fine-tune, by patient-level CV.

Read in this order: ``arms`` (what each arm trains), ``context`` (what the units share),
``activations`` (the frozen prefix run once), ``models``, ``unit`` and ``train_unit`` (one
fold x arm), ``results`` (an arm's pooled out-of-fold curves and budget), ``tta``
(test-time-augmentation twins), ``cv`` (every unit, the finalists' repeats) and ``package``
(OUT/best.pt). Judging the arms is inference statistics and lives in
fibrosis.evaluate.selection; the `tune` command (fibrosis.pipeline.tune) composes the two.
"""
from fibrosis._exports import lazy

# Lazy: importing the package loads none of its torch-heavy modules.
_EXPORTS = {
    "CVResult": "fibrosis.train.tune.cv",
    "cross_validate": "fibrosis.train.tune.cv",
    "extend_repeats": "fibrosis.train.tune.cv",
    "setup": "fibrosis.train.tune.cv",
    "ArmResult": "fibrosis.train.tune.results",
}
# ``package`` is not re-exported: the submodule of that name would shadow the function once imported.
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
