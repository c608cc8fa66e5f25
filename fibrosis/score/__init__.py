"""Stage 3c, score: batch-score studies with a checkpoint's own preprocessing, calibration and threshold."""
from fibrosis._exports import lazy

_EXPORTS = {
    "score": "fibrosis.score.run",
}
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
