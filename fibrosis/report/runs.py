"""`fibrosis runs`: every run under a folder and each of its evaluations, as typed rows.

A run folder is one holding the checkpoint (``best.pt``); runs may sit at any depth. A run's own
subfolders hold no further runs: the ``best.pt`` files inside a tune's ``cv/`` are its fold units.
Each ``RUN/eval/<name>/`` is one evaluation (``frozen-<cache>-<split>`` for an external one) and
one row; a run without any is one "not evaluated" row. A file that cannot be read (a corrupt or
newer-schema metrics.json, tune.json or checkpoint) is a row with the reason, never left out.

Artefacts are read through their typed readers only. The model of an evaluated row is the one its
metrics.json recorded when it was measured, so a row's numbers and its model cannot disagree, and
the checkpoint (hundreds of MB of weights for an ensemble) is opened only for runs without an
evaluation, memory-mapped. A report belongs to an evaluation when its metrics.json is a copy of the
evaluation's (`fibrosis report` copies it byte for byte), wherever `--out` put it.

The page is drawn by :mod:`fibrosis.report.runs_page`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fibrosis import artefacts
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.tune_record import TuneResult

if TYPE_CHECKING:  # the checkpoint's module imports torch: loaded only for a run without evaluations
    from fibrosis.model.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

# Folders never searched, besides hidden ones: MLflow's store, whose artefact copies of
# report.html would read as reports of their own.
SKIPPED = ("mlruns",)


@dataclass(frozen=True)
class Model:
    """What was measured: the architecture, input size and where the initial weights came from."""
    arch: str
    input_size: int | None
    weights: str  # the weights file's name, "none", or why ImageNet weights were not used
    pretrained: bool
    tune_arm: str | None  # the arm `fibrosis tune` chose; None: a `fibrosis train` run


@dataclass(frozen=True)
class RunRow:
    """One evaluation of one run, a run not evaluated yet, or a folder that could not be read."""
    run: str  # the run folder relative to the scanned folder ("." for the folder itself), with /
    folder: Path  # the run folder as the scanned folder was given (for commands that name it)
    evaluation: str | None  # its folder name under RUN/eval/; None: not evaluated
    when: dt.datetime  # UTC: the evaluation's date; else the checkpoint's (or the bad file's) time
    model: Model | None = None
    split: str | None = None
    frozen: bool = False  # external validation: calibration and thresholds applied as stored
    n: int | None = None
    n_pos: int | None = None
    cache: str | None = None  # the external cache's folder name (frozen evaluations)
    manifest_sha256: str | None = None  # of the evaluated images' manifest (the trained-on one if not evaluated)
    auc: float | None = None
    auc_ci: tuple[float, float] | None = None  # DeLong
    ci_level: float | None = None
    calibration: str | None = None  # the calibrator's method
    ece: float | None = None  # after calibration
    brier: float | None = None  # after calibration
    report: Path | None = None  # report.html of exactly this evaluation
    problem: str | None = None  # why the folder could not be read, one line

    @property
    def report_command(self) -> str:
        """The command that writes this evaluation's report."""
        return f"fibrosis report --run {shlex.quote(str(self.folder))} --split {shlex.quote(self.evaluation or '')}"


@dataclass(frozen=True)
class RunsIndex:
    root: Path
    rows: tuple[RunRow, ...]  # newest first
    n_runs: int
    written: dt.datetime  # UTC

    @property
    def n_evaluations(self) -> int:
        return sum(r.evaluation is not None and r.problem is None for r in self.rows)

    @property
    def n_unreadable(self) -> int:
        return sum(r.problem is not None for r in self.rows)


# ------------------------------------------------------------------ finding folders


def _walk(root: Path) -> Iterable[tuple[Path, list[str], list[str]]]:
    """os.walk of ``root`` in name order, without hidden folders, MLflow stores and cache folders
    (a cache holds thousands of images and neither runs nor reports)."""
    for dirpath, dirnames, filenames in os.walk(root):
        if artefacts.MANIFEST in filenames and artefacts.BEST not in filenames:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED)
        yield Path(dirpath), dirnames, filenames


def survey(root: Path) -> tuple[list[Path], list[Path]]:
    """One walk of ``root``: its run folders (outermost only, itself included) and its report
    folders (report.html beside metrics.json, as `fibrosis report` writes them)."""
    runs: list[Path] = []
    reports: list[Path] = []
    inside: set[Path] = set()  # folders within a run: their best.pt files are the run's own units
    for folder, dirnames, filenames in _walk(root):
        within = folder in inside
        if artefacts.BEST in filenames and not within:
            runs.append(folder)
        # A tune folder's fold units hold best.pt files of their own; before the tune has
        # written its best.pt (still running, or stopped), they are still not runs.
        if within or artefacts.BEST in filenames or artefacts.TUNE_STATE in filenames:
            inside.update(folder / d for d in dirnames)
        if artefacts.REPORT_HTML in filenames and artefacts.METRICS in filenames:
            reports.append(folder)
    return runs, reports


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (itself included), outermost only."""
    return survey(root)[0]


def index_reports(folders: Iterable[Path]) -> dict[str, Path]:
    """report.html by the sha256 of the metrics.json beside it (the newest report where one
    evaluation has several)."""
    found: dict[str, Path] = {}
    for folder in {f.resolve(): f for f in folders}.values():
        try:
            digest = _sha256(folder / artefacts.METRICS)
            page = folder / artefacts.REPORT_HTML
            if digest not in found or page.stat().st_mtime > found[digest].stat().st_mtime:
                found[digest] = page
        except OSError as exc:  # an unreadable report folder: no link to it
            logger.warning("%s: skipped (%s)", folder, exc.strerror or exc)
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mtime(path: Path) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    except OSError:
        return dt.datetime.fromtimestamp(0, dt.timezone.utc)


# ------------------------------------------------------------------ reading one run


def _weights(source: str | None, file: str | None) -> str:
    """The initial weights by name: the file's name, never a local path."""
    text = str(file or source or "none")
    text = text.removeprefix("imagenet:")
    return text if text.startswith("random-init") else Path(text).name or text


def _when(created: str, fallback: Path) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(created)
    except (TypeError, ValueError):  # not a date: the file's own time still orders the row
        return _mtime(fallback)
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def _row_from(result: EvaluationResult, base: RunRow, metrics: Path, tune_arm: str | None) -> RunRow:
    """The row of one evaluation: every read of the record's fields is here."""
    disc, cal, data, run = result.discrimination, result.calibration, result.data, result.run
    ci = disc.delong.ci
    name = base.evaluation or ""
    cache = None
    if result.frozen and name.startswith(artefacts.FROZEN_PREFIX) and name.endswith(f"-{result.split}"):
        cache = name[len(artefacts.FROZEN_PREFIX):-len(result.split) - 1]
    model = Model(arch="not recorded", input_size=None, weights=_weights(None, None), pretrained=False,
                  tune_arm=tune_arm)
    if run is not None:
        model = Model(arch=run.arch or "not recorded", input_size=run.input_size,
                      weights=_weights(run.weights.source, run.weights.file), pretrained=run.pretrained,
                      tune_arm=tune_arm)
    return dataclasses.replace(
        base, when=_when(result.created, metrics), model=model,
        split=result.split, frozen=result.frozen, n=data.n, n_pos=data.n_pos, cache=cache,
        manifest_sha256=data.provenance.manifest_sha256 if data.provenance else None, auc=disc.auc,
        auc_ci=(float(ci[0]), float(ci[1])) if ci else None,
        ci_level=float(result.evaluate_config.get("ci_level", 0.95)),
        calibration=cal.method, ece=cal.after.reliability.ece, brier=cal.after.brier)


def _model_from(ckpt: Checkpoint, tune_arm: str | None) -> Model:
    info = ckpt.weights_info
    return Model(arch=ckpt.arch, input_size=ckpt.preprocessing.input_size,
                 weights=_weights(info.get("source"), info.get("file")), pretrained=ckpt.pretrained,
                 tune_arm=tune_arm)


def _problem(exc: BaseException, path: Path) -> str:
    """One line naming the file (the readers' messages do; a section of the wrong shape does not)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"without the key {text}"
    elif isinstance(exc, OSError):
        text = f"{exc.filename or path}: {exc.strerror or exc}"
    if str(path) not in text:
        text = f"{path}: {type(exc).__name__}: {text}" if isinstance(exc, (TypeError, AttributeError, IndexError)) \
            else f"{path}: {text}"
    return text if len(text) <= 300 else text[:300] + "..."


# Reading one artefact can fail for any of these: a damaged file, a schema this version does not
# read, a section of the wrong shape. Each becomes a row naming the reason.
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def run_rows(root: Path, run: Path, reports: dict[str, Path]) -> list[RunRow]:
    """The rows of one run folder: one per evaluation, or one "not evaluated" (or unreadable) row."""
    base = RunRow(run=run.relative_to(root).as_posix(), folder=run, evaluation=None, when=_mtime(run / artefacts.BEST))
    rows: list[RunRow] = []
    arm = None
    try:
        arm = TuneResult.read(run / artefacts.TUNE).chosen or None if (run / artefacts.TUNE).is_file() else None
    except READ_ERRORS as exc:  # its own row: the evaluations still stand, without the arm's name
        rows.append(dataclasses.replace(base, problem=_problem(exc, run / artefacts.TUNE),
                                        when=_mtime(run / artefacts.TUNE)))
    try:
        top = run / artefacts.EVAL_DIR
        evals = sorted(p for p in top.iterdir() if p.is_dir()) if top.is_dir() else []
    except OSError as exc:
        return [*rows, dataclasses.replace(base, problem=_problem(exc, run / artefacts.EVAL_DIR))]
    for folder in evals:
        metrics = folder / artefacts.METRICS
        row = dataclasses.replace(base, evaluation=folder.name, when=_mtime(folder))
        try:
            if not metrics.is_file():
                raise ValueError(f"{metrics}: not found (an evaluation that did not finish?)")
            row = _row_from(EvaluationResult.read(metrics), row, metrics, arm)
            rows.append(dataclasses.replace(row, report=reports.get(_sha256(metrics))))
        except READ_ERRORS as exc:
            rows.append(dataclasses.replace(row, problem=_problem(exc, metrics), when=_mtime(metrics)))
    if not any(r.evaluation for r in rows):
        rows.append(_unevaluated(base, run, arm))
    return rows


def _unevaluated(base: RunRow, run: Path, arm: str | None) -> RunRow:
    from fibrosis.model.checkpoint import load_checkpoint  # torch, only for runs without an evaluation

    try:
        ckpt = load_checkpoint(run / artefacts.BEST, mmap=True)  # the record; the weights stay on disk
    except READ_ERRORS as exc:
        return dataclasses.replace(base, problem=_problem(exc, run / artefacts.BEST))
    return dataclasses.replace(base, model=_model_from(ckpt, arm), manifest_sha256=ckpt.manifest_hash or None)


def scan_runs(root: str | Path, report_roots: Iterable[str | Path] = ()) -> RunsIndex:
    """Every run under ``root`` and each of its evaluations, newest first; reports are looked for
    under ``root`` and ``report_roots`` (where `fibrosis report` wrote them: reports/<run>/ or --out)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; expected a folder holding run folders "
                                f"(each with its {artefacts.BEST})")
    runs, folders = survey(root)
    for extra in (Path(r) for r in report_roots):
        if extra.is_dir():
            folders += survey(extra)[1]
    reports = index_reports(folders)
    rows = [row for run in runs for row in run_rows(root, run, reports)]
    rows.sort(key=lambda r: (r.when, r.run, r.evaluation or ""), reverse=True)
    for row in rows:
        if row.problem:
            logger.warning("%s", row.problem)
    return RunsIndex(root=root, rows=tuple(rows), n_runs=len(runs), written=dt.datetime.now(dt.timezone.utc))
