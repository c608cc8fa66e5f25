"""Synthetic caches for tests and benchmarks (no patient data, no ../shared needed).

Images are smooth random backgrounds plus noise; positives also carry a patch of fine
stripes (a crude stand-in for reticular texture) at a random place, so a test can
check that training learns something and a benchmark has realistic-looking input.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fibrosis import artefacts
from fibrosis.data.cache import CacheWriter, to_cache_dtype
from fibrosis.data.manifest import ManifestRow, write_manifest
from fibrosis.data.records import format_aux


def synthetic_image(rng: np.random.Generator, size: int, positive: bool) -> np.ndarray:
    """Float image in [0, 1], (size, size)."""
    coarse = rng.random((4, 4)).astype(np.float32)
    img = 0.25 + 0.5 * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0.0, 0.03, (size, size)).astype(np.float32)
    if positive:
        p = max(4, size // 3)
        y, x = rng.integers(0, size - p, 2)
        period = max(4, size // 8)
        stripes = (np.arange(p) // (period // 2 or 1)) % 2
        img[y:y + p, x:x + p] += 0.35 * stripes[:, None].astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def _aux_cell(rng: np.random.Generator, label: int) -> str:
    values = {"Stripes": label if rng.random() < 0.8 else 1 - label, "Noise": int(rng.random() < 0.4)}
    return format_aux({k: v for k, v in values.items() if rng.random() >= 0.2})


def make_synthetic_cache(root: str | Path, n: int, size: int = 64, *, pos_frac: float = 0.3,
                         splits: dict[str, float] | None = None, seed: int = 0,
                         shard_size: int = 64, dtype: str = "uint8", aux: bool = False) -> Path:
    """Write a cache with a ``manifest.csv`` holding label and split columns.

    Splits are assigned per patient (here one image per patient) in the given
    proportions, stratified by label so every split has both classes when n allows.
    ``aux``: also two auxiliary findings in ``aux_labels``: ``Stripes`` (agrees with the
    label 80% of the time) and ``Noise`` (random), each missing for about a fifth of rows.
    """
    splits = splits or {"train": 0.6, "val": 0.2, "test": 0.2}
    rng = np.random.default_rng(seed)
    root = Path(root)
    writer = CacheWriter(root, size, dtype, {"synthetic": True, "seed": seed})
    labels = np.zeros(n, dtype=int)
    labels[rng.permutation(n)[: max(1, round(pos_frac * n))]] = 1
    split_of = np.empty(n, dtype=object)
    names, fracs = list(splits), np.array(list(splits.values()), dtype=float)
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(np.cumsum(fracs / fracs.sum()) * len(members)).astype(int)
        for name, part in zip(names, np.split(members, cuts[:-1])):
            split_of[part] = name
    rows_all = []
    aux_rng = np.random.default_rng([seed, 1])  # its own stream: the images do not depend on ``aux``
    for sid, start in enumerate(range(0, n, shard_size)):
        ids = range(start, min(n, start + shard_size))
        images = [to_cache_dtype(synthetic_image(rng, size, bool(labels[i])), dtype) for i in ids]
        rows = [ManifestRow(path=f"synthetic/{i:06d}.png", content_hash=f"{seed}-{i}",
                            patient_key=f"p{i:06d}", source_format="synthetic", label=int(labels[i]),
                            sex="FM"[i % 2], age=str(30 + i % 50), view_position="PA",
                            split=str(split_of[i] or ""), aux_labels=_aux_cell(aux_rng, int(labels[i])) if aux else "")
                for i in ids]
        rows_all.extend(writer.write_shard(sid, images, rows, []))
    write_manifest(root / artefacts.MANIFEST, rows_all)
    return root
