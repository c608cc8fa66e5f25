"""The file names of every artefact the stages hand each other, declared once.

A cache folder (``fibrosis ingest`` / ``split``), a run folder (``train`` / ``tune`` /
``evaluate``) and the files ``report``, ``score`` and ``monitor`` write: a stage that reads what
another wrote names the file through this module, so a rename cannot leave a reader behind.
"""
from __future__ import annotations

# ---------------------------------------------------------------- cache folder
MANIFEST = "manifest.csv"  # one row per cached image: keys, header values, label, split
REJECTS = "rejects.csv"  # one row per input not cached, with its reason
CACHE_META = "cache.json"  # image size, dtype, preprocessing, the ingest config of the last run
CONSOLIDATED = "consolidated.json"  # the committed parts the manifest was built from
SALT_KEY = "salt.key"  # the secret behind the patient keys (never leaves the site)
SALT_CHECK = "salt.check"  # a fingerprint of the salt, to refuse another one
NEAR_DUPLICATES = "near_duplicates.csv"  # image pairs across patients that split keeps together
SPLIT_STATE = "split.json"  # what the last split saw (manifest sha256, config) and reported

# ---------------------------------------------------------------- run folder
BEST = "best.pt"  # the checkpoint evaluate, report and score take
LAST = "last.pt"  # train's resume point
EPOCHS_CSV = "metrics.csv"  # train's metrics per epoch
EPOCHS_JSONL = "metrics.jsonl"
TRAIN_LOG = "train.log"
EVAL_DIR = "eval"  # RUN/eval/<name>/: one folder per evaluation
FROZEN_PREFIX = "frozen-"  # RUN/eval/frozen-<cache folder>-<split>/: an external (`evaluate --frozen`) one
METRICS = "metrics.json"  # evaluate's result, under eval/<split>/
PREDICTIONS = "predictions.csv"  # evaluate's per-image outputs, beside it
MLFLOW_RUN = "mlflow.json"  # the MLflow run evaluate logged to (tracking URI, run id), beside it
REFERENCE = "reference.json"  # the distributions monitor compares new scores with
TUNE = "tune.json"  # tune's arms table and choice
TUNE_STATE = "tune_state.json"  # the schema a resumable tune folder was written with
FOLDS = "folds.csv"  # tune's patient folds
UNIT_DONE = "done.json"  # a finished (fold, arm) unit
UNIT_STATE = "state.pt"  # an unfinished unit's last epoch
ARM_RESULT = "arm.json"  # an arm's pooled out-of-fold result
PROBE = "probe.pt"  # a linear probe's weights

# ---------------------------------------------------------------- report, score, monitor
REPORT_HTML = "report.html"
RUNS_INDEX = "index.html"  # `fibrosis runs DIR`: the page, in DIR by default
REPORT_PDF = "report.pdf"
SCORES = "scores.csv"
MONITOR_JSON = "monitor.json"
MONITOR_HTML = "monitor.html"
READER_LABELS = "reader_labels.csv"  # `review`'s labels, beside the scores unless --labels-out names another
READER_DIR = "reader"  # RUN/reader/: what `review` leaves for the report
READER_VS_MODEL = "reader.json"  # the reader's calls against the model's, under RUN/reader/


class SchemaError(ValueError):
    """An artefact written with a schema this version cannot read."""


def check_schema(path: object, found: object, current: int, *, oldest: int | None = None) -> int:
    """The schema number of an artefact read from ``path``: ``current``, or an older one from
    ``oldest`` on that its reader migrates. Anything else (a newer schema, one too old to migrate,
    no number at all) is one line naming the file, what it holds and what this version reads."""
    oldest = current if oldest is None else oldest
    if isinstance(found, int) and not isinstance(found, bool) and oldest <= found <= current:
        return found
    reads = f"{current}" if oldest == current else f"{oldest} to {current}"
    newer = isinstance(found, int) and not isinstance(found, bool) and found > current
    raise SchemaError(f"{path}: schema {found!r}; this version of fibrosis reads schema {reads}"
                      + ("; it was written by a newer version" if newer else ""))
