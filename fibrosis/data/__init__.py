"""Stage 1, data: discover inputs, decode DICOM/PNG/JPEG through one pixel path, cache, split, feed."""
from fibrosis._exports import lazy

_EXPORTS = {
    "load_image": "fibrosis.data.pixels",
    "load_bytes": "fibrosis.data.pixels",
    "InputError": "fibrosis.data.dicom",
    "discover_entries": "fibrosis.data.discover",
    "IngestSummary": "fibrosis.data.ingest",
    "split_cache": "fibrosis.data.split",
    "CacheReader": "fibrosis.data.cache",
    "CacheWriter": "fibrosis.data.cache",
    "CacheLock": "fibrosis.data.cache",
    "patient_key": "fibrosis.data.identity",
    "resolve_salt": "fibrosis.data.identity",
    "CacheDataset": "fibrosis.data.dataset",
    "load_labels": "fibrosis.data.labels",
}
__getattr__ = lazy(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
