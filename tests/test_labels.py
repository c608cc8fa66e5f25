"""Labels CSV: key columns, path-aware file join, ambiguity refusal, label values."""
from __future__ import annotations

from pathlib import Path

import pytest

from fibrosis.data.labels import LabelsError, load_labels


def _labels(tmp_path: Path, text: str):
    f = tmp_path / "labels.csv"
    f.write_text(text)
    return load_labels(f, "fibrosis")


def test_relative_path_labels_only_that_folder(tmp_path):
    """PACS exports repeat IM0001.dcm in every study folder: a row naming studyA/IM0001.dcm
    must not label studyB/IM0001.dcm (another patient)."""
    lab = _labels(tmp_path, "image,fibrosis\nstudyA/IM0001.dcm,1\n")
    a, b = "/data/in/studyA/IM0001.dcm", "/data/in/studyB/IM0001.dcm"
    assert lab.label(a, "", "") == ("1", "file")
    assert lab.label(b, "", "") == ("", "")
    lab.check_unique([a, b])  # one row, one image: fine


def test_longest_path_match_wins_and_backslashes_and_dot_are_normalised(tmp_path):
    lab = _labels(tmp_path, "file,fibrosis\n.\\studyA\\IM0001.dcm,1\nIM0001.dcm,0\n")
    assert lab.label("/in/studyA/IM0001.dcm", "", "") == ("1", "file")
    assert lab.label("/in/studyB/IM0001.dcm", "", "") == ("0", "file")


def test_stem_join_keeps_the_folder(tmp_path):
    """A PNG row also labels its DICOM wrap, but only in the same folder."""
    lab = _labels(tmp_path, "image,fibrosis\nsiteA/00000075_000.png,1\n")
    assert lab.label("/x/siteA/00000075_000.dcm", "", "") == ("1", "file")
    assert lab.label("/x/siteB/00000075_000.dcm", "", "") == ("", "")


def test_name_only_row_matching_two_inputs_is_refused(tmp_path):
    lab = _labels(tmp_path, "image,fibrosis\nIM0001.dcm,1\nIM0002.dcm,0\n")
    a, b, c = "/in/studyA/IM0001.dcm", "/in/studyB/IM0001.dcm", "/in/studyA/IM0002.dcm"
    with pytest.raises(LabelsError) as err:
        lab.check_unique([a, b, c])
    msg = str(err.value)
    assert f"{tmp_path / 'labels.csv'}:2" in msg and "'IM0001.dcm'" in msg and a in msg and b in msg
    assert "relative path" in msg and "IM0002" not in msg
    lab.check_unique([a, c])  # unambiguous inputs pass


def test_relative_path_row_matching_two_inputs_is_refused(tmp_path):
    lab = _labels(tmp_path, "image,fibrosis\nstudyA/IM0001.dcm,1\n")
    with pytest.raises(LabelsError, match=r"'studyA/IM0001.dcm' matches 2 input files"):
        lab.check_unique(["/site1/studyA/IM0001.dcm", "/site2/studyA/IM0001.dcm"])


def test_sop_join_first_then_file_then_study(tmp_path):
    lab = _labels(tmp_path, "sop_instance_uid,image,study_instance_uid,fibrosis\n1.2.3,,,1\n,a.dcm,,0\n,,9.9,1\n")
    assert lab.label("/in/a.dcm", "1.2.3", "") == ("1", "sop_instance_uid")
    assert lab.label("/in/a.dcm", "7.7", "9.9") == ("0", "file")
    assert lab.label("/in/b.dcm", "7.7", "9.9") == ("1", "study_instance_uid")


def test_hints_follow_the_path_join(tmp_path):
    lab = _labels(tmp_path, "image,patient_id,age,fibrosis\nA/x.png,P1,61,1\nB/x.png,P2,40,0\n")
    assert lab.hints("/in/A/x.png") == {"patient_id": "P1", "age": "61"}
    assert lab.hints("/in/B/x.png") == {"patient_id": "P2", "age": "40"}
    assert lab.hints("/in/C/x.png") == {}


def test_bad_values_and_conflicts_name_file_line_and_value(tmp_path):
    with pytest.raises(LabelsError, match=r"labels.csv:2 column 'fibrosis': label 'maybe'; expected one of"):
        _labels(tmp_path, "image,fibrosis\na.png,maybe\n")
    with pytest.raises(LabelsError, match=r"labels.csv:3: file 'A/a.png' appears twice with labels '1' and '0'"):
        _labels(tmp_path, "image,fibrosis\nA/a.png,1\nA/a.png,0\n")
    _labels(tmp_path, "image,fibrosis\nA/a.png,1\nB/a.png,0\n")  # different folders: no conflict
    with pytest.raises(LabelsError, match="no key column"):
        _labels(tmp_path, "name,fibrosis\na.png,1\n")
