"""`fibrosis split`: patient-level, stratified, seeded, stable; near-duplicates grouped and reported."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace

import cv2
import numpy as np
import pytest
from helpers.dicom_factory import make_dicom
from helpers.manifest import row

from fibrosis.io import read_csv
from fibrosis.config import IngestConfig, SplitConfig
from fibrosis.data.ingest import ingest
from fibrosis.data.manifest import ManifestRow
from fibrosis.data.split import assign, dhash, near_duplicate_pairs, split_cache


def _rows(n_patients: int, n_pos: int, images_per_patient: int = 2, prefix: str = "p") -> list[ManifestRow]:
    return [row(patient_key=f"{prefix}{i:03d}", label=int(i < n_pos))
            for i in range(n_patients) for _ in range(images_per_patient)]


def _patient_splits(rows, mapping) -> dict[str, set[str]]:
    out = defaultdict(set)
    for r in rows:
        out[r.patient_key].add(mapping[r.patient_key])
    return out


def test_patient_level_and_stratified():
    rows = _rows(100, 20)
    mapping, kept, new = assign(rows, SplitConfig())
    assert (kept, new) == (0, 100)
    assert all(len(s) == 1 for s in _patient_splits(rows, mapping).values())
    pos = Counter(mapping[f"p{i:03d}"] for i in range(20))
    allp = Counter(mapping.values())
    assert allp == {"train": 60, "val": 20, "test": 20}
    assert pos == {"train": 12, "val": 4, "test": 4}


def test_seeded():
    rows = _rows(60, 10)
    a, _, _ = assign(rows, SplitConfig(seed=1))
    assert a == assign(rows, SplitConfig(seed=1))[0]
    assert a != assign(rows, SplitConfig(seed=2))[0]


def test_existing_assignments_are_kept_and_new_patients_fill_the_quotas():
    rows = _rows(50, 10)
    first, _, _ = assign(rows, SplitConfig())
    rows = [replace(r, split=first[r.patient_key]) for r in rows]
    more = rows + _rows(50, 10, prefix="q")
    second, kept, new = assign(more, SplitConfig())
    assert (kept, new) == (50, 50)
    assert all(second[p] == s for p, s in first.items())
    assert Counter(second.values()) == {"train": 60, "val": 20, "test": 20}
    reshuffled, kept, _ = assign(more, SplitConfig(seed=5), reassign=True)
    assert kept == 0 and reshuffled != second


def test_linked_patients_share_a_split_and_calibration_split():
    rows = _rows(40, 8)
    links = [("p001", "p030"), ("p030", "p031")]
    mapping, _, _ = assign(rows, SplitConfig(train=0.5, val=0.2, test=0.2, calib=0.1), links)
    assert mapping["p001"] == mapping["p030"] == mapping["p031"]
    assert set(mapping.values()) == {"train", "val", "test", "calib"}


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        assign(_rows(4, 1), SplitConfig(train=0.7, val=0.2, test=0.2))
    with pytest.raises(ValueError, match=">= 0"):
        assign(_rows(4, 1), SplitConfig(train=1.2, val=-0.2, test=0.0))


def test_near_duplicate_search_equals_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    for src, dst, flips in ((0, 10, 0), (1, 11, 2), (2, 12, 4), (3, 13, 5)):  # plant pairs
        hashes[dst] = hashes[src]
        bits = np.unpackbits(hashes[dst])
        bits[rng.choice(256, flips, replace=False)] ^= 1
        hashes[dst] = np.packbits(bits)
    brute = [(a, b, int(np.unpackbits(hashes[a] ^ hashes[b]).sum())) for a in range(300)
             for b in range(a + 1, 300)]
    assert near_duplicate_pairs(hashes, 4) == [p for p in brute if p[2] <= 4]
    assert {(a, b) for a, b, _ in near_duplicate_pairs(hashes, 4)} == {(0, 10), (1, 11), (2, 12)}


def _texture(seed: int, shape=(96, 80)) -> np.ndarray:
    """Structurally distinct images (low-frequency random fields), 12-bit."""
    noise = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), 6)
    field = (field - field.min()) / (field.max() - field.min())
    return np.rint(field * 4000).astype(np.uint16)


def test_dhash_separates_distinct_images_and_matches_copies():
    a, b = _texture(1).astype(np.float32), _texture(2).astype(np.float32)
    noisy = a + np.random.default_rng(3).normal(0, 20, a.shape).astype(np.float32)
    dist = lambda x, y: int(np.unpackbits(dhash(x) ^ dhash(y)).sum())  # noqa: E731
    assert dist(a, noisy) <= 4 < 40 < dist(a, b)


def test_split_cache_end_to_end(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(24):  # 12 patients x 2 images, 4 positive patients
        make_dicom(d / f"p{i // 2}_{i % 2}.dcm", _texture(i), bits_stored=12, patient_id=f"P{i // 2}")
    # the same radiograph exported again under another ID, with slight noise: a near-duplicate
    twin = _texture(0).astype(np.int32) + np.random.default_rng(9).integers(-3, 4, (96, 80))
    make_dicom(d / "twin.dcm", twin.clip(0, 4095).astype(np.uint16), bits_stored=12, patient_id="OTHER-ID")
    labels = tmp_path / "labels.csv"
    labels.write_text("image,fibrosis\n" + "".join(f"p{i // 2}_{i % 2}.dcm,{int(i // 2 < 4)}\n" for i in range(24)))
    cfg = IngestConfig(image_size=64, min_side=1, labels_csv=str(labels), polarity_qa="keep")  # textures, not chests
    ingest([d], tmp_path / "c", cfg, workers=1, progress=False)
    summary = split_cache(tmp_path / "c", SplitConfig(train=0.5, val=0.25, test=0.25))
    rows = read_csv(tmp_path / "c" / "manifest.csv")
    per_patient = defaultdict(set)
    for r in rows:
        per_patient[r["patient_key"]].add(r["split"])
    assert all(len(s) == 1 for s in per_patient.values()) and all(r["split"] for r in rows)
    split_of = {r["path"].rsplit("/", 1)[1]: r["split"] for r in rows}
    assert split_of["twin.dcm"] == split_of["p0_0.dcm"]  # grouped with its near-duplicate
    pairs = read_csv(tmp_path / "c" / "near_duplicates.csv")
    assert [sorted([p["path_a"].rsplit("/", 1)[1], p["path_b"].rsplit("/", 1)[1]]) for p in pairs] == \
        [["p0_0.dcm", "twin.dcm"]]
    assert summary.near_duplicates_across_splits == 0
    assert sum(c["images"] for c in summary.counts.values()) == 25
    assert sum(c["positive"] for c in summary.counts.values()) == 8
    assert all(c["positive"] >= 2 for c in summary.counts.values())  # 4 positive patients: 2/1/1
    # re-running is stable
    split_cache(tmp_path / "c", SplitConfig(train=0.5, val=0.25, test=0.25))
    assert read_csv(tmp_path / "c" / "manifest.csv") == rows
    for seed in range(1, 6):  # grouping, not luck: the twin follows p0 under every seed
        split_cache(tmp_path / "c", SplitConfig(train=0.5, val=0.25, test=0.25, seed=seed), reassign=True)
        split_of = {r["path"].rsplit("/", 1)[1]: r["split"] for r in read_csv(tmp_path / "c" / "manifest.csv")}
        assert split_of["twin.dcm"] == split_of["p0_0.dcm"]


def test_placeholder_patient_id_is_flagged(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(12):
        make_dicom(d / f"{i}.dcm", _texture(100 + i), bits_stored=12,
                   patient_id="ANONYMOUS" if i < 11 else "REAL")
    ingest([d], tmp_path / "c", IngestConfig(image_size=32, min_side=1, polarity_qa="keep"), workers=1,
           progress=False)  # textures, not chests: the polarity QA does not apply
    summary = split_cache(tmp_path / "c", SplitConfig())
    assert any("placeholder" in w for w in summary.warnings)


def test_split_carries_aux_labels_unchanged_and_reads_a_manifest_without_them(tmp_path):
    from fibrosis.data.cache import MANIFEST_COLUMNS
    from fibrosis.io import write_csv

    d = tmp_path / "in"
    d.mkdir()
    for i in range(8):
        make_dicom(d / f"p{i}.dcm", _texture(i), bits_stored=12, patient_id=f"P{i}")
    labels = tmp_path / "labels.csv"
    labels.write_text("image,fibrosis,findings\n" + "".join(
        f"p{i}.dcm,{int(i < 3)},{['Mass', 'No Finding', '', 'Edema|Mass'][i % 4]}\n" for i in range(8)))
    cfg = IngestConfig(image_size=64, min_side=1, labels_csv=str(labels), findings_column="findings",
                       polarity_qa="keep")
    ingest([d], tmp_path / "c", cfg, workers=1, progress=False)
    manifest = tmp_path / "c" / "manifest.csv"
    aux = {r["path"]: r["aux_labels"] for r in read_csv(manifest)}
    assert sorted(set(aux.values())) == ["", "Edema=0|Mass=0", "Edema=0|Mass=1", "Edema=1|Mass=1"]
    split_cache(tmp_path / "c", SplitConfig(train=0.5, val=0.25, test=0.25))
    rows = read_csv(manifest)
    assert all(r["split"] for r in rows) and {r["path"]: r["aux_labels"] for r in rows} == aux

    write_csv(manifest, rows, tuple(c for c in MANIFEST_COLUMNS if c != "aux_labels"))  # an older manifest
    split_cache(tmp_path / "c", SplitConfig(train=0.5, val=0.25, test=0.25, seed=1), reassign=True)
    assert [r["aux_labels"] for r in read_csv(manifest)] == [""] * 8


def test_split_rewrites_a_manifest_with_neutralised_cells_as_it_read_them(tmp_path):
    """A manufacturer that reads as a formula is stored with a leading ' (fibrosis.io.csv_cell):
    split reads the value back and writes it once more the same way, never quoting it twice."""
    d = tmp_path / "in"
    d.mkdir()
    vendor = "=cmd|' /C calc'!A0"
    for i in range(8):
        make_dicom(d / f"p{i}.dcm", _texture(i), bits_stored=12, patient_id=f"P{i}",
                   Manufacturer=vendor if i % 2 else "it's ACME")
    ingest([d], tmp_path / "c", IngestConfig(image_size=32, min_side=1, polarity_qa="keep"), workers=1,
           progress=False)
    manifest = tmp_path / "c" / "manifest.csv"
    for seed in (0, 1):
        split_cache(tmp_path / "c", SplitConfig(train=0.5, val=0.25, test=0.25, seed=seed), reassign=True)
        assert sorted({r["manufacturer"] for r in read_csv(manifest)}) == [vendor, "it's ACME"]
        text = manifest.read_text()
        assert text.count(",'" + vendor + ",") == 4 and text.count(",it's ACME,") == 4


def test_split_record_has_a_schema_and_a_newer_one_is_refused(tmp_path):
    """split.json is a SplitRecord: written with its schema, read back by a no-op re-split; a
    record without a schema (an older version's) makes the split run in full and rewrite it; a
    newer schema is one line naming the file and what this version reads."""
    import json

    from fibrosis.artefacts import SchemaError
    from fibrosis.data.split import SPLIT_SCHEMA, SplitRecord

    from helpers.dicom_factory import chest_phantom, to_stored

    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        make_dicom(src / f"{i}.dcm", to_stored(chest_phantom(64, 64, seed=i), 12), patient_id=f"P{i}",
                   study_uid=f"1.2.3.{i}", sop_uid=f"1.2.3.{i}.1", bits_stored=12)
    cache = tmp_path / "c"
    ingest([src], cache, IngestConfig(image_size=32, min_side=1), workers=1, progress=False)
    cfg = SplitConfig(train=0.5, val=0.25, test=0.25)
    first = split_cache(cache, cfg)
    record = SplitRecord.read(cache)
    assert record is not None and record.schema == SPLIT_SCHEMA and record.summary.counts == first.counts
    state = cache / "split.json"
    raw = json.loads(state.read_text())
    assert split_cache(cache, cfg).counts == first.counts  # the no-op path reads the record
    state.write_text(json.dumps({k: v for k, v in raw.items() if k != "schema"}))
    assert SplitRecord.read(cache) is None  # unversioned: not trusted, the split runs in full
    split_cache(cache, cfg)
    assert json.loads(state.read_text())["schema"] == SPLIT_SCHEMA  # and writes the record anew
    state.write_text(json.dumps({**raw, "schema": SPLIT_SCHEMA + 1}))
    with pytest.raises(SchemaError, match=rf"{state}: schema {SPLIT_SCHEMA + 1}; this version of fibrosis reads "
                                          rf"schema {SPLIT_SCHEMA}; it was written by a newer version"):
        split_cache(cache, cfg)
