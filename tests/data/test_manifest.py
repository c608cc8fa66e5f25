"""fibrosis.data.manifest: the manifest row as a record, read and written back byte for byte."""
from __future__ import annotations

import dataclasses

import pytest

from fibrosis.data.manifest import (MANIFEST_COLUMNS, REJECT_COLUMNS, ManifestRow, RejectRow, aux_names,
                                    read_manifest, read_rejects, write_manifest, write_rejects)
from fibrosis.data.records import FileStamp
from helpers.manifest import row

HEADER = ("path,content_hash,shard,index,source_format,patient_key,study_uid,series_uid,sop_uid,view_position,"
          "body_part,modality,manufacturer,model_name,sex,age,pixel_spacing,rows,cols,transfer_syntax,photometric,"
          "steps,label,split")
APPENDED = ",dhash,file_size,file_mtime_ns,file_id,aux_labels"
# Three rows as ingest and split write them: a labelled DICOM (a formula-like manufacturer,
# neutralised with '), an unlabelled PNG without header size, stamp or split, and a path that
# needs quoting with a negative label-free row.
ROWS = (
    "/in/a.dcm,aa,0,0,dicom,k1,1.2,1.3,1.4,PA,CHEST,DX,'=cmd,M1,F,061Y,0.143\\0.143,2048,2500,1.2.840.10008.1.2,"
    "MONOCHROME2,decode:dicom|resize:area,1,train",
    "/in/b.png,bb,0,1,png,k2,,,file:bb,,,,,,,,,0,0,,,decode:png,,",
    '"/in/c, d.dcm",cc,1,0,dicom,k3,,,,AP,,,ACME,,M,45,,512,512,,MONOCHROME1,'
    '"decode:dicom|qa:polarity-suspect(score=-3.000: a, b)",0,test',
)
TAILS = (",ff00,1234,1733000000123456789,64769:42,Effusion=1|Mass=0", ",,,,,", ",,99,-5,,")


def _text(header: str, rows: list[str]) -> str:
    return "".join(line + "\n" for line in [header, *rows])


def test_the_columns_are_the_fields_in_the_files_order():
    assert ",".join(MANIFEST_COLUMNS) == HEADER + APPENDED
    assert REJECT_COLUMNS == ("path", "kind", "reason", "transfer_syntax")


def test_a_manifest_reads_typed_and_writes_back_byte_for_byte(tmp_path):
    path = tmp_path / "manifest.csv"
    text = _text(HEADER + APPENDED, [r + t for r, t in zip(ROWS, TAILS)])
    path.write_text(text)
    rows = read_manifest(path)
    a, b, c = rows
    assert (a.shard, a.index, a.rows, a.cols, a.label, a.split) == (0, 0, 2048, 2500, 1, "train")
    assert a.manufacturer == "=cmd" and a.steps == ("decode:dicom", "resize:area") and a.age == "061Y"
    assert a.stamp() == FileStamp(1234, 1733000000123456789, "64769:42") and a.aux() == {"Effusion": 1, "Mass": 0}
    assert (b.label, b.split, b.rows, b.file_size, b.stamp(), b.steps) == (None, "", 0, None, None, ("decode:png",))
    assert (c.path, c.label, c.file_mtime_ns, c.stamp()) == ("/in/c, d.dcm", 0, -5, None)  # no file_id: no stamp
    out = tmp_path / "again.csv"
    assert write_manifest(out, rows) == 3
    assert out.read_text() == text


def test_an_older_manifest_without_the_appended_columns_reads_as_empty_and_is_written_whole(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text(_text(HEADER, list(ROWS)))
    rows = read_manifest(path)
    assert [(r.dhash, r.file_size, r.file_id, r.aux_labels) for r in rows] == [("", None, "", "")] * 3
    write_manifest(path, rows)
    assert path.read_text() == _text(HEADER + APPENDED, [r + ",,,,," for r in ROWS])
    # a cache that was never split (another site's) reads too, unless the caller needs the split
    no_split = tmp_path / "site-b.csv"
    no_split.write_text(_text(HEADER.removesuffix(",split"), [r.rsplit(",", 1)[0] for r in ROWS]))
    assert [r.split for r in read_manifest(no_split)] == ["", "", ""]
    with pytest.raises(ValueError, match=r"site-b.csv: no column 'split'; .*; run `fibrosis split` first$"):
        read_manifest(no_split, required=("split",), why="run `fibrosis split` first")


@pytest.mark.parametrize("header, what", [
    (HEADER.replace("patient_key,", ""), "no column 'patient_key'"),
    (HEADER + ",notes", "unknown column 'notes'"),
])
def test_a_header_without_a_core_column_or_with_an_unknown_one_is_refused_in_one_line(tmp_path, header, what):
    path = tmp_path / "manifest.csv"
    path.write_text(header + "\n")
    with pytest.raises(ValueError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: {what}; expected the columns path, content_hash, shard")
    assert "aux_labels" in msg and "(6 of them optional)" in msg


@pytest.mark.parametrize("column, value, problem", [
    ("shard", "", "shard=''; expected a whole number"), ("index", "07", "index='07'"),
    ("rows", "512.0", "rows='512.0'"), ("label", "yes", "label 'yes'; allowed: 0, 1 or empty"),
])
def test_a_cell_its_column_cannot_hold_names_the_file_and_line(tmp_path, column, value, problem):
    cells = dict(zip(MANIFEST_COLUMNS, (ROWS[1] + TAILS[1]).split(",")))
    path = tmp_path / "manifest.csv"
    write_manifest(path, [ManifestRow.from_cells(cells)] * 2)
    lines = path.read_text().splitlines()
    lines[2] = ",".join(value if k == column else v for k, v in zip(MANIFEST_COLUMNS, lines[2].split(",")))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"^{path}:3: .*{problem}"):
        read_manifest(path)


def test_a_label_written_as_a_float_reads_as_the_label_and_is_written_as_its_digit():
    assert row(label="1.0").label == 1 and row(label="1.0").cell("label") == "1"  # records.parse_label's reading


def test_rows_are_updated_by_replace_not_in_place():
    a = row(path="a.dcm", patient_key="k1", label=1)
    b = dataclasses.replace(a, split="test", label=None)
    assert (a.split, a.label) == ("", 1) and (b.split, b.label, b.path) == ("test", None, "a.dcm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.split = "train"  # type: ignore[misc]
    stamped = a.stamped(FileStamp(10, 20, "1:2"))
    assert stamped.cells()["file_size"] == "10" and stamped.stamp() == FileStamp(10, 20, "1:2") and a.stamp() is None
    assert a.stamped(None) is a


def test_a_column_is_read_by_name_as_its_stored_text():
    r = row(label=0, rows=512, steps="a|b", sex="F")
    assert [r.cell(c) for c in ("label", "rows", "steps", "sex", "cols")] == ["0", "512", "a|b", "F", ""]
    with pytest.raises(AttributeError):
        r.cell("nonsense")


def test_aux_names_is_the_sorted_union_and_reads_old_manifests():
    rows = [row(path="a", aux_labels="Mass=1|Effusion=0"), row(path="b"), row(path="c", aux_labels="Atelectasis=0")]
    assert aux_names(rows) == ["Atelectasis", "Effusion", "Mass"] and aux_names([]) == []
    with pytest.raises(ValueError, match="^x.dcm: aux_labels 'Mass=2'"):
        aux_names([row(path="x.dcm", aux_labels="Mass=2")])


def test_rejects_round_trip_and_an_unknown_kind_is_refused(tmp_path):
    path = tmp_path / "rejects.csv"
    rejects = [RejectRow("/in/a.dcm", "error", "unsupported transfer syntax", "1.2.840.10008.1.2.4.100"),
               RejectRow("/in/b, c.png", "excluded", "=1+2 looks like a formula")]
    write_rejects(path, rejects)
    text = path.read_text()
    assert text == ("path,kind,reason,transfer_syntax\n/in/a.dcm,error,unsupported transfer syntax,"
                    "1.2.840.10008.1.2.4.100\n\"/in/b, c.png\",excluded,'=1+2 looks like a formula,\n")
    assert read_rejects(path) == rejects
    path.write_text(text.replace("excluded", "skipped"))
    with pytest.raises(ValueError, match=rf"^{path}:3: kind 'skipped'; expected one of \['error', 'excluded', "):
        read_rejects(path)
