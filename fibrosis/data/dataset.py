"""Torch Dataset over cache rows: resize to the model input, augment, normalise gray.

Augmentation is seeded per (seed, epoch, row), not by a worker's RNG stream, so the
images a model sees do not depend on the number of DataLoader workers or processes,
and a resumed run sees exactly what an uninterrupted one would have seen.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from fibrosis.data.cache import CacheReader
from fibrosis.data.manifest import ManifestRow
from fibrosis.data.records import Preprocessing, require_label
from fibrosis.config import AugmentConfig


def build_augment(acfg: AugmentConfig) -> A.Compose | None:
    """Chest-radiograph augmentation: small affine, brightness/contrast, gamma, noise.

    No vertical flip ever (lungs are not upside down); horizontal flip only on request
    (the heart is on the left: situs is anatomy, not noise).
    """
    if not acfg.enabled:
        return None
    t = acfg.affine_translate
    ops: list[Any] = [
        A.Affine(rotate=(-acfg.affine_degrees, acfg.affine_degrees), scale=acfg.affine_scale,
                 translate_percent=(-t, t), border_mode=cv2.BORDER_CONSTANT, fill=0, p=acfg.p),
        A.RandomBrightnessContrast(acfg.brightness_contrast, acfg.brightness_contrast, p=acfg.p),
        A.RandomGamma(gamma_limit=(acfg.gamma[0] * 100, acfg.gamma[1] * 100), p=acfg.p),
        A.GaussNoise(std_range=(0.0, acfg.noise_std), p=acfg.p),
    ]
    if acfg.horizontal_flip:
        ops.append(A.HorizontalFlip(p=0.5))
    return A.Compose(ops, seed=0)


_SHRINK = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def resize(img: np.ndarray, size: int, method: str = "area") -> np.ndarray:
    """Square cache image -> size x size; ``method`` (config.ResizeMethod) when shrinking,
    bilinear when enlarging."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    if method not in _SHRINK:
        raise ValueError(f"resize method {method!r}; allowed: {sorted(_SHRINK)}")
    interp = _SHRINK[method] if size < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def normalise(img01: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    return (img01 - np.float32(preprocessing.mean)) / np.float32(preprocessing.std)


def model_array(img01: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """A [0, 1] cache image -> the (S, S) model input, un-augmented: what evaluation, scoring
    and Grad-CAM feed (CacheDataset augments between the same two steps)."""
    return normalise(resize(img01, preprocessing.input_size, preprocessing.resize), preprocessing)


def row_label(row: ManifestRow) -> float:
    return float(require_label(row.label, row.path or "?", "ingest with labels to train"))


Sample = tuple[torch.Tensor, ...]  # image, label (, auxiliary targets)


class CacheDataset(Dataset[Sample]):
    """Item ``k`` -> (float tensor (1, S, S) normalised, label) for row ``indices[k]``, and
    its auxiliary targets (K,) (NaN = missing) as a third element when ``aux`` is given."""

    def __init__(self, reader: CacheReader, indices: Sequence[int], preprocessing: Preprocessing,
                 augment: A.Compose | None = None, seed: int = 0, labels: bool = True,
                 aux: np.ndarray | None = None):
        self.reader, self.indices = reader, list(indices)
        self.size = preprocessing.input_size
        self.preprocessing = preprocessing
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.labels = [row_label(reader.rows[i]) for i in self.indices] if labels else None
        if aux is not None and len(aux) != len(self.indices):
            raise ValueError(f"aux targets for {len(aux)} rows; the dataset has {len(self.indices)}")
        self.aux = None if aux is None else torch.as_tensor(np.asarray(aux, np.float32))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Sample:
        row = self.indices[k]
        img = resize(self.reader.image(row), self.size, self.preprocessing.resize)
        if self.augment is not None:
            seq = np.random.SeedSequence([self.seed, self.epoch, row])
            self.augment.set_random_seed(int(seq.generate_state(1)[0]))
            img = np.clip(self.augment(image=img)["image"], 0.0, 1.0)
        x = torch.from_numpy(np.ascontiguousarray(normalise(img, self.preprocessing)))[None]
        y = torch.tensor(self.labels[k] if self.labels is not None else float("nan"))
        return (x, y) if self.aux is None else (x, y, self.aux[k])


class EpochSampler(DistributedSampler[int]):
    """DistributedSampler (also for one process) with an optional class-balanced mode.

    ``balanced``: draws len(dataset) items with replacement, positives and negatives
    equally likely overall; the draw is seeded by (seed, epoch) and sliced per rank
    exactly like DistributedSampler, so DDP ranks see disjoint parts of one draw.
    """

    def __init__(self, labels: Sequence[float], *, balanced: bool, seed: int,
                 num_replicas: int = 1, rank: int = 0, shuffle: bool = True):
        # The sampler reads only len() of its dataset; torch's hint asks for a Dataset.
        super().__init__(range(len(labels)), num_replicas=num_replicas, rank=rank,  # type: ignore[arg-type]
                         shuffle=shuffle, seed=seed)
        self.balanced = balanced
        y = torch.tensor(list(labels), dtype=torch.float64)
        n_pos = float(y.sum())
        if balanced and (n_pos == 0 or n_pos == len(y)):
            raise ValueError(f"balanced sampling needs both classes; got {int(n_pos)} positives "
                             f"of {len(y)}")
        self.weights = torch.where(y > 0.5, 0.5 / max(n_pos, 1), 0.5 / max(len(y) - n_pos, 1))

    def __iter__(self) -> Iterator[int]:
        if not self.balanced:
            return super().__iter__()
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(self.weights, len(self.weights), True, generator=g).tolist()
        idx += idx[: self.total_size - len(idx)]
        return iter(idx[self.rank:self.total_size:self.num_replicas])


def pos_weight(labels: Sequence[float]) -> float:
    """n_neg / n_pos for BCEWithLogits: the rare positive class counts as much as the rest."""
    n_pos = sum(1 for v in labels if v > 0.5)
    if n_pos == 0:
        raise ValueError(f"no positive training rows among {len(labels)}: cannot train")
    return (len(labels) - n_pos) / n_pos


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return math.ceil(math.ceil(n / world) / batch_size)
