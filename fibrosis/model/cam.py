"""Grad-CAM panels (monai.visualize.GradCAM) for the most confident TP, FP and FN cases.

Grad-CAM shows where the last convolutional block's evidence for the fibrosis logit
lies. It is a sanity check (is the model looking at lung, or at a marker, a tube or
the image border?), not a localisation of disease: the labels are image-level and
NLP-mined, and a heat map over the lung bases does not prove the model "sees" fibrosis.

With test-time augmentation (fibrosis.model.tta) the map is of the *un-augmented* forward
(``forward_plain``, the identity view): a map of the averaged views would mix heat maps
of rotated and scaled images that no longer line up with the image shown under them.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fibrosis.io import atomic_write_bytes
from fibrosis.data.cache import CacheReader

logger = logging.getLogger(__name__)

KINDS = ("TP", "FP", "FN")
PANELS_FILE = "gradcam.npz"


def select_cases(labels: np.ndarray, prob: np.ndarray, threshold: float, per_kind: int) -> dict[str, list[int]]:
    """Indices of the ``per_kind`` most confident TP/FP (highest p) and FN (lowest p) cases."""
    y, p = np.asarray(labels), np.asarray(prob, float)
    pred = p >= threshold
    order_desc, order_asc = np.argsort(-p, kind="stable"), np.argsort(p, kind="stable")
    pick = {
        "TP": [int(i) for i in order_desc if y[i] == 1 and pred[i]],
        "FP": [int(i) for i in order_desc if y[i] == 0 and pred[i]],
        "FN": [int(i) for i in order_asc if y[i] == 1 and not pred[i]],
    }
    return {k: v[:per_kind] for k, v in pick.items()}


def compute_cams(model: nn.Module, x: torch.Tensor, layer: str) -> np.ndarray:
    """Grad-CAM maps (B, H, W) in [0, 1] for the fibrosis logit, at the input resolution.

    ``layer`` is the module name inside ``model`` (e.g. ``backbone.layer4``).
    """
    from monai.visualize import GradCAM

    plain = _Plain(model) if hasattr(model, "forward_plain") else model
    prefix = "model." if plain is not model else ""
    cam = GradCAM(nn_module=plain.eval(), target_layers=prefix + layer)
    with torch.enable_grad():
        maps = cam(x=x.requires_grad_(False), class_idx=0)
    out = maps.detach().float().cpu().numpy()[:, 0]
    return np.nan_to_num(out, nan=0.0)


class _Plain(nn.Module):
    """``model`` with its un-augmented forward: the layer names gain a ``model.`` prefix."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model: Any = model  # a FibrosisNet or EnsembleNet: any module with forward_plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_plain(x)


def gradcam_panels(model: Any, cache: str | Path, test: Any, prob: np.ndarray,
                   threshold: float, out_dir: str | Path, *, per_kind: int = 2) -> dict[str, Any]:
    """Compute the panels for ``test`` (evaluate.Predictions) into ``out_dir/gradcam.npz``;
    returns their description. The report draws the figure (``gradcam.png``) from the
    arrays, so evaluation computes and the report stage alone draws.

    The description carries kind, probability and label only: no identifiers.
    """
    import cv2

    from fibrosis.data.dataset import model_array, resize

    out_dir = Path(out_dir)
    picks = select_cases(test.labels, prob, threshold, per_kind)
    dev = next(model.parameters()).device
    reader = CacheReader(cache, test.rows)
    panels: list[dict[str, Any]] = []
    for kind in KINDS:
        idx = picks[kind]
        if not idx:
            panels.append({"kind": kind, "empty": True})
            continue
        images = [reader.image(i) for i in idx]
        x = torch.from_numpy(np.stack([model_array(im, model.preprocessing) for im in images]))
        cams = compute_cams(model, x[:, None].to(dev), model.cam_layer_name)
        for i, im, cam in zip(idx, images, cams):
            shown = resize(im, min(512, im.shape[0]))
            panels.append({"kind": kind, "image": shown,
                           "cam": cv2.resize(cam, shown.shape[::-1], interpolation=cv2.INTER_LINEAR),
                           "prob": float(prob[i]), "label": int(test.labels[i])})
    save_panels(out_dir / PANELS_FILE, [p for p in panels if not p.get("empty")], per_kind)
    logger.info("Grad-CAM panels: %s", {k: len(v) for k, v in picks.items()})
    return {"image": "gradcam.png", "threshold": threshold, "layer": model.cam_layer_name,
            "method": "Grad-CAM (monai.visualize.GradCAM) of the fibrosis logit, ReLU, min-max scaled",
            "cases": [{"kind": p["kind"], "prob": p["prob"], "label": p["label"]}
                      for p in panels if not p.get("empty")],
            "missing_kinds": [p["kind"] for p in panels if p.get("empty")]}


def save_panels(path: Path, panels: list[dict[str, Any]], per_kind: int) -> None:
    """Panels as arrays (kind, image, cam, prob, label per case) for the report to draw."""
    n = len(panels)
    side = panels[0]["image"].shape if n else (0, 0)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, per_kind=np.int64(per_kind),
        kind=np.array([p["kind"] for p in panels], dtype="U2"),
        image=np.stack([p["image"] for p in panels]).astype(np.float32) if n else np.zeros((0, *side), np.float32),
        cam=np.stack([p["cam"] for p in panels]).astype(np.float32) if n else np.zeros((0, *side), np.float32),
        prob=np.array([p["prob"] for p in panels], float), label=np.array([p["label"] for p in panels], int))
    atomic_write_bytes(path, buf.getvalue())


def load_panels(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(panels, per_kind) written by :func:`save_panels`."""
    with np.load(path, allow_pickle=False) as z:
        panels = [{"kind": str(k), "image": im, "cam": c, "prob": float(p), "label": int(y)}
                  for k, im, c, p, y in zip(z["kind"], z["image"], z["cam"], z["prob"], z["label"])]
        return panels, int(z["per_kind"])
