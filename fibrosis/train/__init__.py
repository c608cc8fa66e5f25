"""Stage 3a, train: freeze-then-unfreeze fine-tuning on a cache."""
from fibrosis._exports import lazy

_EXPORTS = {
    "train": "fibrosis.train.loop",
    "resolve_stages": "fibrosis.train.schedule",
    "freeze": "fibrosis.train.schedule",
    "make_optimizer": "fibrosis.train.schedule",
    "cross_validate": "fibrosis.train.tune",
    "make_folds": "fibrosis.train.folds",
}
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
