"""Workflows that compose stages which may not import each other: `fibrosis tune`
(train.tune's cross-validation judged by evaluate.selection, then packaged and calibrated)."""
