"""PixelData whose length does not match Rows x Columns x BitsAllocated/8."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from fibrosis.config import IngestConfig
from fibrosis.data.pixels import InputError, load_image

CFG = IngestConfig(image_size=64, min_side=1)


def _chest(rows: int = 80, cols: int = 64) -> np.ndarray:
    return to_stored(chest_phantom(rows, cols), 12)


# ---------------------------------------------------------------- PixelData length


def test_pixel_data_longer_than_the_header_says_is_refused(tmp_path):
    # 64 x 64 samples written, header says 64 x 60: decoding would shear the rows into stripes.
    p = make_dicom(tmp_path / "w.dcm", _chest(64, 64), bits_stored=12, Columns=60)
    with pytest.raises(InputError, match=r"PixelData has 8192 bytes; expected exactly \(0028,0010\) Rows=64 x "
                                         r"\(0028,0011\) Columns=60 x \(0028,0100\) BitsAllocated=16/8 = 7680") as exc:
        load_image(p, CFG)
    assert exc.value.kind == "error"


def test_pixel_data_with_the_one_padding_byte_is_accepted(tmp_path):
    # 8-bit 63 x 65: 4095 bytes, stored padded to 4096 as DICOM requires an even length.
    px = (chest_phantom(63, 65) * 255).astype(np.uint8)
    p = make_dicom(tmp_path / "odd.dcm", px)
    assert load_image(p, CFG).image.shape == (64, 64)
    q = make_dicom(tmp_path / "odd2.dcm", np.concatenate([px.ravel(), np.zeros(3, np.uint8)]).reshape(1, -1),
                   Rows=63, Columns=65)  # 4098 bytes: two more than the padding allows
    with pytest.raises(InputError, match=r"PixelData has 4098 bytes; expected exactly .* = 4095 \(\+1 padding byte\)"):
        load_image(q, CFG)
