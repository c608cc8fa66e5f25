"""Stage 4, report: the validation report (HTML, the PDF rendered from it, metrics.json)."""
from fibrosis._exports import lazy

_EXPORTS = {
    "write_report": "fibrosis.report.build",
}
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
