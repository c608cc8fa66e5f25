"""The checkpoint's ingest section for a cache built before ingest.polarity_qa existed."""
from __future__ import annotations

import json

from fibrosis.config import Config, IngestConfig, config_to_dict
from fibrosis.train.loop import cache_ingest_config


def test_cache_without_polarity_setting_was_built_keeping_suspects(tmp_path):
    old = config_to_dict(IngestConfig(image_size=256))
    del old["polarity_qa"]  # what cache.json of an older ingest holds
    (tmp_path / "cache.json").write_text(json.dumps({"format": 1, "ingest_config": old}))
    # Scoring must apply what built the cache (suspects kept), not today's default (auto).
    assert cache_ingest_config(Config(), tmp_path).ingest.polarity_qa == "keep"
    new = config_to_dict(IngestConfig(image_size=256))
    (tmp_path / "cache.json").write_text(json.dumps({"format": 1, "ingest_config": new}))
    assert cache_ingest_config(Config(), tmp_path).ingest.polarity_qa == "auto"
