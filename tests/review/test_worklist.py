"""The worklist: rows read once into columns; sort, filter, page and neighbours on hand-checkable rows."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fibrosis.review.worklist import KEY_HEX, Query, load_worklist
from fibrosis.score.output import META_COLUMNS, RowWriter, meta_path
from helpers.scores import score_row, write_scores

# path, status, probability, decision, view, study, manufacturer
ROWS = [("/in/a.dcm", "ok", "0.90", "1", "PA", "S1", "ACME"),
        ("/in/b.dcm", "ok", "0.20", "0", "PA", "S1", "ACME"),
        ("/in/c.dcm", "ok", "0.55", "1", "AP", "S2", "Zeta"),
        ("/in/d.dcm", "excluded: ViewPosition='LL'; lateral views excluded", "", "", "LL", "S3", "Zeta"),
        ("/in/e.dcm", "error: truncated file", "", "", "", "", ""),
        ("/in/f.dcm", "ok", "0.05", "0", "PA", "S4", "ACME")]


@pytest.fixture
def wl(tmp_path):
    rows = [score_row(p, status=s, probability=pr, decision=d, view_position=v, study_uid=st,
                      logit="0.1" if pr else "", content_hash=f"{i:064x}" if s != "error: truncated file" else "",
                      threshold="0.5")
            for i, (p, s, pr, d, v, st, _) in enumerate(ROWS)]
    scores = write_scores(tmp_path / "scores.csv", rows)
    meta = RowWriter(meta_path(scores), META_COLUMNS)
    for p, *_, maker in ROWS:
        meta.write({"path": p, "manufacturer": maker})
    meta.close()
    return load_worklist(scores)


def names(wl, q: Query) -> list[str]:
    rows, _ = wl.table(q.level).page(q)
    return [wl.table(q.level).names[i] for i in rows]


def test_columns_hold_what_the_file_says(wl):
    t = wl.image_table
    assert len(t) == 6 and [t.names[i] for i in range(6)] == ["a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm", "f.dcm"]
    assert t.prob[0] == pytest.approx(0.9) and math.isnan(t.prob[3]) and t.decision.tolist() == [1, 0, 1, -1, -1, 0]
    assert [t.manufacturers[c] for c in t.manufacturer] == ["ACME", "ACME", "Zeta", "Zeta", "", "ACME"]
    assert t.reasons[3] == "ViewPosition='LL'; lateral views excluded" and t.reasons[0] == ""
    # URL keys: the content hash's first 16 hex digits; a row without one gets a hash of its line
    assert t.keys[0] == "0" * KEY_HEX and len(t.keys[4]) == KEY_HEX and len(set(t.keys)) == 6


def test_sort_by_probability_puts_unscored_last_both_ways(wl):
    asc = names(wl, Query(sort="probability"))
    desc = names(wl, Query(sort="probability", desc=True))
    assert asc == ["f.dcm", "b.dcm", "c.dcm", "a.dcm", "d.dcm", "e.dcm"]
    assert desc == ["a.dcm", "c.dcm", "b.dcm", "f.dcm", "d.dcm", "e.dcm"]


def test_sort_by_category_is_alphabetical_with_file_order_for_ties(wl):
    assert names(wl, Query(sort="manufacturer")) == ["e.dcm", "a.dcm", "b.dcm", "f.dcm", "c.dcm", "d.dcm"]
    assert names(wl, Query(sort="status")) == ["a.dcm", "b.dcm", "c.dcm", "f.dcm", "d.dcm", "e.dcm"]


def test_filters_combine(wl):
    assert names(wl, Query(status="ok", manufacturer="ACME")) == ["a.dcm", "b.dcm", "f.dcm"]
    assert names(wl, Query(decision="none")) == ["d.dcm", "e.dcm"]
    assert names(wl, Query(p_min=0.2, p_max=0.6)) == ["b.dcm", "c.dcm"]
    assert names(wl, Query(view="LL")) == ["d.dcm"]
    assert names(wl, Query(view="no such view")) == []
    wl.image_table.read[[0, 2]] = True
    assert names(wl, Query(unread=True, status="ok")) == ["b.dcm", "f.dcm"]


def test_pages_and_neighbours(wl):
    q = Query(sort="probability", desc=True, per_page=4)
    assert names(wl, q) == ["a.dcm", "c.dcm", "b.dcm", "f.dcm"]
    rows, total = wl.image_table.page(Query(sort="probability", desc=True, per_page=4, page=2))
    assert total == 6 and [wl.image_table.names[i] for i in rows] == ["d.dcm", "e.dcm"]
    assert wl.image_table.neighbours(q, 2) == (0, 1)  # c.dcm: after a.dcm, before b.dcm
    # a row the filter would drop (just labelled, under "not yet read") keeps its place
    wl.image_table.read[2] = True
    assert wl.image_table.neighbours(Query(sort="probability", desc=True, unread=True), 2) == (0, 1)


def test_studies_aggregate_their_images(wl):
    st = wl.study_table
    assert len(st) == 5  # S1, S2, S3, S4 and the unreadable file on its own
    s1 = st.index[[k for k in st.keys if wl.studies.study_uid[st.index[k]] == "S1"][0]]
    assert sorted(wl.studies.images(s1)) == [0, 1]
    assert st.prob[s1] == pytest.approx(0.9) and st.decision[s1] == 1  # max over its frontal images
    assert wl.studies.aggregate[s1] == "max" and wl.studies.n_frontal[s1] == 2
    s3 = int(wl.images.study[3])
    assert st.status[s3] == 1 and math.isnan(st.prob[s3]) and st.views[st.view[s3]] == "LL"
    assert names(wl, Query(level="study", sort="probability", desc=True))[0].startswith(f"study {st.keys[s1][:8]}")


def test_query_from_url_parameters():
    q = Query.parse({"sort": "probability", "desc": "1", "status": "ok", "p_min": "0.3", "page": "2"})
    assert (q.sort, q.desc, q.status, q.p_min, q.page) == ("probability", True, "ok", 0.3, 2)
    assert Query.parse(q.params()) == q
    assert Query.parse({}, level="study").level == "study"
    for bad, match in (({"sort": "name"}, "sort='name'; expected one of"), ({"p_min": "nan"}, "p_min='nan'"),
                       ({"page": "0"}, "page='0'"), ({"per_page": "100000"}, "per_page"),
                       ({"status": "fine"}, "status='fine'")):
        with pytest.raises(ValueError, match=match):
            Query.parse(bad)


def test_blinded_queries_cannot_use_the_model_output():
    for params in ({"sort": "probability"}, {"decision": "1"}, {"p_min": "0.5"}):
        with pytest.raises(ValueError, match="blinded mode"):
            Query.parse(params, blinded=True)
    assert Query.parse({"sort": "read", "unread": "1"}, blinded=True).unread


def test_scores_of_two_models_or_bad_rows_are_refused(tmp_path):
    two = write_scores(tmp_path / "two.csv", [score_row("/a"), score_row("/b", model_id="m2")])
    with pytest.raises(ValueError, match="rows of 2 models"):
        load_worklist(two)
    bad = write_scores(tmp_path / "bad.csv", [score_row("/a", probability="1.5")])
    with pytest.raises(ValueError, match=r"bad.csv:2: probability_calibrated='1.5'"):
        load_worklist(bad)
    with pytest.raises(FileNotFoundError, match="scores file not found"):
        load_worklist(tmp_path / "none.csv")


def test_many_rows_are_held_in_columns(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(size=3000)
    rows = [score_row(f"/in/{i:05d}.dcm", probability=f"{v:.6f}", decision=str(int(v >= 0.5)),
                      study_uid=f"S{i // 2}", content_hash=f"{i:064x}") for i, v in enumerate(p)]
    wl = load_worklist(write_scores(tmp_path / "s.csv", rows))
    got, total = wl.image_table.page(Query(sort="probability", desc=True, per_page=10))
    assert total == 3000 and got.tolist() == np.argsort(-p, kind="stable")[:10].tolist()
    assert len(wl.study_table) == 1500
