"""`fibrosis monitor`: is the validation report still describing what the model meets?

Reads the reference the evaluation stored (``RUN/eval/test/reference.json``), one or
more scores files with their side files, optionally a labels CSV; writes
``OUT/monitor.json`` and ``OUT/monitor.html``. Alerts are one line each; the CLI exits 1
when there is any.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

from fibrosis import artefacts
from fibrosis import __version__
from fibrosis.io import atomic_write_bytes, file_sha256, write_json
from fibrosis.monitor import load
from fibrosis.monitor.compute import ALPHA, MonitorContext, monitor_result

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class MonitorSummary:
    json_path: Path
    html_path: Path
    alerts: list[str]
    notes: list[str]

    @property
    def alert(self) -> bool:
        return bool(self.alerts)


def _checkpoint(model: Path) -> Path:
    path = model / artefacts.BEST if model.is_dir() else model
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (expected a run directory with best.pt "
                                "or a .pt file written by `fibrosis train`)")
    return path


def monitor(model: str | Path, scores: Sequence[str | Path], out: str | Path, *,
            labels: str | Path | None = None, reference: str | Path | None = None,
            alpha: float = ALPHA, window: str = "auto", label_column: str | None = None,
            figures: bool = True) -> MonitorSummary:
    from fibrosis.model.checkpoint import load_checkpoint

    model, out = Path(model), Path(out)
    ckpt_path = _checkpoint(model)
    run = ckpt_path.parent
    ref_path = load.find_reference(run, Path(reference) if reference else None)
    ref = load.read_reference(ref_path)
    warnings: list[str] = []
    if file_sha256(ckpt_path)[:16] != ref.model_id:
        warnings.append(f"{ckpt_path} has changed since the reference was written (model_id "
                        f"{ref.model_id}): re-run `fibrosis evaluate` and re-score, or monitor with the "
                        "checkpoint that scored these files")
    rows = load.read_all_scores([Path(s) for s in scores], ref.model_id)
    if not rows:
        raise ValueError(f"{', '.join(map(str, scores))}: no scored rows; expected a scores file written by "
                         "`fibrosis score`")
    if labels:
        ingest_cfg = load_checkpoint(ckpt_path).config["ingest"]
        load.attach_labels(rows, Path(labels), label_column or ingest_cfg["label_column"],
                           ingest_cfg.get("excluded_views", ()))
    result = monitor_result(ref, rows, alpha=alpha, mode=window)
    result = dataclasses.replace(result, context=MonitorContext(
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), version=__version__,
        checkpoint=str(ckpt_path), model_id=ref.model_id, reference_path=str(ref_path), reference=ref,
        scores=[str(s) for s in scores], labels=str(labels) if labels else None, warnings=warnings))
    for w in warnings:
        logger.warning("%s", w)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / artefacts.MONITOR_JSON, out / artefacts.MONITOR_HTML
    # The alerts are logged as soon as they are known: a job watching the log or the exit
    # status must see them even if writing a file fails afterwards.
    for a in result.alerts:
        logger.warning("ALERT %s", a)
    for n in result.notes:
        logger.info("note: %s", n)
    write_json(json_path, result.to_json())
    from fibrosis.monitor.page import render_page

    atomic_write_bytes(html_path, render_page(result, figures=figures).encode("utf-8"))
    logger.info("monitor: %d alert(s) over %d window(s) -> %s", len(result.alerts),
                len(result.windows), html_path)
    return MonitorSummary(json_path, html_path, result.alerts, result.notes)
