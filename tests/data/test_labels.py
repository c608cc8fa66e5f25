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


# ---------------------------------------------------------------- auxiliary findings


def _aux_labels(tmp_path: Path, text: str, **kw):
    f = tmp_path / "labels.csv"
    f.write_text(text)
    return load_labels(f, "fibrosis", **kw)


def test_findings_column_vocabulary_none_token_and_target(tmp_path):
    """Listed = 1, the column's other findings = 0, `No Finding` = all 0, empty = all missing;
    the target (named like the label column, any case) is not an auxiliary finding."""
    lab = _aux_labels(tmp_path, "image,fibrosis,finding_labels\n"
                                "a.png,0,Atelectasis| Effusion \n"
                                "b.png,1,Fibrosis|Mass\n"
                                "c.png,0,No Finding\n"
                                "d.png,1,\n"
                                "e.png,1,Fibrosis\n", findings_column="finding_labels")
    assert lab.aux_names == ("Atelectasis", "Effusion", "Mass")
    aux = {n: lab.aux(f"/in/{n}", "", "") for n in "abcde"}
    assert aux == {"a": "Atelectasis=1|Effusion=1|Mass=0", "b": "Atelectasis=0|Effusion=0|Mass=1",
                   "c": "Atelectasis=0|Effusion=0|Mass=0", "d": "",  # empty cell: missing, never negative
                   "e": "Atelectasis=0|Effusion=0|Mass=0"}
    assert lab.aux("/in/unlisted.png", "", "") == "" and lab.label("/in/b.png", "", "") == ("1", "file")
    assert lab.join("/in/a.png", "", "") == ("0", "Atelectasis=1|Effusion=1|Mass=0", "file")


def test_findings_none_token_is_configurable_and_must_stand_alone(tmp_path):
    text = "image,fibrosis,findings\na.png,0,normal\nb.png,0,Mass\n"
    lab = _aux_labels(tmp_path, text, findings_column="findings", findings_none="normal")
    assert lab.aux_names == ("Mass",) and lab.aux("/a.png", "", "") == "Mass=0"
    with pytest.raises(LabelsError) as err:
        _aux_labels(tmp_path, "image,fibrosis,findings\na.png,0,Mass|No Finding\n", findings_column="findings")
    assert f"{tmp_path / 'labels.csv'}:2" in str(err.value) and "'Mass|No Finding'" in str(err.value)


def test_aux_columns_are_tri_state_and_study_and_sop_rows_join_like_the_label(tmp_path):
    lab = _aux_labels(tmp_path, "image,sop_instance_uid,study_instance_uid,fibrosis,effusion,mass\n"
                                "a.png,,,1,1,\n"
                                "b.png,,,0,no,0\n"
                                ",1.2.3,,0,,yes\n"
                                ",,1.2.9,1,0,1\n", aux_columns=["mass", "effusion"])
    assert lab.aux_names == ("effusion", "mass")
    assert lab.aux("/a.png", "", "") == "effusion=1"  # mass empty: missing, not 0
    assert lab.aux("/b.png", "", "") == "effusion=0|mass=0"
    assert lab.aux("/x.dcm", "1.2.3", "1.2.9") == "mass=1"  # the SOP row wins over the study row
    assert lab.aux("/y.dcm", "", "1.2.9") == "effusion=0|mass=1"
    with pytest.raises(LabelsError) as err:
        _aux_labels(tmp_path, "image,fibrosis,mass\na.png,1,maybe\n", aux_columns=["mass"])
    assert f"{tmp_path / 'labels.csv'}:2 column 'mass'" in str(err.value) and "'maybe'" in str(err.value)


def test_aux_columns_and_findings_column_combine(tmp_path):
    lab = _aux_labels(tmp_path, "image,fibrosis,edema,findings\na.png,0,1,Mass\nb.png,0,,\n",
                      aux_columns=["edema"], findings_column="findings")
    assert lab.aux_names == ("Mass", "edema")
    assert lab.aux("/a.png", "", "") == "Mass=1|edema=1" and lab.aux("/b.png", "", "") == ""


@pytest.mark.parametrize("kw, pattern", [
    ({"aux_columns": ["effusion"]}, "auxiliary label column (ingest.aux_label_columns) 'effusion' not in the header"),
    ({"findings_column": "finding_labels"}, "findings column (ingest.findings_column) 'finding_labels' not in"),
    ({"aux_columns": ["fibrosis"]}, "'fibrosis' is the label column"),
    ({"aux_columns": ["mass", "mass"]}, "'mass': listed twice"),
    ({"aux_columns": ["findings"], "findings_column": "findings"}, "'findings' is both ingest.findings_column"),
])
def test_missing_or_misused_columns_are_refused_naming_the_column_and_header(tmp_path, kw, pattern):
    with pytest.raises(LabelsError) as err:
        _aux_labels(tmp_path, "image,fibrosis,mass,findings\na.png,1,1,Mass\n", **kw)
    assert pattern in str(err.value) and str(tmp_path / "labels.csv") in str(err.value)
    if "header" in pattern:
        assert "['image', 'fibrosis', 'mass', 'findings']" in str(err.value)


def test_a_finding_that_is_also_an_aux_column_is_refused_naming_both(tmp_path):
    with pytest.raises(LabelsError) as err:
        _aux_labels(tmp_path, "image,fibrosis,mass,findings\na.png,0,1,Edema\nb.png,0,0,Mass\n",
                    aux_columns=["mass"], findings_column="findings")
    msg = str(err.value)
    assert f"{tmp_path / 'labels.csv'}:3" in msg and "finding 'Mass' of column 'findings'" in msg
    assert "auxiliary label column 'mass'" in msg


@pytest.mark.parametrize("header, cell, kw", [
    ("image,fibrosis,findings", "Mass=big", {"findings_column": "findings"}),
    ("image,fibrosis,a=b", "1", {"aux_columns": ["a=b"]}),
    ("image,fibrosis,a|b", "1", {"aux_columns": ["a|b"]}),
])
def test_finding_names_with_the_cell_delimiters_are_refused(tmp_path, header, cell, kw):
    with pytest.raises(LabelsError) as err:
        _aux_labels(tmp_path, f'{header}\na.png,0,"{cell}"\n', **kw)
    msg = str(err.value)
    assert str(tmp_path / "labels.csv") in msg and "without '|' or '='" in msg
    assert (f":2 column 'findings': finding {cell!r}" in msg) if "findings" in header else (":1:" in msg)


def test_the_same_image_twice_with_other_findings_is_refused(tmp_path):
    with pytest.raises(LabelsError, match=r"labels.csv:3: file 'a.png' appears twice with auxiliary findings "
                                          r"'Edema=0\|Mass=1' \(line 2\) and 'Edema=1\|Mass=0'"):
        _aux_labels(tmp_path, "image,fibrosis,findings\na.png,0,Mass\na.png,0,Edema\n", findings_column="findings")
    lab = _aux_labels(tmp_path, "image,fibrosis,findings\na.png,0,Mass\na.png,0,Mass\n", findings_column="findings")
    assert lab.aux("/a.png", "", "") == "Mass=1"
