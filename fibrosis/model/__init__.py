"""Stage 2, model: the network and its architecture registry, checkpoints, inference, calibrators, CAM."""
from fibrosis._exports import lazy

_EXPORTS = {
    "build_model": "fibrosis.model.net",
    "WeightsError": "fibrosis.model.net",
    "build_model_from_config": "fibrosis.model.net",
    "FibrosisNet": "fibrosis.model.net",
    "EnsembleNet": "fibrosis.model.ensemble",
    "Checkpoint": "fibrosis.model.checkpoint",
    "load_model": "fibrosis.model.checkpoint",
    "load_checkpoint": "fibrosis.model.checkpoint",
    "save_checkpoint": "fibrosis.model.checkpoint",
    "select_engine": "fibrosis.model.engine",
    "compute_cams": "fibrosis.model.cam",
    "Calibrator": "fibrosis.model.calibration",
    "make_calibrator": "fibrosis.model.calibration",
    "calibrator_from_record": "fibrosis.model.calibration",
    "CalibrationRecord": "fibrosis.model.calibration",
    "ThresholdRecord": "fibrosis.model.threshold",
}
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
