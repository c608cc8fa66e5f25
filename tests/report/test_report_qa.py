"""The report's data section counts images the polarity check excluded or noted."""
from __future__ import annotations

import json
from dataclasses import replace

from helpers.records import data_summary as data_summary_record
from helpers.records import evaluation_result

from fibrosis.io import write_csv
from fibrosis.data.manifest import read_manifest
from fibrosis.config import Config
from fibrosis.report.sections.context import Context
from fibrosis.report.sections.data import data_blocks
from fibrosis.evaluate.summary import PolarityQa, data_summary
from fibrosis.data.synthetic import make_synthetic_cache


def test_data_section_counts_polarity_exclusions_and_notes(tmp_path):
    cache = make_synthetic_cache(tmp_path / "cache", n=12, size=32)
    meta = json.loads((cache / "cache.json").read_text())
    (cache / "cache.json").write_text(json.dumps({**meta, "ingest_config": {"polarity_qa": "exclude"}}))
    reason = "polarity suspect ({}, score={:.3f}: mediastinum-lungs=-0.100, corners-image=+0.300, below-lungs=-0.2; ...)"
    write_csv(cache / "rejects.csv", [
        {"path": f"/in/p{i}.dcm", "kind": "excluded", "reason": reason.format("inverted", -3 - i / 100)} for i in range(3)]
        + [{"path": "/in/u.dcm", "kind": "excluded", "reason": reason.format("unsure", -1.2)},
           {"path": "/in/lat.dcm", "kind": "excluded", "reason": "(0018,5101) ViewPosition='LL' is an excluded view"}],
        ("path", "kind", "reason", "transfer_syntax"))
    rows = read_manifest(cache / "manifest.csv")
    rows[0] = replace(rows[0], steps=("decode:x", "polarity:inverted(score=-3.000: ...)",
                                      "qa:polarity-suspect(score=-3.000: ...)", "resize:none"))
    rows[1] = replace(rows[1], steps=("decode:x", "polarity:inverted(score=-4.000: ...)",
                                      "qa:polarity-inverted(score=-4.000: ...)", "resize:none"))
    d = data_summary(cache, rows, Config())
    assert d.qa == PolarityQa("exclude", 4, {"polarity-inverted": 1, "polarity-suspect": 1})
    # one exclusion group per verdict for the polarity rejects, not one row per measured score
    assert [(e.reason, e.count) for e in d.exclusions] == [
        ("polarity suspect: looks inverted (ingest.polarity_qa=exclude)", 3),
        ("polarity suspect: polarity unsure (ingest.polarity_qa=exclude)", 1),
        ("(0018,5101) ViewPosition='LL' is an excluded view", 1)]
    blocks = data_blocks(Context(evaluation_result(data=data_summary_record(provenance=d))))
    items = dict(blocks[0]["items"])
    assert items["Polarity QA"] == ("ingest.polarity_qa=exclude: 4 input(s) excluded by the polarity check (inverted or "
                                    "unsure display); images in the cache with a QA note: 1 polarity-inverted, "
                                    "1 polarity-suspect")
