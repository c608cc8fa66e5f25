"""Labels CSVs that do not fit their header: a repeated column name, extra fields."""
from __future__ import annotations

import pytest

from fibrosis.data.labels import LabelsError, load_labels


def _write(tmp_path, text: str):
    f = tmp_path / "labels.csv"
    f.write_text(text)
    return f


def test_repeated_label_column_is_refused_naming_file_and_column(tmp_path):
    # csv.DictReader would keep the last 'fibrosis' column (here: all 0) silently.
    f = _write(tmp_path, "image,fibrosis,fibrosis\na.dcm,1,0\nb.dcm,1,0\n")
    with pytest.raises(LabelsError, match=r"labels.csv: column\(s\) \['fibrosis'\] appear more than once"):
        load_labels(f, "fibrosis")
    g = _write(tmp_path, "image, image ,fibrosis\na.dcm,b.dcm,1\n")  # equal once stripped
    with pytest.raises(LabelsError, match=r"\['image'\] appear more than once"):
        load_labels(g, "fibrosis")


def test_trailing_comma_is_accepted_but_an_extra_value_is_refused(tmp_path):
    ok = load_labels(_write(tmp_path, "image,fibrosis\na.dcm,1,\nb.dcm,0,,\n"), "fibrosis")
    assert ok.label("/in/a.dcm", "", "") == ("1", "file") and ok.label("/in/b.dcm", "", "") == ("0", "file")
    f = _write(tmp_path, "image,fibrosis\na.dcm,1\nb.dcm,0,1\n")  # a shifted row: which is the label?
    with pytest.raises(LabelsError, match=r"labels.csv:3: 3 fields; the header has 2 \(\['image', 'fibrosis'\]\)"):
        load_labels(f, "fibrosis")
