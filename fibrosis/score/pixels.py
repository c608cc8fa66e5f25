"""What the model sees of a cached image, and the Grad-CAM overlay drawn on it: shared by
`score`'s rows, its PNG overlays and the DICOM Secondary Captures."""
from __future__ import annotations

import numpy as np

from fibrosis.data.cache import DTYPES
from fibrosis.data.dataset import model_array
from fibrosis.data.records import Preprocessing


def model_input(stored: np.ndarray, cache_dtype: str, preprocessing: Preprocessing) -> np.ndarray:
    """Quantised cache image -> (1, S, S) float32 model input, exactly as training saw it
    (``CacheReader.image`` then ``CacheDataset`` without augmentation)."""
    img = stored.astype(np.float32) / float(np.iinfo(DTYPES[cache_dtype]).max)
    return np.ascontiguousarray(model_array(img, preprocessing), np.float32)[None]


def overlay(x: np.ndarray, cam: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """BGR uint8: the model input (de-normalised gray) under a JET heat map of ``cam``."""
    import cv2

    gray = np.clip(x * preprocessing.std + preprocessing.mean, 0, 1)
    base = cv2.cvtColor((gray * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(base, 0.6, heat, 0.4, 0)
