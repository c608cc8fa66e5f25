"""Header and decoder failures the fuzz test (tests/test_fuzz.py) found: each used to escape as an
"unexpected" exception (with a traceback in the log) or, for a Rust decoder's panic, to crash the
pool's result pickling. Each must now be a reject that names the element and what was expected,
without quoting bytes that may belong to a name or a description.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, lut_item, make_dicom, to_stored
from fibrosis.config import IngestConfig
from fibrosis.data.records import Rejected
from fibrosis.data.workers import process_file

CFG = IngestConfig(image_size=32, min_side=1)
NAME = b"Doe^Jane"  # make_dataset's PatientName


def _dicom(tmp_path: Path, syntax: str = "explicit", **kw) -> Path:
    return make_dicom(tmp_path / "x.dcm", to_stored(chest_phantom(64, 56, seed=1), 12), syntax, bits_stored=12, **kw)


def _reject(path: Path, data: bytes | None = None) -> Rejected:
    if data is not None:
        path.write_bytes(data)
    res = process_file((str(path), "", {}), CFG)
    assert isinstance(res, Rejected), res
    assert not res.reason.startswith("unexpected"), res.reason
    assert NAME.decode() not in res.reason
    return res


def test_a_panicking_rust_decoder_is_a_named_reject(tmp_path):
    """pylibjpeg-rle panics (pyo3 PanicException, a BaseException) on a cut RLE segment."""
    path = _dicom(tmp_path, "rle")
    data = path.read_bytes()
    at = data.find(b"\xe0\x7f\x10\x00") + 137  # inside the first RLE segment
    res = _reject(path, data[:at] + data[at + 50:])
    assert res.reason.startswith("cannot decode pixel data (RLE Lossless): index out of bounds")


def test_rows_with_two_values(tmp_path):
    res = _reject(_dicom(tmp_path, Rows=[64, 7]))
    assert res.reason == "(0028,0010) Rows has 2 values; expected one integer"


def test_an_element_that_cannot_be_decoded_is_named(tmp_path):
    path = _dicom(tmp_path)
    data = path.read_bytes()
    at = data.find(b"\x28\x00\x11\x00US\x02\x00")  # Columns: give it 3 bytes instead of 2
    res = _reject(path, data[:at] + b"\x28\x00\x11\x00US\x03\x00" + data[at + 8:at + 10] + b"\x00" + data[at + 10:])
    assert res.reason == ("unreadable DICOM header: element (0028,0011) Columns (VR US, 3 bytes) cannot be "
                             "decoded (BytesLengthException); expected a valid US value")


def test_a_transfer_syntax_that_is_no_transfer_syntax(tmp_path):
    path = _dicom(tmp_path)
    data = path.read_bytes()
    at = data.find(b"\x02\x00\x10\x00UI")
    old = struct.unpack("<H", data[at + 6:at + 8])[0]
    bogus = b"1.2.3.4.5\x00"
    res = _reject(path, data[:at + 6] + struct.pack("<H", len(bogus)) + bogus + data[at + 8 + old:])
    assert res.reason == ("(0002,0010) TransferSyntaxUID='1.2.3.4.5' is not a transfer syntax; expected a "
                             "DICOM transfer syntax UID")
    # a length that swallows the header up to the patient's name: the value is not quoted
    swallow = data.find(NAME) - at + 20
    res = _reject(path, data[:at + 6] + struct.pack("<H", swallow) + data[at + 8:])
    assert res.reason.startswith("(0002,0010) TransferSyntaxUID=<") and "not shown>" in res.reason


def test_a_parser_error_does_not_quote_the_bytes_it_choked_on(tmp_path):
    path = _dicom(tmp_path)
    data = path.read_bytes()
    at = data.find(b"\x02\x00\x00\x00UL\x04\x00")  # group length: 7 bytes of a name instead of 4
    res = _reject(path, data[:at] + b"\x02\x00\x00\x00UL\x07\x00" + NAME[:7] + data[at + 12:])
    assert res.reason.startswith("unreadable DICOM header: BytesLengthException: Expected total bytes")
    assert NAME[:7].decode() not in res.reason and "'…'" in res.reason


@pytest.mark.parametrize("seq, descriptor, data, reason", [
    ("VOILUTSequence", [4096, 0, 99], [0, 1], "(0028,3010) VOILUTSequence item 1 (0028,3002) LUTDescriptor "
                                              "bits per entry=99; expected one of [8, 10, 11, 12, 13, 14, 15, 16]"),
    ("ModalityLUTSequence", [4, 0, 16], [1, 2], "(0028,3000) ModalityLUTSequence item 1 (0028,3006) LUTData has "
                                                "2 entries; expected 4 from (0028,3002) LUTDescriptor"),
    ("ModalityLUTSequence", [2, 0, 16], [1, 2, 3, 4], "(0028,3000) ModalityLUTSequence item 1 (0028,3006) LUTData "
                                                      "has 4 entries; expected 2 from (0028,3002) LUTDescriptor"),
    ("VOILUTSequence", [2, 0, 8], [0, 300], "(0028,3010) VOILUTSequence item 1 (0028,3006) LUTData holds 300; "
                                            "expected values that fit the declared 8 bits per entry"),
    ("ModalityLUTSequence", [0, 0, 0], None, "(0028,3000) ModalityLUTSequence item 1 (0028,3002) LUTDescriptor "
                                             "bits per entry=0; expected one of [8, 16]"),
])
def test_malformed_luts_are_refused_before_use(tmp_path, seq, descriptor, data, reason):
    item = lut_item(descriptor, data or [0])
    if data is None:
        del item.LUTData
    res = _reject(_dicom(tmp_path, **{seq: [item]}))
    assert res.reason == reason


def test_a_lut_without_data(tmp_path):
    item = lut_item([2, 0, 16], [0, 1])
    del item.LUTData
    res = _reject(_dicom(tmp_path, VOILUTSequence=[item]))
    assert res.reason == "(0028,3010) VOILUTSequence item 1: missing (0028,3006) LUTData; expected 2 entries"
