"""Frozen-prefix activations: what lets `fibrosis tune` train many (fold, arm) models on a CPU.

The blocks an arm does not fine-tune are a fixed function (eval-mode BatchNorm), so their
output for a development image is computed once and shared by every fold and every arm with
that backbone:

- the *plain* inputs (no augmentation): every arm's out-of-fold predictions, and the pooled
  features the linear probes are solved on;
- one *augmented view per epoch* for the fine-tuning arms: epoch ``e`` of every fold trains on
  view ``e`` of its images, drawn exactly as `fibrosis train`'s dataset draws them (the
  training transforms of ``train.augment``, seeded by (tune.seed, e, manifest row)).

Whatever does not fit in ``tune.cache_mb`` is recomputed per batch from the images with the
same seeds, so the two paths feed the same inputs and differ only in cost: the views cost
``max_epochs`` frozen passes over the development images once per backbone, recomputing costs
one frozen pass per fold, epoch and arm over that fold's training images.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader

from fibrosis.data.cache import CacheReader
from fibrosis.data.dataset import CacheDataset
from fibrosis.model.net import FibrosisNet
from fibrosis.train.stages import forward_from, forward_range, n_groups

logger = logging.getLogger(__name__)

LOAD_BATCH = 64  # images per frozen forward pass


class Activations:
    """Frozen-prefix activations of the development rows ``dev`` for one backbone.

    ``features``: pooled plain features (len(dev), F), float64. :meth:`plain` gives the plain
    input of group ``start``, :meth:`augmented` that of epoch ``e``'s view; both take
    development positions (indices into ``dev``).
    """

    def __init__(self, model: FibrosisNet, reader: CacheReader, dev: Sequence[int], starts: Sequence[int],
                 cache_mb: int, *, augment: A.Compose | None = None, seed: int = 0, epochs: int = 0,
                 channels_last: bool = False):
        self.model, self.reader, self.dev = model, reader, list(dev)
        self.starts = sorted(set(starts))
        self.augment, self.seed, self.epochs = augment, seed, epochs
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.pos = {r: k for k, r in enumerate(self.dev)}
        self.n_groups = n_groups(model)
        model.eval()
        size = model.preprocessing.input_size
        with torch.inference_mode():
            per_image = sum(int(np.prod(forward_range(model, torch.zeros(1, 1, size, size), 0, s).shape[1:]))
                            for s in self.starts) * 4 / 2**20
        plain_mb = len(self.dev) * per_image
        views = self.epochs if self.augment is not None else 0
        self.keep = plain_mb <= cache_mb
        self.keep_views = views > 0 and plain_mb * (1 + views) <= cache_mb
        if self.starts and not self.keep:
            logger.info("frozen-prefix activations would take %.0f MB > tune.cache_mb=%d: recomputed per batch",
                        plain_mb, cache_mb)
        elif views and not self.keep_views:
            logger.info("%d augmented views would take %.0f MB more (tune.cache_mb=%d): the fine-tuning arms "
                        "recompute each batch's view", views, plain_mb * views, cache_mb)
        kept, feats = self._pass(self.dev, None, self.keep)
        self.features = torch.cat(feats).numpy().astype(np.float64)
        self.at = kept
        self._views: list[dict[int, torch.Tensor]] | None = None

    # ---------------------------------------------------------------- passes over images

    def _images(self, rows: Sequence[int], epoch: int | None) -> Iterator[torch.Tensor]:
        """Model inputs of manifest ``rows``: plain, or epoch ``epoch``'s augmented view."""
        ds = CacheDataset(self.reader, rows, self.model.preprocessing,
                          augment=self.augment if epoch is not None else None, seed=self.seed, labels=False)
        ds.set_epoch(epoch or 0)
        for x, _ in DataLoader(ds, batch_size=LOAD_BATCH, shuffle=False, num_workers=0):
            yield x.contiguous(memory_format=self.fmt)

    def _pass(self, rows: Sequence[int], epoch: int | None, keep: bool
              ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor]]:
        """One frozen pass: the inputs of every start (if ``keep``) and the pooled features."""
        kept: dict[int, list[torch.Tensor]] = {s: [] for s in self.starts}
        feats = []
        for x in self._images(rows, epoch):
            with torch.no_grad():  # not inference_mode: kept activations feed autograd later
                h, at = x, 0
                for s in self.starts:
                    h, at = forward_range(self.model, h, at, s), s
                    if keep:
                        kept[s].append(h.clone())
                feats.append(forward_from(self.model, h, at).float())
        return ({s: torch.cat(v) for s, v in kept.items()} if keep else {}), feats

    def _prefix(self, rows: Sequence[int], epoch: int | None, start: int) -> torch.Tensor:
        x = torch.cat(list(self._images(rows, epoch)))
        with torch.no_grad():  # not inference_mode: the suffix trains on these in autograd
            return forward_range(self.model, x, 0, start)

    # ---------------------------------------------------------------- batches

    def plain(self, start: int, positions: Sequence[int]) -> torch.Tensor:
        """Un-augmented inputs of group ``start`` for development ``positions``."""
        if self.keep:
            return self.at[start][list(positions)]
        return self._prefix([self.dev[p] for p in positions], None, start)

    def build_views(self) -> int:
        """Compute and keep every epoch's augmented view now (when they fit); returns how many."""
        if self.keep_views and self._views is None:
            self._views = [self._pass(self.dev, e, True)[0] for e in range(self.epochs)]
        return len(self._views or [])

    def augmented(self, start: int, epoch: int, positions: Sequence[int]) -> torch.Tensor:
        """Inputs of group ``start`` for epoch ``epoch``'s augmented view of ``positions``."""
        if self.augment is None:
            return self.plain(start, positions)
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"augmented view of epoch {epoch}; views exist for epochs 0..{self.epochs - 1}")
        if self.keep_views:
            self.build_views()
            assert self._views is not None  # build_views keeps them when keep_views
            return self._views[epoch][start][list(positions)]
        return self._prefix([self.dev[p] for p in positions], epoch, start)


def estimate_batchnorm(model: FibrosisNet, reader: CacheReader, rows: Sequence[int], batch_size: int = 32) -> None:
    """Set every BatchNorm's running statistics to their average over ``rows`` (plain images):
    a randomly initialised network has no statistics of its own (mean 0, variance 1 would let
    activations vanish or saturate through the depth, giving every image the same output), and
    frozen, data-estimated statistics make its random features a fair control. Labels are not
    used. Leaves the model in eval mode."""
    ds = CacheDataset(reader, rows, model.preprocessing, augment=None, labels=False)
    loader = ((x,) for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0))
    torch.optim.swa_utils.update_bn(loader, model)
    model.eval()
