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


# ---------------------------------------------------------------- values that cannot be what their column holds

def test_hint_values_that_are_no_age_sex_or_view_are_emptied_with_a_warning(tmp_path, caplog):
    f = _write(tmp_path, "image,fibrosis,age,sex,view\n"
                         "a.png,1,-2+3,@CMD,=1+2\n"
                         "b.png,0,61,f,pa\n"
                         "c.png,0,061Y,O,LL\n"
                         "d.png,0,Jane Doe,DOE^JANE,SMITH 12345678\n")
    labels = load_labels(f, "fibrosis")
    assert labels.hints("/in/a.png") == {}
    assert labels.hints("/in/b.png") == {"age": "61", "sex": "F", "view": "PA"}
    assert labels.hints("/in/c.png") == {"age": "61", "sex": "O", "view": "LL"}
    assert labels.hints("/in/d.png") == {}
    for col, what in (("age", "an age in years"), ("sex", "a sex code"), ("view", "a view position code")):
        assert f"column '{col}': 2 values are not {what}" in caplog.text and "(first on line 2; not shown)" in caplog.text
    for secret in ("Jane", "DOE", "12345678", "CMD", "=1+2", "-2+3"):
        assert secret not in caplog.text


@pytest.mark.parametrize("name", ["+A1-1", "-2+3", "@SUM(A1)", "'quoted"])
def test_a_finding_that_is_a_formula_is_refused(tmp_path, name):
    f = _write(tmp_path, f'image,fibrosis,finding_labels\na.dcm,1,"Effusion|{name}"\n')
    with pytest.raises(LabelsError, match=r"labels.csv:2 column 'finding_labels': finding .*"
                                          r"expected a name that starts with a letter or digit"):
        load_labels(f, "fibrosis", findings_column="finding_labels")


def test_a_findings_column_of_ten_thousand_names_is_refused_fast(tmp_path):
    """A 270 KB CSV: 10,000 rows, each with a finding of its own (a column of IDs or free
    text): every image would get 10,000 values (about 1.5 GB of cells) without the limit."""
    import time

    rows = "".join(f"im{i:05d}.dcm,0,Finding{i:05d}\n" for i in range(10_000))
    f = _write(tmp_path, "image,fibrosis,finding_labels\n" + rows)
    t0 = time.perf_counter()
    with pytest.raises(LabelsError, match=r"labels.csv:258 column 'finding_labels': more than 256 distinct findings "
                                          r"\(limit ingest.max_findings=256\)"):
        load_labels(f, "fibrosis", findings_column="finding_labels")
    assert time.perf_counter() - t0 < 5


def test_a_large_vocabulary_is_stored_sparsely(tmp_path):
    """2,000 rows over a 1,000-finding vocabulary (allowed on request): each row keeps the findings it
    lists, and an image's cell of 1,000 values is built when it joins -- not 2 million values at load."""
    import tracemalloc

    rows = "".join(f"im{i:05d}.dcm,0,F{i % 1000:04d}\n" for i in range(2_000))
    f = _write(tmp_path, "image,fibrosis,finding_labels\n" + rows)
    tracemalloc.start()
    labels = load_labels(f, "fibrosis", findings_column="finding_labels", max_findings=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(labels.vocabulary) == 1000 and peak < 20 * 2**20, peak
    _, cell, _ = labels.join("/in/im00007.dcm", "", "")
    assert cell.count("=") == 1000 and "F0007=1" in cell and cell.count("=1") == 1
    with pytest.raises(LabelsError, match="more than 999 distinct findings"):
        load_labels(f, "fibrosis", findings_column="finding_labels", max_findings=999)


def test_a_field_over_the_csv_limit_is_one_line_naming_the_file_and_line(tmp_path):
    f = _write(tmp_path, "image,fibrosis\na.dcm,1\nb.dcm," + "1" * 140_000 + "\n")
    with pytest.raises(ValueError, match=r"labels.csv:3: a field longer than 131072 characters"):
        load_labels(f, "fibrosis")
