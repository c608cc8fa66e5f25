"""Batched inference over cache rows: logits (for evaluation) and pooled features."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from fibrosis import artefacts
from fibrosis.data.cache import CacheReader
from fibrosis.data.manifest import ManifestRow, read_manifest

from fibrosis.data.dataset import CacheDataset

if TYPE_CHECKING:
    from fibrosis.model.ensemble import EnsembleNet
    from fibrosis.model.net import FibrosisNet

logger = logging.getLogger(__name__)

ALL_ROWS = "all"  # = fibrosis.evaluate.checks.ALL


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _run(fn: Callable[[torch.Tensor], torch.Tensor], model: FibrosisNet | EnsembleNet, reader: CacheReader,
         indices: Sequence[int], batch_size: int, device: str | torch.device,
         num_workers: int, amp: bool, channels_last: bool) -> torch.Tensor:
    device = torch.device(device)
    ds = CacheDataset(reader, indices, model.preprocessing, augment=None, labels=False)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    out = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    try:
        with torch.inference_mode(), autocast(device, amp):
            for x, _ in loader:
                x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
                out.append(fn(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def predict_rows(model: FibrosisNet | EnsembleNet, reader: CacheReader, indices: Sequence[int],
                 batch_size: int, device: str | torch.device, *, num_workers: int = 0,
                 amp: bool = True, channels_last: bool = False) -> np.ndarray:
    """Logits (float32, shape (len(indices),)) of ``reader.rows[i]`` for i in ``indices``."""
    return _run(lambda x: model(x)[:, 0], model, reader, indices, batch_size, device, num_workers, amp,
                channels_last).numpy()


def extract_features(model: FibrosisNet, reader: CacheReader, indices: Sequence[int],
                     batch_size: int, device: str | torch.device, *, num_workers: int = 0,
                     amp: bool = True, channels_last: bool = False, tta: bool = False) -> torch.Tensor:
    """Pooled backbone features (len(indices), num_features), float32 on the CPU.

    ``tta``: the mean features over the model's test-time views (fibrosis.model.tta), if it has
    any. The head is linear (dropout is off in eval), so the head of the mean features is
    exactly the mean TTA logit: validation on cached features sees what deployment sees.
    """
    fn = model.forward_features
    views = model.tta if tta else None
    if views is not None:
        fn = lambda x: views(x, model.forward_features)  # noqa: E731
    return _run(fn, model, reader, indices, batch_size, device, num_workers, amp, channels_last)


def split_rows(cache_dir: str | Path, split: str) -> tuple[list[ManifestRow], list[int]]:
    """All manifest rows and the indices of those in ``split`` ("all": every row, split
    column or not -- another site's cache evaluated as a whole)."""
    path = Path(cache_dir) / artefacts.MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (run `fibrosis ingest` and `fibrosis split`)")
    if split == ALL_ROWS:
        rows = read_manifest(path)
        return rows, list(range(len(rows)))
    rows = read_manifest(path, required=("split",), why="run `fibrosis split` first")
    idx = [i for i, r in enumerate(rows) if r.split == split]
    return rows, idx


