"""Stage 5, monitor: drift and performance of scored batches against the validation reference."""
from fibrosis._exports import lazy

_EXPORTS = {
    "monitor": "fibrosis.monitor.run",
    "monitor_result": "fibrosis.monitor.compute",
}
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
