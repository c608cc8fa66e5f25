"""`fibrosis ingest`: input files -> preprocessing cache + manifest.csv + rejects.csv.

Accounting invariant: every discovered input path ends up exactly once in
manifest.csv or rejects.csv (kind error | excluded | duplicate). Commits are
per shard (:mod:`fibrosis.data.cache`): a killed run keeps its committed shards, and
the next run skips those files (same path, same content hash), re-tries earlier
rejects and redoes the rest -- nothing lost, nothing duplicated, because
consolidation keeps only the latest committed entry of each path.

Labels are re-joined on every run that has a labels CSV, skipped files included:
a corrected label or auxiliary finding (manifest.RowLabels) is committed as a rows-only
part (the rows keep their shard and index, no re-decode); a changed PNG/JPEG hint (patient_id, age, sex, view: the
only source of those fields for a raster export) re-ingests that file. A run
without a labels CSV keeps the labels the cache has.

Patient identity: PatientID is replaced by a salted, pseudonymous ``patient_key``
(:mod:`fibrosis.data.identity`, which says why the salt must stay private).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from fibrosis import artefacts
from fibrosis.data.cache import CacheLock, CacheWriter, consolidation_stamp, record_consolidation, recorded_consolidation
from fibrosis.io import is_no_space, no_space
from fibrosis.config import IngestConfig, config_to_dict
from fibrosis.data.discover import FOLDER_ERROR, check_inputs, discover_entries, iter_entries, log_discovery
from fibrosis.data.ingest_index import INDEX_NAME, PAGE, CommittedIndex
from fibrosis.data.identity import identity, patient_key, resolve_salt
from fibrosis.data.manifest import ManifestRow, RejectRow, RowLabels, iter_manifest, write_manifest, write_rejects
from fibrosis.data.records import AUX_ASSIGN, Decoded, Rejected, RejectKind, Skipped, file_stamp, parse_label
from fibrosis.data.labels import Labels, load_labels
from fibrosis.data.pixels import POLARITY_EXCLUDED, preprocessing_signature, qa_flags
from fibrosis.data.workers import ordered_map, process_file
from fibrosis.words import plural

logger = logging.getLogger(__name__)

REJECT_KINDS = typing.get_args(RejectKind)


@dataclass
class IngestSummary:
    cache_dir: str
    inputs: int = 0
    ingested: int = 0  # newly written to the cache in this run
    skipped: int = 0  # already in the cache with the same content hash
    relabelled: int = 0  # skipped rows whose label or aux_labels this run's labels CSV changed
    rejected: dict[str, int] = field(default_factory=lambda: {k: 0 for k in REJECT_KINDS})
    unlabeled: int = 0
    strict: bool = False
    qa_excluded: int = 0  # of rejected["excluded"]: by the polarity check (ingest.polarity_qa)
    qa_flagged: int = 0  # ingested inverted back, or as shown with a QA note

    @property
    def status(self) -> str:
        if self.ingested + self.skipped == 0:
            return "nothing-ingested"
        if self.strict and sum(self.rejected.values()) > 0:
            return "rejects-in-strict-mode"
        return "ok"

    @property
    def exit_code(self) -> int:
        return 0 if self.ok() else 1

    def ok(self) -> bool:
        """Something was ingested (or already was), and with ``strict`` nothing was rejected."""
        return self.status == "ok"

    def __str__(self) -> str:
        """One line in words: what came in, what went where, and the outcome when it is not ok."""
        rejected = sum(self.rejected.values())
        why = ", ".join(f"{n} {kind}" for kind, n in self.rejected.items() if n)
        text = (f"{plural(self.inputs, 'input')}: {self.ingested} ingested, {self.skipped} already in the cache"
                f"{f' ({self.relabelled} relabelled)' if self.relabelled else ''}, {rejected} rejected"
                f"{f' ({why})' if why else ''}")
        if self.unlabeled:
            text += f"; {plural(self.unlabeled, 'image')} without a label"
        return text if self.ok() else f"{text}; {self.status.replace('-', ' ')}"


# ---------------------------------------------------------------- inputs, identity


def discover(inputs: Iterable[str | Path]) -> list[Path]:
    """Input files (:func:`fibrosis.data.discover.discover_entries`), for callers that need files
    only; an unreadable folder raises rather than being dropped silently."""
    files = []
    for path, error in discover_entries(inputs):
        if error:
            raise OSError(f"{path}: {error}")
        files.append(Path(path))
    return files


def _listable_again(reject: RejectRow) -> bool:
    """A folder rejected as unlistable that can be listed now: its files are inputs again,
    so its reject no longer stands (it is never re-discovered to be superseded)."""
    if reject.kind != "error" or not reject.reason.startswith(FOLDER_ERROR):
        return False
    try:
        with os.scandir(reject.path):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- cache state


def consolidate(cache_dir: str | Path, index: CommittedIndex | None = None) -> tuple[int, int]:
    """Rewrite manifest.csv / rejects.csv from the committed parts; keeps ``split``
    of rows whose path and content are unchanged. Returns (rows, rejects).

    ``index`` is the run's own view of the committed parts (what loading every part would give),
    updated as it committed: passing it saves reading every part back. Either way the manifest
    is never in memory: the old one is streamed into the on-disk index for its ``split`` and
    ``dhash``, and the new one is streamed from the index to disk."""
    root = Path(cache_dir)
    if index is None:  # a run of its own: the index lives in the cache, so it takes ingest's lock
        with CacheLock(root), CommittedIndex(root) as own:
            own.load_parts(root)
            return consolidate(root, own)
    stamp = {**consolidation_stamp(root), "listable_again": _listable_folders(index)}
    if stamp == recorded_consolidation(root):
        # nothing committed since the last consolidation, neither file touched, and the same
        # unlistable folders listable again: the rewrite would give the same bytes
        return index.count("row"), index.count("reject") - len(stamp["listable_again"])
    if (root / artefacts.MANIFEST).exists():
        index.set_old_split((r.path, r.content_hash, r.split, r.dhash)
                            for r in iter_manifest(root / artefacts.MANIFEST))
    n_rows = write_manifest(root / artefacts.MANIFEST, index.rows_in_cache_order())
    listable = set(stamp["listable_again"])
    n_rejects = write_rejects(root / artefacts.REJECTS,
                              (e for e in index.rejects_in_path_order() if e.path not in listable))
    record_consolidation(root, {**consolidation_stamp(root), "listable_again": stamp["listable_again"]})
    return n_rows, n_rejects


def _listable_folders(index: CommittedIndex) -> list[str]:
    """Paths of the committed folder rejects that can be listed now (dropped from rejects.csv)."""
    return [r.path for r in index.folder_rejects() if _listable_again(r)]


def _remove_uncommitted(root: Path) -> None:
    """Drop what a killed run left without its commit marker (part CSV)."""
    if not (root / "parts").is_dir():
        return
    committed = {p.stem for p in (root / "parts").glob("shard-*.csv")}
    for p in (root / "shards").iterdir() if (root / "shards").is_dir() else ():
        # a temporary file of an atomic write (hidden), or a shard whose part never committed
        if p.name.startswith(".") or (p.suffix == ".npy" and p.stem not in committed):
            p.unlink()
    for p in (root / "parts").iterdir():
        stem = p.stem.replace("rejects-", "shard-")
        if p.name.startswith(".") or (p.name.startswith("rejects-") and stem not in committed):
            p.unlink()


# ---------------------------------------------------------------- ingest


def _identity_keys(content_hash: str, sop_uid: str) -> list[str]:
    return [content_hash] + ([f"sop:{sop_uid}"] if sop_uid and not sop_uid.startswith("file:") else [])


def _joined(labels: Labels, path: str, sop_uid: str, study_uid: str) -> tuple[RowLabels, str]:
    """(the label columns of an image from the labels CSV, how its row was joined)."""
    label, aux, how = labels.join(path, sop_uid, study_uid)
    return RowLabels(parse_label(label), aux), how


def _count_aux(counts: Counter[str], aux: str) -> None:
    """Count the auxiliary values (an ``aux_labels`` cell) an image of this run's manifest holds
    (for the summary log)."""
    counts["aux-images"] += bool(aux)
    counts["aux-values"] += aux.count(AUX_ASSIGN)


def _manifest_row(res: Decoded, key: str, labels: Labels | None, counts: Counter[str]) -> ManifestRow:
    """The manifest row of a decoded file, not yet placed in a shard (CacheWriter.write_shard does)."""
    joined = RowLabels()
    if labels is not None:
        joined, how = _joined(labels, res.path, res.meta.sop_uid, res.meta.study_uid)
        counts[f"label-by-{how}" if how else "unlabeled"] += 1
        _count_aux(counts, joined.aux_labels)
    meta = res.meta
    row = ManifestRow(
        path=res.path, content_hash=res.content_hash, source_format=meta.source_format, patient_key=key,
        study_uid=meta.study_uid, series_uid=meta.series_uid, sop_uid=meta.sop_uid,
        view_position=meta.view_position, body_part=meta.body_part, modality=meta.modality,
        manufacturer=meta.manufacturer, model_name=meta.model_name, sex=meta.sex, age=meta.age,
        pixel_spacing=meta.pixel_spacing, rows=meta.rows, cols=meta.cols, transfer_syntax=meta.transfer_syntax,
        photometric=meta.photometric, steps=res.steps, dhash=res.dhash, label=joined.label,
        aux_labels=joined.aux_labels)
    return row.stamped(res.stamp)


def _hints_change(row: ManifestRow, hints: dict[str, Any], salt: str) -> bool:
    """Would this run's hints change a committed PNG/JPEG row? For a raster export the
    hints are the only source of these fields, so the comparison is exact; a DICOM's own
    header wins over hints (``pixels._apply_hints``), so DICOM rows are not compared."""
    if row.source_format not in ("png", "jpeg"):
        return False
    want = {col: str(hints.get(h, "") or "").strip() for col, h in
            (("age", "age"), ("sex", "sex"), ("view_position", "view"), ("patient_key", "patient_id"))}
    want["sex"], want["view_position"] = want["sex"].upper(), want["view_position"].upper()
    want["patient_key"] = patient_key(want["patient_key"] or "file:" + row.content_hash, salt)
    return any(row.cell(k) != v for k, v in want.items())


def _unchanged(path: str, entry: ManifestRow) -> bool:
    """The file's stamp equals the one recorded with its committed row: skipped unread.
    A row of an older version has no stamp and is hashed once (its stamp is then recorded)."""
    recorded = entry.stamp()
    if recorded is None:
        return False
    try:
        now = file_stamp(os.stat(path))
    except OSError:
        return False  # gone or unreadable: the worker reports it
    return now == recorded


def _label_changes(entry: ManifestRow, labels: Labels, path: str) -> RowLabels | None:
    """The label columns this run's labels CSV gives a committed row, where they differ from the
    row's (None: unchanged). They are rewritten into the row by a rows-only part without
    re-reading the file (an added label column joins RowLabels)."""
    joined, _ = _joined(labels, path, entry.sop_uid, entry.study_uid)
    return None if joined == entry.labels() else joined


class _RowsOnly:
    """Rows-only parts: committed rows with changed labels or a new stamp. The rows keep their
    own shard/index (no array is written), and being newer than the part that first committed
    them they win at consolidation, in this and every later run. Committed every ``size`` rows,
    so a run that relabels the whole archive holds one part's rows, not the archive's."""

    def __init__(self, root: Path, writer: CacheWriter, index: CommittedIndex, size: int):
        self.root, self.writer, self.index, self.size = root, writer, index, size
        self.rows: list[ManifestRow] = []

    def add(self, row: ManifestRow) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.size:
            self.commit()

    def commit(self) -> None:
        if self.rows:
            write_manifest(self.root / "parts" / f"shard-{self.writer.next_shard_id():06d}.csv", self.rows)
            self.index.put(self.rows)
            self.rows.clear()


def ingest(inputs: list[str | Path], cache_dir: str | Path, cfg: IngestConfig, *, strict: bool = False,
           workers: int | None = None, progress: bool = True, verify: bool = False) -> IngestSummary:
    """Ingest every input into ``cache_dir``; see the module docstring for the guarantees.

    A committed file whose (size, mtime_ns, device:inode) is unchanged is skipped without being
    read -- a re-run or a resume costs a stat per file, not a hash of every byte; ``verify``
    hashes every file anyway (a file rewritten with its old mtime restored is caught only so).

    Memory does not grow with the number of files: the inputs, the committed entries, the
    duplicate owners and the work list live in an on-disk index (:mod:`fibrosis.data.ingest_index`)
    and every list in memory is at most one shard long."""
    root = Path(cache_dir)
    labels = load_labels(cfg.labels_csv, cfg.label_column, cfg.aux_label_columns, cfg.findings_column,
                         cfg.findings_none, max_findings=cfg.max_findings,
                         views=cfg.excluded_views) if cfg.labels_csv else None
    check_inputs(inputs)  # a mistyped input is refused before the cache folder is created
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _ingest(inputs, root, cfg, labels, strict, workers, progress, verify)
    except sqlite3.Error as exc:  # the scratch index (in the cache folder) filled the disk
        if is_no_space(exc):
            raise no_space(None, root / INDEX_NAME) from None
        raise


def _ingest(inputs: list[str | Path], root: Path, cfg: IngestConfig, labels: Labels | None, strict: bool,
            workers: int | None, progress: bool, verify: bool) -> IngestSummary:
    counts: Counter[str] = Counter()
    with CacheLock(root), CommittedIndex(root) as index:  # the index is in the cache: lock first
        n_inputs = _index_inputs(index, inputs, root, cfg, labels)
        if labels is not None:  # before any work: a label must never reach two images
            labels.check_unique(path for path, error in index.inputs() if not error)
        summary = IngestSummary(cache_dir=str(root), inputs=n_inputs, strict=strict)
        _remove_uncommitted(root)
        writer = CacheWriter(root, cfg.image_size, cfg.cache_dtype, preprocessing_signature(cfg),
                             ingest_config=config_to_dict(cfg))
        salt = resolve_salt(root, record=True)
        index.load_parts(root)
        index.build_owners()
        rows_only = _RowsOnly(root, writer, index, cfg.shard_size)
        shards = _Shards(writer, index, cfg.shard_size, rows_only)
        for path, error in index.inputs():  # an unlistable folder is accounted for as an input
            if error:
                shards.reject(Rejected(path, "", "error", error), summary)
        n_unread, n_labels = _plan(index, labels, salt, verify, rows_only, counts)
        summary.skipped += n_unread
        if n_unread:
            logger.info("%s unchanged since committed (size, mtime, inode): skipped unread", plural(n_unread, "file"))
        n_tasks = index.task_count()
        n_workers = workers if workers is not None else (cfg.workers or len(os.sched_getaffinity(0)))
        bar = tqdm(total=n_tasks, unit="img", desc="ingest", disable=not progress)
        for res in ordered_map(process_file, index.tasks(), cfg, max(1, min(n_workers, n_tasks))):
            bar.update()
            if isinstance(res, Skipped):
                summary.skipped += 1
                changes = index.changes(res.path)
                n_labels += changes is not None
                if labels is not None:
                    _count_aux(counts, (changes or _committed(index, res.path).labels()).aux_labels)
                shards.skipped(res, changes)
            elif isinstance(res, Decoded):
                shards.decoded(res, lambda r: _manifest_row(r, identity(r.meta, r.content_hash, salt, counts),
                                                             labels, counts), summary)
            else:
                shards.reject(res, summary)
        shards.commit()
        rows_only.commit()
        summary.relabelled = n_labels
        bar.close()
        n_rows, n_rejects = consolidate(root, index)
    _log_summary(summary, counts, labels, cfg, n_rows, n_rejects)
    return summary


def _committed(index: CommittedIndex, path: str) -> ManifestRow:
    """The committed row of ``path``, which a Skipped result matched."""
    hit = index.get(path)
    assert isinstance(hit, ManifestRow)  # a file is skipped only when its committed row has the same content
    return hit


def _index_inputs(index: CommittedIndex, inputs: list[str | Path], root: Path, cfg: IngestConfig,
                  labels: Labels | None) -> int:
    """Record (path, discovery error) of every input in ``index``; returns their number. The
    labels CSV and the cache's own files (a cache placed inside an input folder holds our
    outputs) are not inputs."""
    labels_csv = str(Path(cfg.labels_csv).resolve()) if labels is not None and cfg.labels_csv else None
    # discovery gives resolved paths: only the cache folder needs resolving, and a string
    # prefix test is exact on resolved paths (no Path object per file)
    resolved_root = str(root.resolve())
    under_root = 0

    def wanted() -> Iterator[tuple[str, str]]:
        nonlocal under_root
        for path, error in iter_entries(inputs):
            if path == labels_csv:
                continue
            if path == resolved_root or path.startswith(resolved_root + os.sep):
                under_root += 1
                continue
            yield path, error

    index.add_inputs(wanted())
    n, folder_errors, others = index.input_counts()
    log_discovery(folder_errors, others)
    if under_root:
        logger.info("%s under the cache folder %s are not inputs", plural(under_root, "file"), root)
    return n


def _plan(index: CommittedIndex, labels: Labels | None, salt: str, verify: bool, rows_only: _RowsOnly,
          counts: Counter[str]) -> tuple[int, int]:
    """Which files to decode or hash (recorded as the index's tasks), which to skip unread, and
    which labels changed. Returns (files skipped unread, of them relabelled)."""
    unread = relabelled = 0
    tasks: list[tuple[str, str, dict[str, Any], RowLabels | None]] = []
    for path, error in index.inputs():
        if error:
            continue
        entry = index.get(path)
        known = entry.content_hash if isinstance(entry, ManifestRow) else ""
        hints = labels.hints(path) if labels else {}
        changes: RowLabels | None = None
        if isinstance(entry, ManifestRow) and labels is not None:
            if _hints_change(entry, hints, salt):
                known = ""  # patient key / view policy come from decoding with the hints
            else:
                changes = _label_changes(entry, labels, path)
        if known and isinstance(entry, ManifestRow) and not verify and _unchanged(path, entry):
            unread += 1
            if labels is not None:
                _count_aux(counts, (changes or entry.labels()).aux_labels)
            if changes is not None:
                relabelled += 1
                rows_only.add(entry.relabelled(changes))
        else:
            tasks.append((path, known, hints, changes))
            if len(tasks) >= PAGE:
                index.add_tasks(tasks)
                tasks.clear()
    index.add_tasks(tasks)
    return unread, relabelled


class _Shards:
    """Buffers results into shards and commits each when full.

    Duplicates are found here: the same bytes, or the same DICOM instance re-exported (same
    SOPInstanceUID, other transfer syntax or header) -- either would let one image sit in
    two splits. The first path (commit order, then sorted) wins."""

    def __init__(self, writer: CacheWriter, index: CommittedIndex, size: int, rows_only: _RowsOnly):
        self.writer, self.index, self.size, self.rows_only = writer, index, size, rows_only
        self.images: list[Any] = []
        self.rows: list[ManifestRow] = []
        self.rejects: list[RejectRow] = []

    def skipped(self, res: Skipped, changes: RowLabels | None) -> None:
        entry = _committed(self.index, res.path)
        # Same content, new or missing stamp (touched, copied back, a cache of an older
        # version): record the stamp, so the next run skips the file unread.
        if changes is not None or entry.stamp() != res.stamp:
            self.rows_only.add(entry.stamped(res.stamp).relabelled(changes or entry.labels()))

    def decoded(self, res: Decoded, manifest_row: Callable[[Decoded], ManifestRow], summary: IngestSummary) -> None:
        keys = _identity_keys(res.content_hash, res.meta.sop_uid)
        clash = next(((k, owner) for k in keys if (owner := self.index.owner(k)) not in (None, res.path)), None)
        if clash is not None:
            what = (f"same (0008,0018) SOPInstanceUID {clash[0][4:]}" if clash[0].startswith("sop:")
                    else f"identical content (sha256 {res.content_hash[:16]}...)")
            self.reject(Rejected(res.path, res.content_hash, "duplicate", f"{what} as {clash[1]}",
                                 res.meta.transfer_syntax), summary)
            return
        self.index.set_owner(keys, res.path)
        self.rows.append(manifest_row(res))
        self.images.append(res.image)
        summary.ingested += 1
        summary.qa_flagged += bool(qa_flags(res.steps))
        self._maybe_commit()

    def reject(self, res: Rejected, summary: IngestSummary) -> None:
        record = RejectRow(res.path, res.kind, res.reason, res.transfer_syntax)
        summary.rejected[res.kind] += 1
        summary.qa_excluded += res.kind == "excluded" and res.reason.startswith(POLARITY_EXCLUDED)
        logger.debug("%s: %s: %s", res.path, res.kind, res.reason)
        # A rejected file is read again every run (a decoder installed or a setting changed since
        # may take it), but the same verdict again is not committed again: it would change
        # nothing but add a part per run, and a no-op run would never be one.
        if self.index.is_latest(record):
            return
        self.rejects.append(record)
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if len(self.rows) >= self.size or len(self.rejects) >= self.size:
            self.commit()

    def commit(self) -> None:
        if self.rows or self.rejects:
            placed = self.writer.write_shard(self.writer.next_shard_id(), self.images, self.rows, self.rejects)
            # what loading the parts would give, without reading them back
            self.index.put(placed)
            self.index.put(self.rejects)
            self.images.clear()
            self.rows.clear()
            self.rejects.clear()


def _log_summary(summary: IngestSummary, counts: Counter[str], labels: Labels | None, cfg: IngestConfig,
                 n_rows: int, n_rejects: int) -> None:
    labelled = labels is not None
    summary.unlabeled = counts["unlabeled"] if labelled else summary.ingested
    for what, n in sorted(counts.items()):
        if what.startswith("patient-from"):
            logger.warning("%s without PatientID: patient key derived from the %s, so images "
                           "of one patient may land in different splits", plural(n, "image"), what.split("-")[-1])
    if labelled and counts["unlabeled"]:
        logger.warning("%s without a row in %s", plural(counts["unlabeled"], "ingested image"), cfg.labels_csv)
    logger.info("ingest: %s; the cache now holds %s and %s (%s)", summary, plural(n_rows, "image"),
                plural(n_rejects, "reject"), summary.cache_dir)
    if labels is not None and labels.aux_names:
        logger.info("auxiliary findings: %d (%s); %s joined to %s (new and "
                    "committed)", len(labels.aux_names), ", ".join(labels.aux_names),
                    plural(counts["aux-values"], "labelled value"), plural(counts["aux-images"], "image"))
    if summary.qa_excluded or summary.qa_flagged:
        # Not a debug-level detail: these images are left out of (or enter) training on a guess.
        logger.warning("polarity QA (ingest.polarity_qa=%s): %s excluded (inverted or unsure), "
                       "%d ingested inverted back or with a qa: note (manifest steps)", cfg.polarity_qa,
                       plural(summary.qa_excluded, "image"), summary.qa_flagged)
