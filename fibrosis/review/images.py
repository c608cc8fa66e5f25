"""The study view's pixels: the image as the model saw it, windowed, and its Grad-CAM heat map.

An image is decoded from its source file by ingestion's own per-file function (read, checks,
:func:`fibrosis.data.pixels.load_image`, cache quantisation) with the checkpoint's ingest settings,
then put through the model's input transform (:func:`fibrosis.score.pixels.model_input`): what
`score` fed the network, shown de-normalised. A file whose content hash differs from its scores
row changed since it was scored and is not shown. Without a model the image is shown as ingestion
prepares it with the default settings, and there is no heat map.

Decoded images and heat maps are kept in small LRU caches: window/level and the overlay toggle
ask for the same image again and again.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fibrosis.config import IngestConfig
from fibrosis.io import file_sha256
from fibrosis.data.records import Decoded

logger = logging.getLogger(__name__)

CACHED_IMAGES = 64
HEAT_ALPHA = 0.4  # the heat map's opacity: as `score --gradcam` and the Secondary Captures draw it


class ImageUnavailable(Exception):
    """The image cannot be shown (the file is gone, changed, or cannot be decoded): the reason."""


@dataclass(frozen=True)
class Model:
    """What the checkpoint fixes for the view (:class:`fibrosis.score.run.Frozen`) and the network."""

    frozen: Any
    net: Any


def load_model(model: Path) -> Model:
    """A run folder or checkpoint, loaded as `score` loads it (on the CPU)."""
    from fibrosis.model.checkpoint import load_model as load_net
    from fibrosis.score.run import frozen_settings, resolve_checkpoint

    path = resolve_checkpoint(model)
    net, ckpt = load_net(path, "cpu")
    return Model(frozen_settings(ckpt, path, file_sha256(path)), net)


class _Lru(OrderedDict[str, Any]):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key: str, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


def window(gray: np.ndarray, center: float, width: float) -> np.ndarray:
    """uint8 display of ``gray`` (in [0, 1]) through a linear window ``center`` +/- ``width`` / 2."""
    lo = center - width / 2.0
    return (np.clip((gray - lo) / max(width, 1e-6), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def heat_rgba(cam: np.ndarray) -> np.ndarray:
    """BGRA uint8 of a Grad-CAM map in [0, 1]: JET colours at HEAT_ALPHA, so that the page shows over
    the image what :func:`fibrosis.score.pixels.overlay` blends into it."""
    import cv2

    c = np.clip(np.nan_to_num(cam), 0.0, 1.0)
    bgr = cv2.applyColorMap((c * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return np.dstack([bgr, np.full(c.shape, round(HEAT_ALPHA * 255), np.uint8)])


def png(array: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ImageUnavailable("PNG encoding failed")
    return bytes(buf.tobytes())


def _warm_up() -> None:
    import monai.visualize  # noqa: F401  (Grad-CAM's library, imported by fibrosis.model.cam when used)

    import fibrosis.model.cam  # noqa: F401


class Viewer:
    """Pixels for the study view, thread-safe (the server answers requests in a thread pool)."""

    def __init__(self, model: Model | None):
        self.model = model
        self.ingest = model.frozen.ingest if model else IngestConfig()
        self._lock = threading.Lock()
        self._inputs: _Lru = _Lru(CACHED_IMAGES)
        self._cams: _Lru = _Lru(CACHED_IMAGES)
        if model is not None:  # the first overlay would otherwise wait for these imports (seconds)
            threading.Thread(target=_warm_up, name="review-warm-up", daemon=True).start()

    def _input(self, path: str, content_hash: str) -> np.ndarray:
        """The model input (1, S, S) of ``path`` (the cache image when there is no model)."""
        from fibrosis.data.workers import process_file

        res = process_file((path, "", {}), self.ingest)
        if not isinstance(res, Decoded):
            raise ImageUnavailable(f"cannot be decoded now: {getattr(res, 'reason', 'unknown reason')}")
        if content_hash and res.content_hash != content_hash:
            raise ImageUnavailable("the file changed since it was scored (other content hash); not shown")
        if self.model is None:
            return res.image[None].astype(np.float32) / float(np.iinfo(res.image.dtype).max)
        from fibrosis.score.pixels import model_input  # torch, through the model's resize: with a model only

        return model_input(res.image, self.ingest.cache_dtype, self.model.frozen.preprocessing)

    def _cached_input(self, key: str, path: str, content_hash: str) -> np.ndarray:
        with self._lock:
            hit = self._inputs.get(key)
            if hit is not None:
                self._inputs.move_to_end(key)
                return hit
        x = self._input(path, content_hash)
        with self._lock:
            return self._inputs.put(key, x)

    def gray(self, key: str, path: str, content_hash: str) -> np.ndarray:
        """(S, S) float in [0, 1]: what the network saw, de-normalised."""
        x = self._cached_input(key, path, content_hash)
        if self.model is not None:
            prep = self.model.frozen.preprocessing
            x = x * prep.std + prep.mean
        return np.clip(x[0], 0.0, 1.0)

    def cam(self, key: str, path: str, content_hash: str) -> np.ndarray:
        """Grad-CAM of the fibrosis logit (S, S) in [0, 1] for the model input, as `score --gradcam`
        computes it (the un-augmented forward)."""
        import torch

        from fibrosis.model.cam import compute_cams

        if self.model is None:
            raise ImageUnavailable("no model given (--run): no Grad-CAM")
        with self._lock:
            hit = self._cams.get(key)
        if hit is not None:
            return hit
        x = self._cached_input(key, path, content_hash)[None]
        with self._lock:  # one forward and backward pass at a time; torch's own threads do the rest
            net = self.model.net
            cam = compute_cams(net, torch.from_numpy(np.ascontiguousarray(x)), net.cam_layer_name)[0]
            return self._cams.put(key, np.asarray(cam, np.float32))
