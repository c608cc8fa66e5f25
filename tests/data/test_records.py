"""fibrosis.data.records: the raw PatientID cannot be written by construction; labels parse once."""
from __future__ import annotations

import csv
import io
import json
import pickle

import pytest

from fibrosis.data.identity import patient_key
from fibrosis.data.records import (ImageMeta, PatientId, Preprocessing, format_aux, parse_aux,
                                   parse_label)


def test_a_raw_patient_id_has_no_text_form():
    pid = PatientId(" MRN-123 ")
    for write in (str, lambda v: f"{v}", lambda v: "%s" % v, lambda v: format(v, ""), json.dumps,
                  lambda v: csv.writer(io.StringIO()).writerow([v])):
        with pytest.raises(TypeError):
            write(pid)
    assert "MRN-123" not in repr(pid) and "MRN-123" not in repr(ImageMeta(patient_id=pid))


def test_patient_id_crosses_processes_and_keys_like_before():
    pid = PatientId(" MRN-123 ")
    assert pickle.loads(pickle.dumps(pid)) == pid and bool(pid) and not PatientId("  ")
    assert pid.key("salt") == patient_key("MRN-123", "salt") and len(pid.key("salt")) == 16
    assert PatientId("a").key("s") != PatientId("b").key("s")


def test_manifest_fields_never_include_the_patient_id():
    meta = ImageMeta(sop_uid="1.2", rows=3, patient_id=PatientId("MRN-9"))
    fields = meta.manifest_fields()
    assert "patient_id" not in fields and fields["sop_uid"] == "1.2" and fields["rows"] == 3
    json.dumps(fields)  # serialisable, unlike the meta itself


@pytest.mark.parametrize("text,label", [("1", 1), ("1.0", 1), (" 0 ", 0), ("0.0", 0), ("", None), (None, None)])
def test_parse_label(text, label):
    assert parse_label(text) == label


@pytest.mark.parametrize("text", ["2", "yes", "nan", "-1"])
def test_parse_label_refuses_other_values(text):
    with pytest.raises(ValueError, match=r"allowed: 0, 1 or empty"):
        parse_label(text)


def test_preprocessing_round_trips_as_plain_data_and_refuses_unknown_keys():
    from fibrosis.model.net import build_model

    pre = build_model("resnet18", "none", input_size=48).preprocessing
    d = pre.to_dict()
    assert json.loads(json.dumps(d)) == d and Preprocessing.from_dict(d) == pre and d["input_size"] == 48
    with pytest.raises(ValueError, match=r"ckpt.pt: preprocessing keys .*expected"):
        Preprocessing.from_dict({**d, "mean2": 0.5}, "ckpt.pt")


def test_aux_cell_round_trips_sorted_and_missing_stays_missing():
    cell = format_aux({"Effusion": 0, "Atelectasis": 1, "Mass": 1})
    assert cell == "Atelectasis=1|Effusion=0|Mass=1"
    assert parse_aux(cell) == {"Atelectasis": 1, "Effusion": 0, "Mass": 1}
    assert format_aux({}) == "" and parse_aux("") == {} and parse_aux(None) == {}  # None: no column
    assert "Nodule" not in parse_aux(cell)  # not listed = missing, never 0


@pytest.mark.parametrize("cell, problem", [
    ("Mass", "no '='"), ("Mass=2", "value '2'"), ("Mass=", "value ''"), ("=1", "name ''"),
    ("Mass=1|Mass=0", "'Mass' given twice"), ("Mass=1||Edema=0", "entry '' (no '=')"), ("Mass=yes", "value 'yes'"),
])
def test_parse_aux_names_where_the_cell_and_what_was_expected(cell, problem):
    with pytest.raises(ValueError) as err:
        parse_aux(cell, "cache/manifest.csv: x.dcm")
    msg = str(err.value)
    assert msg.startswith("cache/manifest.csv: x.dcm: aux_labels") and repr(cell) in msg and problem in msg
    assert "expected name=0 or name=1" in msg


@pytest.mark.parametrize("values", [{"A|B": 1}, {"A=B": 0}, {"": 1}, {" A": 1}, {"A": 2}, {"A": "yes"}])
def test_format_aux_refuses_names_or_values_the_cell_cannot_hold(values):
    with pytest.raises(ValueError, match="auxiliary label"):
        format_aux(values)
