import dataclasses

import albumentations as A
import numpy as np
import pytest
import torch

from fibrosis.data.cache import CacheReader
from fibrosis.config import AugmentConfig
from fibrosis.data.dataset import (CacheDataset, EpochSampler, build_augment, pos_weight, resize,
                              row_label)
from fibrosis.data.manifest import ManifestRow
from fibrosis.data.records import Preprocessing
from fibrosis.data.synthetic import make_synthetic_cache

PRE = Preprocessing(input_size=16, in_chans=1, mean=0.5, std=0.25, rgb_mean=(0.5,) * 3, rgb_std=(0.25,) * 3,
                    gray_fold="summed", resize="area")


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    root = make_synthetic_cache(tmp_path_factory.mktemp("c") / "cache", 12, 32, pos_frac=0.5)
    return CacheReader(root)


def test_plain_item_is_resized_and_normalised(reader):
    ds = CacheDataset(reader, [3, 5], PRE)
    x, y = ds[1]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    expect = (resize(reader.image(5), 16) - 0.5) / 0.25
    assert np.allclose(x[0].numpy(), expect, atol=1e-6)
    assert y.item() == reader.rows[5].label


def test_resize_averages_when_shrinking():
    img = np.zeros((4, 4), np.float32)
    img[:2, :2] = 1.0
    assert resize(img, 2).tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_resize_method_travels_with_the_preprocessing(reader):
    """model.resize: bilinear sampling aliases fine texture where area averaging does not (a 1-pixel
    checkerboard shrunk by 3 averages to gray by area, and keeps contrast bilinearly)."""
    board = (np.indices((12, 12)).sum(0) % 2).astype(np.float32)
    assert np.ptp(resize(board, 4, "area")) < 0.2 < np.ptp(resize(board, 4, "linear"))
    with pytest.raises(ValueError, match=r"resize method 'cubic'; allowed: \['area', 'linear'\]"):
        resize(board, 4, "cubic")
    linear = dataclasses.replace(PRE, resize="linear", input_size=10)
    x = CacheDataset(reader, [5], linear)[0][0]
    assert np.allclose(x[0].numpy(), (resize(reader.image(5), 10, "linear") - 0.5) / 0.25, atol=1e-6)


def test_older_preprocessing_records_read_as_the_summed_fold_and_area_resize():
    old = {**PRE.to_dict(), "gray_fold": "first conv weights summed over RGB; gray replicated x3 == folded",
           "resize": "cv2.INTER_AREA from the cache image to input_size x input_size"}
    rec = Preprocessing.from_dict(old, "old.pt")
    assert (rec.gray_fold, rec.resize) == ("summed", "area")
    with pytest.raises(ValueError, match=r"old.pt: preprocessing gray_fold='rgb'; expected one of \['rgb-stem', 'summed'\]"):
        Preprocessing.from_dict({**old, "gray_fold": "rgb"}, "old.pt")


def test_augmentation_is_seeded_by_seed_epoch_and_row(reader):
    aug = build_augment(AugmentConfig(p=1.0))
    ds = CacheDataset(reader, list(range(12)), PRE, augment=aug, seed=7)
    a, b = ds[4][0], ds[4][0]
    assert torch.equal(a, b)
    plain = CacheDataset(reader, list(range(12)), PRE)[4][0]
    assert not torch.equal(a, plain)
    ds.set_epoch(1)
    assert not torch.equal(ds[4][0], a)
    other = CacheDataset(reader, [4], PRE, augment=build_augment(AugmentConfig(p=1.0)), seed=7)
    assert torch.equal(other[0][0], a)  # independent of position in the list / worker


def test_augment_pipeline_has_no_vertical_flip():
    kinds = {type(t) for t in build_augment(AugmentConfig()).transforms}
    assert A.VerticalFlip not in kinds and A.HorizontalFlip not in kinds
    assert {A.Affine, A.RandomBrightnessContrast, A.RandomGamma, A.GaussNoise} <= kinds
    assert A.HorizontalFlip in {type(t) for t in build_augment(AugmentConfig(horizontal_flip=True)).transforms}
    assert build_augment(AugmentConfig(enabled=False)) is None


def test_sampler_ranks_partition_one_permutation():
    labels = [0.0] * 7 + [1.0] * 3
    parts = [list(EpochSampler(labels, balanced=False, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(10))
    s = EpochSampler(labels, balanced=False, seed=3)
    first = list(s)
    s.set_epoch(1)
    assert sorted(list(s)) == list(range(10)) and list(s) != first


def test_balanced_sampler_draws_classes_equally_and_reproducibly():
    labels = [0.0] * 95 + [1.0] * 5
    s = EpochSampler(labels, balanced=True, seed=0)
    draws = []
    for epoch in range(20):
        s.set_epoch(epoch)
        draws += list(s)
    frac = np.mean([labels[i] for i in draws])
    assert 0.45 < frac < 0.55
    s.set_epoch(3)
    assert list(s) == draws[300:400]
    r0 = EpochSampler(labels, balanced=True, seed=0, num_replicas=2, rank=0)
    r1 = EpochSampler(labels, balanced=True, seed=0, num_replicas=2, rank=1)
    assert len(list(r0)) == len(list(r1)) == 50
    with pytest.raises(ValueError, match="both classes"):
        EpochSampler([0.0, 0.0], balanced=True, seed=0)


def test_pos_weight_and_labels():
    assert pos_weight([1, 0, 0, 0]) == 3.0
    with pytest.raises(ValueError, match="no positive"):
        pos_weight([0, 0])
    with pytest.raises(ValueError, match="a.dcm: label=''"):
        row_label(ManifestRow(path="a.dcm"))
