"""Stage 6, review: a local web page to look at scored studies and record a reader's label
(`fibrosis review`): worklist, study view with Grad-CAM, reader labels for ingest and monitor."""
from fibrosis._exports import lazy

_EXPORTS = {
    "serve": "fibrosis.review.server",
    "load_worklist": "fibrosis.review.worklist",
}
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
