"""`fibrosis ingest`: input files -> preprocessing cache + manifest.csv + rejects.csv.

Accounting invariant: every discovered input path ends up exactly once in
manifest.csv or rejects.csv (kind error | excluded | duplicate). Commits are
per shard (:mod:`fibrosis.data.cache`): a killed run keeps its committed shards, and
the next run skips those files (same path, same content hash), re-tries earlier
rejects and redoes the rest -- nothing lost, nothing duplicated, because
consolidation keeps only the latest committed entry of each path.

Labels are re-joined on every run that has a labels CSV, skipped files included:
a corrected label or auxiliary finding (LABEL_COLUMNS) is committed as a rows-only
part (the rows keep their shard and index, no re-decode); a changed PNG/JPEG hint (patient_id, age, sex, view: the
only source of those fields for a raster export) re-ingests that file. A run
without a labels CSV keeps the labels the cache has.

Patient identity: PatientID is replaced by a salted, pseudonymous ``patient_key``
(:mod:`fibrosis.data.identity`, which says why the salt must stay private).
"""
from __future__ import annotations

import logging
import os
import sys
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from fibrosis.data.cache import MANIFEST_COLUMNS, REJECT_COLUMNS, CacheLock, CacheWriter, iter_parts

from fibrosis.io import iter_csv, write_csv
from fibrosis.config import IngestConfig, config_to_dict
from fibrosis.data.discover import FOLDER_ERROR, discover_entries
from fibrosis.data.identity import identity, patient_key, resolve_salt
from fibrosis.data.records import AUX_ASSIGN, STAMP_COLUMNS, Decoded, Rejected, RejectKind, Skipped, file_stamp
from fibrosis.data.labels import Labels, load_labels
from fibrosis.data.pixels import POLARITY_EXCLUDED, preprocessing_signature, qa_flags
from fibrosis.data.workers import ordered_map, process_file

logger = logging.getLogger(__name__)

REJECT_KINDS = typing.get_args(RejectKind)
# The manifest columns a labels CSV sets: re-joined on every run that has one.
LABEL_COLUMNS = ("label", "aux_labels")


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
    qa_excluded: int = 0  # of rejected["excluded"]: by the polarity QA (ingest.polarity_qa=exclude)
    qa_flagged: int = 0  # ingested with a QA note (polarity_qa keep or invert)

    @property
    def status(self) -> str:
        if self.ingested + self.skipped == 0:
            return "nothing-ingested"
        if self.strict and sum(self.rejected.values()):
            return "rejects-in-strict-mode"
        return "ok"

    @property
    def exit_code(self) -> int:
        return 0 if self.ok() else 1

    def ok(self) -> bool:
        """Something was ingested (or already was), and with ``strict`` nothing was rejected."""
        return self.status == "ok"


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


def _listable_again(reject: dict[str, str]) -> bool:
    """A folder rejected as unlistable that can be listed now: its files are inputs again,
    so its reject no longer stands (it is never re-discovered to be superseded)."""
    if reject["kind"] != "error" or not reject["reason"].startswith(FOLDER_ERROR):
        return False
    try:
        with os.scandir(reject["path"]):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- cache state


# Columns unique to (almost) every row; every other value repeats across the archive
# (modality, transfer syntax, steps, shard, label, ...) and is interned: one string object per
# distinct value instead of one per row, a quarter of the index's memory at 100k rows.
_UNIQUE_COLUMNS = frozenset(("path", "content_hash", "study_uid", "series_uid", "sop_uid", "patient_key",
                             "dhash", "file_mtime_ns", "file_id"))


def _latest_entries(cache_dir: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """path -> ('row' | 'reject', entry) from the newest committed part naming it."""
    latest: dict[str, tuple[str, dict[str, str]]] = {}
    for _, rows, rejects in iter_parts(cache_dir):
        for r in rows:
            for k, v in r.items():
                if k not in _UNIQUE_COLUMNS and isinstance(v, str):
                    r[k] = sys.intern(v)
            latest[r["path"]] = ("row", r)
        for r in rejects:
            latest[r["path"]] = ("reject", r)
    return latest


def _as_read(entry: dict[str, Any], columns: tuple[str, ...]) -> dict[str, str]:
    """A committed row or reject as reading its part back would give it (all text)."""
    return {k: "" if entry.get(k) is None else str(entry[k]) for k in columns}


def consolidate(cache_dir: str | Path, latest: dict[str, tuple[str, dict[str, str]]] | None = None) -> tuple[int, int]:
    """Rewrite manifest.csv / rejects.csv from the committed parts; keeps ``split``
    of rows whose path and content are unchanged. Returns (rows, rejects).

    ``latest`` is the run's own view of the committed parts (what :func:`_latest_entries` would
    read back), updated as it committed: passing it keeps one copy of the manifest in memory
    instead of three (entries are completed in place, the old manifest is streamed for its
    ``split`` and ``dhash`` only, and the CSV is streamed to disk)."""
    root = Path(cache_dir)
    if latest is None:
        latest = _latest_entries(root)
    old_split: dict[tuple[str, str], tuple[str, str]] = {}  # -> (split, dhash)
    if (root / "manifest.csv").exists():
        for r in iter_csv(root / "manifest.csv"):
            key = (r["path"], r["content_hash"])
            if latest.get(r["path"], ("", {}))[0] == "row":  # only what the new manifest keeps
                old_split[key] = (r.get("split", ""), r.get("dhash") or "")
    rows = [e for kind, e in latest.values() if kind == "row"]
    for r in rows:
        r["split"], dhash = old_split.get((r["path"], r["content_hash"]), ("", ""))
        # parts of an older version have no dHash; split computed it into the manifest
        r["dhash"] = r.get("dhash") or dhash
    del old_split
    rows.sort(key=lambda r: (int(r["shard"]), int(r["index"])))
    rejects = sorted((e for kind, e in latest.values() if kind == "reject" and not _listable_again(e)),
                     key=lambda r: r["path"])
    write_csv(root / "manifest.csv", rows, MANIFEST_COLUMNS)
    write_csv(root / "rejects.csv", rejects, REJECT_COLUMNS)
    return len(rows), len(rejects)


def _remove_uncommitted(root: Path) -> None:
    """Drop what a killed run left without its commit marker (part CSV)."""
    if not (root / "parts").is_dir():
        return
    committed = {p.stem for p in (root / "parts").glob("shard-*.csv")}
    for p in (root / "shards").glob("*.npy"):
        if p.name.startswith(".") or p.stem not in committed:
            p.unlink()
    for p in (root / "parts").iterdir():
        stem = p.stem.replace("rejects-", "shard-")
        if p.name.startswith(".") or (p.name.startswith("rejects-") and stem not in committed):
            p.unlink()


# ---------------------------------------------------------------- ingest


def _identity_keys(content_hash: str, sop_uid: str) -> list[str]:
    return [content_hash] + ([f"sop:{sop_uid}"] if sop_uid and not sop_uid.startswith("file:") else [])


def _joined(labels: Labels, path: str, sop_uid: str, study_uid: str) -> tuple[dict[str, str], str]:
    """(the LABEL_COLUMNS of an image from the labels CSV, how its row was joined)."""
    label, aux, how = labels.join(path, sop_uid, study_uid)
    return dict(zip(LABEL_COLUMNS, (label, aux))), how


def _count_aux(counts: Counter, row: dict[str, str]) -> None:
    """Count the auxiliary values an image of this run's manifest holds (for the summary log)."""
    aux = row.get("aux_labels", "")  # a row of an older version has none
    counts["aux-images"] += bool(aux)
    counts["aux-values"] += aux.count(AUX_ASSIGN)


def _manifest_row(res: Decoded, key: str, labels: Labels | None, counts: Counter) -> dict[str, Any]:
    row = {k: v for k, v in res.meta.manifest_fields().items() if k in MANIFEST_COLUMNS}
    joined = {"label": "", "aux_labels": ""}
    if labels is not None:
        joined, how = _joined(labels, res.path, res.meta.sop_uid, res.meta.study_uid)
        counts[f"label-by-{how}" if how else "unlabeled"] += 1
        _count_aux(counts, joined)
    row.update(path=res.path, content_hash=res.content_hash, patient_key=key,
               steps="|".join(res.steps), split="", dhash=res.dhash, **joined, **res.stamp)
    return row


def _hints_change(row: dict[str, str], hints: dict[str, Any], salt: str) -> bool:
    """Would this run's hints change a committed PNG/JPEG row? For a raster export the
    hints are the only source of these fields, so the comparison is exact; a DICOM's own
    header wins over hints (``pixels._apply_hints``), so DICOM rows are not compared."""
    if row["source_format"] not in ("png", "jpeg"):
        return False
    want = {col: str(hints.get(h, "") or "").strip() for col, h in
            (("age", "age"), ("sex", "sex"), ("view_position", "view"), ("patient_key", "patient_id"))}
    want["sex"], want["view_position"] = want["sex"].upper(), want["view_position"].upper()
    want["patient_key"] = patient_key(want["patient_key"] or "file:" + row["content_hash"], salt)
    return any(row.get(k, "") != v for k, v in want.items())


def _unchanged(path: str, entry: dict[str, str]) -> bool:
    """The file's stamp equals the one recorded with its committed row: skipped unread.
    A row of an older version has no stamp and is hashed once (its stamp is then recorded)."""
    if not all(entry.get(c) for c in STAMP_COLUMNS):
        return False
    try:
        now = file_stamp(os.stat(path))
    except OSError:
        return False  # gone or unreadable: the worker reports it
    return all(now[c] == entry[c] for c in STAMP_COLUMNS)


def _commit_relabels(root: Path, writer: CacheWriter, rows: list[dict[str, str]]) -> None:
    """A rows-only part: the rows keep their own shard/index (no array is written), and
    being the newest part it wins at consolidation, in this and every later run."""
    if rows:
        write_csv(root / "parts" / f"shard-{writer.next_shard_id():06d}.csv", rows, MANIFEST_COLUMNS)


def ingest(inputs: list[str | Path], cache_dir: str | Path, cfg: IngestConfig, *, strict: bool = False,
           workers: int | None = None, progress: bool = True, verify: bool = False) -> IngestSummary:
    """Ingest every input into ``cache_dir``; see the module docstring for the guarantees.

    A committed file whose (size, mtime_ns, device:inode) is unchanged is skipped without being
    read -- a re-run or a resume costs a stat per file, not a hash of every byte; ``verify``
    hashes every file anyway (a file rewritten with its old mtime restored is caught only so)."""
    root = Path(cache_dir)
    labels = load_labels(cfg.labels_csv, cfg.label_column, cfg.aux_label_columns, cfg.findings_column,
                         cfg.findings_none) if cfg.labels_csv else None
    entries = _input_entries(inputs, root, cfg, labels)
    paths = [Path(p) for p, error in entries if not error]
    if labels is not None:
        labels.check_unique(paths)  # before any work: a label must never reach two images
    root.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary(cache_dir=str(root), inputs=len(entries), strict=strict)
    counts: Counter = Counter()
    with CacheLock(root):
        _remove_uncommitted(root)
        writer = CacheWriter(root, cfg.image_size, cfg.cache_dtype, preprocessing_signature(cfg),
                             ingest_config=config_to_dict(cfg))
        salt = resolve_salt(root, record=True)
        latest = _latest_entries(root)
        plan = _plan(paths, latest, labels, salt, verify)
        shards = _Shards(writer, latest, cfg.shard_size, _owners(latest))
        for path, error in entries:  # an unlistable folder is accounted for as an input
            if error:
                shards.reject(Rejected(path, "", "error", error), summary)
        for path in plan.unread:
            summary.skipped += 1
            if path in plan.new_label:
                shards.relabelled.append({**latest[path][1], **plan.new_label[path]})
            if labels is not None:
                _count_aux(counts, plan.new_label.get(path, latest[path][1]))
        if plan.unread:
            logger.info("%d file(s) unchanged since committed (size, mtime, inode): skipped unread", len(plan.unread))
        n_labels = sum(p in plan.new_label for p in plan.unread)
        n_workers = workers if workers is not None else (cfg.workers or len(os.sched_getaffinity(0)))
        bar = tqdm(total=len(plan.tasks), unit="img", desc="ingest", disable=not progress)
        for res in ordered_map(process_file, plan.tasks, cfg, max(1, min(n_workers, len(plan.tasks)))):
            bar.update()
            if isinstance(res, Skipped):
                summary.skipped += 1
                n_labels += res.path in plan.new_label
                if labels is not None:
                    _count_aux(counts, plan.new_label.get(res.path, latest[res.path][1]))
                shards.skipped(res, plan.new_label)
            elif isinstance(res, Decoded):
                shards.decoded(res, lambda r: _manifest_row(r, identity(r.meta, r.content_hash, salt, counts),
                                                             labels, counts), summary)
            else:
                shards.reject(res, summary)
        shards.commit()
        _commit_relabels(root, writer, shards.relabelled)
        latest.update((r["path"], ("row", _as_read(r, MANIFEST_COLUMNS))) for r in shards.relabelled)
        summary.relabelled = n_labels
        bar.close()
        del plan, shards
        n_rows, n_rejects = consolidate(root, latest)
    _log_summary(summary, counts, labels, cfg, n_rows, n_rejects)
    return summary


def _input_entries(inputs: list[str | Path], root: Path, cfg: IngestConfig,
                   labels: Labels | None) -> list[tuple[str, str]]:
    """(path, discovery error) of every input; the labels CSV and the cache's own files
    (a cache placed inside an input folder holds our outputs) are not inputs."""
    entries = discover_entries(inputs)
    if labels is not None:
        entries = [e for e in entries if e[0] != str(Path(cfg.labels_csv).resolve())]
    # discover_entries returns resolved paths: only the cache folder needs resolving.
    resolved_root = root.resolve()
    kept = [e for e in entries if not Path(e[0]).is_relative_to(resolved_root)]
    if len(kept) < len(entries):
        logger.info("%d file(s) under the cache folder %s are not inputs", len(entries) - len(kept), root)
    return kept


@dataclass
class _Plan:
    tasks: list[tuple[str, str, dict[str, Any]]]  # for the decode workers: (path, known hash, hints)
    new_label: dict[str, dict[str, str]]  # path -> corrected LABEL_COLUMNS of a committed file
    unread: list[str]  # committed and unchanged by stat: not even hashed


def _plan(paths: list[Path], latest: dict[str, tuple[str, dict[str, str]]], labels: Labels | None,
          salt: str, verify: bool) -> _Plan:
    """Which files to decode, which to hash only, which to skip unread, and which labels changed."""
    plan = _Plan([], {}, [])
    for p in paths:
        kind, entry = latest.get(str(p), ("", {}))
        known = entry["content_hash"] if kind == "row" else ""
        hints = labels.hints(p) if labels else {}
        if known and labels is not None:
            if _hints_change(entry, hints, salt):
                known = ""  # patient key / view policy come from decoding with the hints
            else:
                joined, _ = _joined(labels, str(p), entry["sop_uid"], entry["study_uid"])
                # .get: a row of an older version has no aux_labels (= none known)
                if any(joined[c] != entry.get(c, "") for c in LABEL_COLUMNS):
                    plan.new_label[str(p)] = joined
        if known and not verify and _unchanged(str(p), entry):
            plan.unread.append(str(p))
        else:
            plan.tasks.append((str(p), known, hints))
    return plan


def _owners(latest: dict[str, tuple[str, dict[str, str]]]) -> dict[str, str]:
    """Content hash or "sop:" + SOPInstanceUID -> the committed path that owns it."""
    owner: dict[str, str] = {}
    for kind, e in latest.values():
        if kind == "row":
            for k in _identity_keys(e["content_hash"], e["sop_uid"]):
                owner.setdefault(k, e["path"])
    return owner


class _Shards:
    """Buffers results into shards and commits each when full.

    Duplicates are found here: the same bytes, or the same DICOM instance re-exported (same
    SOPInstanceUID, other transfer syntax or header) -- either would let one image sit in
    two splits. The first path (commit order, then sorted) wins."""

    def __init__(self, writer: CacheWriter, latest: dict[str, tuple[str, dict[str, str]]], size: int,
                 owner: dict[str, str]):
        self.writer, self.latest, self.size, self.owner = writer, latest, size, owner
        self.images: list[Any] = []
        self.rows: list[dict[str, Any]] = []
        self.rejects: list[dict[str, Any]] = []
        self.relabelled: list[dict[str, Any]] = []  # rows-only updates: labels and stamps

    def skipped(self, res: Skipped, new_label: dict[str, dict[str, str]]) -> None:
        entry = self.latest[res.path][1]
        # Same content, new or missing stamp (touched, copied back, a cache of an older
        # version): record the stamp, so the next run skips the file unread.
        if res.path in new_label or any(entry.get(c, "") != res.stamp.get(c, "") for c in STAMP_COLUMNS):
            self.relabelled.append({**entry, **res.stamp, **new_label.get(res.path, {})})

    def decoded(self, res: Decoded, manifest_row: Any, summary: IngestSummary) -> None:
        keys = _identity_keys(res.content_hash, res.meta.sop_uid)
        clash = next(((k, self.owner[k]) for k in keys if self.owner.get(k, res.path) != res.path), None)
        if clash is not None:
            what = (f"same (0008,0018) SOPInstanceUID {clash[0][4:]}" if clash[0].startswith("sop:")
                    else f"identical content (sha256 {res.content_hash[:16]}...)")
            self.reject(Rejected(res.path, res.content_hash, "duplicate", f"{what} as {clash[1]}",
                                 res.meta.transfer_syntax), summary)
            return
        self.owner.update((k, res.path) for k in keys)
        self.rows.append(manifest_row(res))
        self.images.append(res.image)
        summary.ingested += 1
        summary.qa_flagged += bool(qa_flags(res.steps))
        self._maybe_commit()

    def reject(self, res: Rejected, summary: IngestSummary) -> None:
        self.rejects.append({"path": res.path, "kind": res.kind, "reason": res.reason,
                             "transfer_syntax": res.transfer_syntax})
        summary.rejected[res.kind] += 1
        summary.qa_excluded += res.kind == "excluded" and res.reason.startswith(POLARITY_EXCLUDED)
        logger.debug("%s: %s: %s", res.path, res.kind, res.reason)
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if len(self.rows) >= self.size or len(self.rejects) >= self.size:
            self.commit()

    def commit(self) -> None:
        if self.rows or self.rejects:
            self.writer.write_shard(self.writer.next_shard_id(), self.images, self.rows, self.rejects)
            # what consolidation would read back from the parts, without reading them
            self.latest.update((r["path"], ("row", _as_read(r, MANIFEST_COLUMNS))) for r in self.rows)
            self.latest.update((r["path"], ("reject", _as_read(r, REJECT_COLUMNS))) for r in self.rejects)
            self.images.clear(), self.rows.clear(), self.rejects.clear()


def _log_summary(summary: IngestSummary, counts: Counter, labels: Labels | None, cfg: IngestConfig,
                 n_rows: int, n_rejects: int) -> None:
    labelled = labels is not None
    summary.unlabeled = counts["unlabeled"] if labelled else summary.ingested
    for what, n in sorted(counts.items()):
        if what.startswith("patient-from"):
            logger.warning("%d image(s) without PatientID: patient key derived from the %s, so images "
                           "of one patient may land in different splits", n, what.split("-")[-1])
    if labelled and counts["unlabeled"]:
        logger.warning("%d ingested image(s) have no row in %s", counts["unlabeled"], cfg.labels_csv)
    logger.info("ingest: %d inputs, %d ingested, %d skipped (%d relabelled), rejected %s; cache now "
                "%d images, %d rejects", summary.inputs, summary.ingested, summary.skipped,
                summary.relabelled, summary.rejected, n_rows, n_rejects)
    if labels is not None and labels.aux_names:
        logger.info("auxiliary findings: %d (%s); %d labelled value(s) joined to %d image(s) (new and "
                    "committed)", len(labels.aux_names), ", ".join(labels.aux_names), counts["aux-values"],
                    counts["aux-images"])
    if summary.qa_excluded or summary.qa_flagged:
        # Not a debug-level detail: these images are left out of (or enter) training on a guess.
        logger.warning("polarity QA (ingest.polarity_qa=%s): %d image(s) excluded as suspected inverted, "
                       "%d ingested with a qa: note (manifest steps)", cfg.polarity_qa,
                       summary.qa_excluded, summary.qa_flagged)
