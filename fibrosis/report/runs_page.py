"""The runs index page: the rows of :func:`fibrosis.report.runs.scan_runs` as one self-contained
HTML page (the report's renderer and CSS, no script, nothing fetched), each number written by
:mod:`fibrosis.report.format`, each report linked by a relative address."""
from __future__ import annotations

import os
import shlex
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from fibrosis import artefacts
from fibrosis.io import atomic_write_bytes
from fibrosis.report.format import NA, ci_label, missing, num, span
from fibrosis.report.render import Block, Link, render_html
from fibrosis.report.runs import RunRow, RunsIndex, scan_runs
from fibrosis.words import plural

HEADER = ["run", "evaluation", "date (UTC)", "model", "data", "split evaluated", "AUC (DeLong)",
          "calibration", "report"]


def _model(row: RunRow) -> str:
    m = row.model
    if m is None:
        return ""
    size = f", {m.input_size} px" if m.input_size else ""
    weights = f"ImageNet-pretrained ({m.weights})" if m.pretrained else f"not pretrained (weights: {m.weights})"
    return f"{m.arch}{size}, {weights}" + (f", tune arm {m.tune_arm}" if m.tune_arm else "")


def _data(row: RunRow) -> str:
    parts = ([f"cache {row.cache}"] if row.cache else []) + (
        [f"manifest {row.manifest_sha256[:12]}"] if row.manifest_sha256 else [])
    return ", ".join(parts) or NA


def _split(row: RunRow) -> str:
    counts = f" ({plural(row.n, 'image')}, {row.n_pos} positive)" if row.n is not None and row.n_pos is not None else ""
    return f"{row.split}{counts}" + ("; external (frozen)" if row.frozen else "")


def _auc(row: RunRow) -> str:
    if missing(row.auc):
        return NA
    return f"{num(row.auc, 'auc')} ({ci_label(row.ci_level or 0.95)} {span(row.auc_ci, 'auc')})"


def _calibration(row: RunRow) -> str:
    return f"{row.calibration or NA}: ECE {num(row.ece, 'ece')}, Brier {num(row.brier, 'brier')}"


def _href(target: Path, page: Path) -> str:
    """``target`` relative to the page's folder, as a URL path."""
    rel = os.path.relpath(target.resolve(), page.resolve().parent)
    return urllib.parse.quote(Path(rel).as_posix())


def _date(row: RunRow) -> str:
    return row.when.strftime("%Y-%m-%d %H:%M")


def _cells(row: RunRow, page: Path) -> list[object]:
    date = _date(row)
    if row.evaluation is None:
        return [row.run, "", date, _model(row), _data(row), "", "not evaluated", "",
                f"evaluate first: fibrosis evaluate --run {shlex.quote(str(row.folder))} --cache CACHE"]
    report: object = (Link(urllib.parse.unquote(_href(row.report, page)), _href(row.report, page)) if row.report
                      else f"no report yet: {row.report_command}")
    return [row.run, row.evaluation, date, _model(row), _data(row), _split(row), _auc(row), _calibration(row), report]


def build_blocks(index: RunsIndex, page: Path) -> list[Block]:
    """The page as report blocks; links are relative to ``page``, where it will be written."""
    n_unevaluated = sum(r.evaluation is None and r.problem is None for r in index.rows)
    summary = (f"{plural(index.n_runs, 'run')} under {index.root}, {plural(index.n_evaluations, 'evaluation')}"
               f"; {n_unevaluated} not evaluated; {index.n_unreadable} could not be read. "
               f"Written {index.written:%Y-%m-%d %H:%M} UTC; newest first.")
    blocks: list[Block] = [
        {"type": "h1", "text": f"Runs under {index.root}"},
        {"type": "p", "style": "warn" if index.n_unreadable else "summary", "text": summary},
        {"type": "p", "style": "note", "text": "One row per evaluation (RUN/eval/NAME/; frozen-CACHE-SPLIT is an "
         "external validation with the calibration and thresholds stored in the model). The model is the one the "
         "evaluation measured, as it recorded it. AUC with its confidence interval by DeLong on the evaluated "
         "split; ECE and Brier score after the calibrator. A report is linked when its metrics.json is a copy of "
         "the evaluation's: a report of an earlier evaluation of the same run is not this one's."},
    ]
    bad = [r for r in index.rows if r.problem]
    if bad:  # first: what the user has to act on; a table of its own, so that the reasons read in full
        blocks.append({"type": "table", "caption": "Could not be read", "header": ["run", "evaluation", "date (UTC)",
                                                                                   "reason"],
                       "rows": [[r.run, r.evaluation or "", _date(r), r.problem] for r in bad]})
    good = [r for r in index.rows if not r.problem]
    blocks.append({"type": "table", "caption": "Runs and evaluations", "header": HEADER,
                   "rows": [_cells(r, page) for r in good], "muted": [r.evaluation is None for r in good]})
    return blocks


def write_runs_index(root: str | Path, out: str | Path | None = None,
                     report_roots: Iterable[str | Path] = ()) -> tuple[Path, RunsIndex]:
    """Scan ``root`` and write the page to ``out`` (default ROOT/index.html); returns both."""
    index = scan_runs(root, report_roots)
    page = Path(out) if out is not None else Path(root) / artefacts.RUNS_INDEX
    text = render_html(build_blocks(index, page), {}, f"fibrosis runs: {index.root}")
    page.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(page, text.encode("utf-8"))
    return page, index
