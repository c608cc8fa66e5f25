"""Stage 3b, evaluate: discrimination, calibration, operating points and subgroups on a held-out split."""
from fibrosis._exports import lazy

_EXPORTS = {
    "evaluate_run": "fibrosis.evaluate.run",
    "evaluate_predictions": "fibrosis.evaluate.run",
    "compare_runs": "fibrosis.evaluate.compare",
    "auc_delong": "fibrosis.evaluate.metrics",
}
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
