"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict with ``format == FORMAT``; anything else is refused (a bare
state dict, someone else's pickle). Everything in it is weights_only-safe: tensors and
plain Python containers/scalars (RNG states included, see ``rng_state``), so loading
never executes code from the file.

Keys: format, format_version, model (state dict), optimizer, scheduler, stage,
epoch_in_stage, stage_done, epochs_done, rng, config (resolved, plain dict),
preprocessing, weights_info, pretrained, manifest_hash, best_val_auc, best_epoch,
history, ``aux`` (auxiliary heads: names, loss weight, per-head pos_weight; absent = none),
... and, added later by evaluation, ``calibration`` and ``threshold``.
"""
from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fibrosis.io import atomic_write_bytes

if TYPE_CHECKING:
    from fibrosis.model.ensemble import EnsembleNet
    from fibrosis.model.net import FibrosisNet
    from fibrosis.model.tta import Variant

logger = logging.getLogger(__name__)

FORMAT = "fibrosis-checkpoint"
FORMAT_VERSION = 1
# Fields that define what the model *is*: update_checkpoint refuses to rewrite them.
PROTECTED = frozenset({"format", "format_version", "model", "config", "preprocessing",
                       "weights_info", "pretrained", "manifest_hash", "tta"})


class CheckpointError(ValueError):
    """A file is not a fibrosis checkpoint, or an update would corrupt one."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (+ format marker) to ``path`` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    payload = dict(payload)
    if hasattr(payload.get("preprocessing"), "to_dict"):  # stored as plain data: weights_only loads
        payload["preprocessing"] = payload["preprocessing"].to_dict()
    torch.save({**payload, "format": FORMAT, "format_version": FORMAT_VERSION}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle that needs code, truncated file, not a torch file
        raise CheckpointError(f"{path}: not a loadable fibrosis checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: format={found!r}; expected {FORMAT!r} "
                              f"(written by fibrosis.train.loop)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version={ckpt.get('format_version')!r}; this "
                              f"version reads {FORMAT_VERSION}")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, load its weights, eval mode."""
    from fibrosis.data.records import Preprocessing
    from fibrosis.model.net import build_model, set_aux_heads  # local: keeps checkpoint importable on its own

    ckpt = load_checkpoint(path)
    mcfg = ckpt["config"]["model"]
    prep = Preprocessing.from_dict(ckpt["preprocessing"], str(path))
    # The stem and resize the weights were trained with, not today's defaults.
    shape = {"input_size": prep.input_size, "dropout": mcfg.get("dropout", 0.0), "resize": prep.resize,
             "gray_fold": prep.gray_fold}
    model: FibrosisNet | EnsembleNet
    if ckpt.get("ensemble"):  # `fibrosis tune`: the fold models as one mean-logit ensemble
        from fibrosis.model.ensemble import build_ensemble

        model = build_ensemble(mcfg["arch"], int(ckpt["ensemble"]["members"]), **shape)
    else:
        model = build_model(mcfg["arch"], "none", **shape)
    aux = aux_names(ckpt)
    if aux:  # the heads must exist before their weights load (strict state dict)
        for m in getattr(model, "members", [model]):
            set_aux_heads(m, aux)
        model.aux_names = aux
    model.load_state_dict(ckpt["model"])
    model.preprocessing = prep
    model.weights_info = dict(ckpt["weights_info"])
    model.pretrained = bool(ckpt["pretrained"])
    model.set_tta(checkpoint_tta(ckpt, str(path)))
    return model.to(device).eval(), ckpt


def aux_names(ckpt: dict[str, Any]) -> tuple[str, ...]:
    """The auxiliary findings a checkpoint's model has heads for; () for none."""
    return tuple((ckpt.get("aux") or {}).get("names") or ())
def checkpoint_tta(ckpt: dict[str, Any], source: str) -> tuple[Variant, ...] | None:
    """The TTA variants a checkpoint recorded (``tta``; absent in older files: no TTA)."""
    from fibrosis.model.tta import from_record

    variants = from_record(ckpt.get("tta"), source)
    if variants is None and ckpt["config"]["model"].get("tta"):
        # Written with model.tta on but without its variants: guessing today's defaults
        # could score differently from the model that was evaluated.
        raise CheckpointError(f"{source}: config model.tta=true but no 'tta' variants recorded; "
                              f"retrain or re-package the model")
    return variants


def update_checkpoint(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Add/replace JSON-able fields (e.g. ``calibration``, ``threshold``) atomically."""
    ckpt = load_checkpoint(path)
    bad = sorted(set(fields) & PROTECTED)
    if bad:
        raise CheckpointError(f"{path}: refusing to overwrite {bad}; protected: {sorted(PROTECTED)}")
    for key, value in fields.items():
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: field {key!r} is not JSON-able ({exc}); store plain "
                                  f"dicts/lists/numbers/strings") from None
    ckpt.update(fields)
    save_checkpoint(path, ckpt)
    return ckpt


# ------------------------------------------------------------------ RNG states


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as tensors and plain lists (weights_only-safe)."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the global RandomState is MT19937, whose legacy state is a tuple
    kind, keys, pos, has_gauss, gauss = state
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
