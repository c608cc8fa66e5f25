"""What a cache already holds, on disk: the index `fibrosis ingest` plans and consolidates with.

Why on disk: ingest must know, for every input, the newest committed entry of its path (to skip
an unchanged file unread, relabel it, or re-decode it) and which path owns each content hash and
SOPInstanceUID (to reject duplicates). Held as Python dicts that was about 3 KB per file: 417 MB
at 100k files, ~4 GB at 1M. Here it is an SQLite file in the cache folder, so the run's
memory is SQLite's bounded page cache whatever the archive's size.

The committed parts stay the only truth: the index is rebuilt from them at the start of every
run and deleted at its end, so a run killed half-way leaves at most a stale scratch file, which
the next run deletes. Durability is therefore switched off (no journal, no fsync): a crash can
only lose the scratch file.

A row keeps every manifest column (its whole text, as reading its part back gives it), so any
label-like column -- ``label`` today, others later -- can be compared and rewritten in a
rows-only part without re-reading the file.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator

from fibrosis.data.cache import iter_parts
from fibrosis.data.discover import FOLDER_ERROR, Entry
from fibrosis.data.manifest import MANIFEST_COLUMNS, REJECT_COLUMNS, ManifestRow, RejectRow, RowLabels

INDEX_NAME = ".ingest-index.sqlite"
PAGE = 1000  # rows per keyset-paged query: bounded memory, and no cursor open across writes
Committed = ManifestRow | RejectRow  # a committed entry: kind 'row' or 'reject'

_SCHEMA = """
CREATE TABLE latest (            -- path -> the newest committed entry naming it
    path TEXT NOT NULL UNIQUE,   -- rowid order = order of first commit (owner precedence)
    kind TEXT NOT NULL,          -- 'row' | 'reject'
    shard INTEGER, idx INTEGER, content_hash TEXT, sop_uid TEXT,
    old_split TEXT, old_dhash TEXT,  -- from the previous manifest.csv, at consolidation
    data TEXT NOT NULL           -- JSON list of the values, in MANIFEST_COLUMNS / REJECT_COLUMNS order
);
CREATE TABLE owners (key TEXT PRIMARY KEY, path TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE inputs (path TEXT PRIMARY KEY, error TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE tasks (path TEXT PRIMARY KEY, known TEXT NOT NULL, hints TEXT NOT NULL,
                    changes TEXT NOT NULL) WITHOUT ROWID;
"""


class CommittedIndex:
    """The scratch index of one ingest run (use as a context manager; the cache lock must be held)."""

    def __init__(self, root: Path):
        self.path = Path(root) / INDEX_NAME
        _remove(self.path)  # a killed run's: stale by definition
        self.db = sqlite3.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-4096", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(_SCHEMA)

    def __enter__(self) -> "CommittedIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        _remove(self.path)

    # ------------------------------------------------------------ committed entries

    def load_parts(self, root: Path) -> None:
        """Every committed part in commit order: the newest entry of a path wins."""
        for _, rows, rejects in iter_parts(root):
            self.put(rows)
            self.put(rejects)

    def put(self, entries: Iterable[Committed]) -> None:
        """Record committed entries (the newest of a path replaces the older, keeping its rowid)."""
        values: list[tuple[str, str, int | None, int | None, str, str, str]] = []
        for e in entries:
            text = list(e.cells().values())
            if isinstance(e, ManifestRow):
                values.append((e.path, "row", e.shard, e.index, e.content_hash, e.sop_uid, json.dumps(text)))
            else:
                values.append((e.path, "reject", None, None, "", "", json.dumps(text)))
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO latest (path, kind, shard, idx, content_hash, sop_uid, data) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT(path) DO UPDATE SET kind=excluded.kind, shard=excluded.shard, idx=excluded.idx, "
            "content_hash=excluded.content_hash, sop_uid=excluded.sop_uid, data=excluded.data", values)
        self.db.execute("COMMIT")

    def get(self, path: str) -> Committed | None:
        """The newest committed entry of ``path``, as reading its part back gives it, or None."""
        hit = self.db.execute("SELECT kind, data FROM latest WHERE path = ?", (path,)).fetchone()
        if hit is None:
            return None
        return _row(hit[1]) if hit[0] == "row" else _reject(hit[1])

    def is_latest(self, entry: Committed) -> bool:
        """Is ``entry`` (as it would be committed) already the newest committed entry of its path?"""
        return self.get(entry.path) == entry

    def folder_rejects(self) -> Iterator[RejectRow]:
        """Committed rejects that may be folders that could not be listed, by path (a reject
        that merely names the words is a false hit: the caller checks kind and reason)."""
        cur = self.db.execute("SELECT data FROM latest WHERE kind = 'reject' AND instr(data, ?) > 0 ORDER BY path",
                              (FOLDER_ERROR,))
        for (data,) in cur:
            yield _reject(data)

    def count(self, kind: str) -> int:
        return self.db.execute("SELECT count(*) FROM latest WHERE kind = ?", (kind,)).fetchone()[0]

    # ------------------------------------------------------------ identity owners

    def build_owners(self) -> None:
        """Content hash or "sop:" + SOPInstanceUID -> the committed path that owns it: the row
        committed first (SQLite's bare column of a min() aggregate comes from the min row)."""
        self.db.execute("BEGIN")
        self.db.execute("INSERT INTO owners SELECT content_hash, path FROM "
                        "(SELECT content_hash, path, min(rowid) FROM latest WHERE kind = 'row' GROUP BY content_hash)")
        self.db.execute("INSERT OR IGNORE INTO owners SELECT 'sop:' || sop_uid, path FROM "
                        "(SELECT sop_uid, path, min(rowid) FROM latest WHERE kind = 'row' AND sop_uid != '' "
                        "AND substr(sop_uid, 1, 5) != 'file:' GROUP BY sop_uid)")
        self.db.execute("COMMIT")

    def owner(self, key: str) -> str | None:
        hit = self.db.execute("SELECT path FROM owners WHERE key = ?", (key,)).fetchone()
        return None if hit is None else hit[0]

    def set_owner(self, keys: Iterable[str], path: str) -> None:
        self.db.executemany("INSERT OR REPLACE INTO owners VALUES (?, ?)", [(k, path) for k in keys])

    # ------------------------------------------------------------ this run's inputs and tasks

    def add_inputs(self, entries: Iterable[Entry], batch: int = PAGE) -> None:
        """Discovered (path, error) entries, de-duplicated as discovery does: the first entry of
        a path wins, except that a folder that cannot be listed always reports that."""
        sql = ("INSERT INTO inputs VALUES (?, ?) ON CONFLICT(path) DO UPDATE SET error = excluded.error "
               f"WHERE instr(excluded.error, '{FOLDER_ERROR}') = 1")
        chunk: list[Entry] = []
        for entry in entries:
            chunk.append(entry)
            if len(chunk) >= batch:
                self.db.executemany(sql, chunk)
                chunk.clear()
        self.db.executemany(sql, chunk)

    def input_counts(self) -> tuple[int, int, int]:
        """(inputs, folders that cannot be listed, other entries reported instead of read)."""
        return self.db.execute(
            "SELECT count(*), coalesce(sum(instr(error, ?) = 1), 0), coalesce(sum(error != '' AND instr(error, ?) != 1), 0) "
            "FROM inputs", (FOLDER_ERROR, FOLDER_ERROR)).fetchone()

    def inputs(self) -> Iterator[Entry]:
        """(path, error) sorted by path (SQLite compares UTF-8 bytes: the order of Python's str)."""
        return self._paged("SELECT path, error FROM inputs WHERE path > ? ORDER BY path LIMIT ?")

    def add_tasks(self, tasks: Iterable[tuple[str, str, dict[str, Any], RowLabels | None]]) -> None:
        """(path, known content hash, hints, changed label columns or None) of the files to hash or decode."""
        self.db.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?)",
                            [(p, known, json.dumps(hints), json.dumps(None if c is None else [c.label, c.aux_labels]))
                             for p, known, hints, c in tasks])

    def tasks(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(path, known hash, hints) for the decode workers, in path order."""
        for path, known, hints in self._paged("SELECT path, known, hints FROM tasks WHERE path > ? "
                                              "ORDER BY path LIMIT ?"):
            yield path, known, json.loads(hints)

    def task_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM tasks").fetchone()[0]

    def changes(self, path: str) -> RowLabels | None:
        """The label columns this run changes in the committed row of a task's file (None: none)."""
        hit = self.db.execute("SELECT changes FROM tasks WHERE path = ?", (path,)).fetchone()
        cells = json.loads(hit[0]) if hit else None
        return None if cells is None else RowLabels(*cells)

    def _paged(self, sql: str) -> Iterator[tuple[Any, ...]]:
        """Keyset pages ordered by path: no cursor stays open while the caller writes."""
        last = ""
        while True:
            page = self.db.execute(sql, (last, PAGE)).fetchall()
            yield from page
            if len(page) < PAGE:
                return
            last = page[-1][0]

    # ------------------------------------------------------------ consolidation

    def set_old_split(self, old: Iterable[tuple[str, str, str, str]], batch: int = PAGE) -> None:
        """(path, content_hash, split, dhash) of the previous manifest: kept for a row whose
        path and content are unchanged."""
        sql = ("UPDATE latest SET old_split = ?, old_dhash = ? WHERE path = ? AND content_hash = ? "
               "AND kind = 'row'")
        chunk: list[tuple[str, str, str, str]] = []
        for path, content_hash, split, dhash in old:
            chunk.append((split, dhash, path, content_hash))
            if len(chunk) >= batch:
                self.db.executemany(sql, chunk)
                chunk.clear()
        self.db.executemany(sql, chunk)

    def rows_in_cache_order(self) -> Iterator[ManifestRow]:
        """Committed rows by (shard, index), each with the previous manifest's split and dHash
        (for a row of an older version, which has none of its own) filled in."""
        cur = self.db.execute("SELECT data, coalesce(old_split, ''), coalesce(old_dhash, '') FROM latest "
                              "WHERE kind = 'row' ORDER BY shard, idx, rowid")
        for data, split, dhash in cur:
            row = _row(data)
            yield dataclasses.replace(row, split=split, dhash=row.dhash or dhash)

    def rejects_in_path_order(self) -> Iterator[RejectRow]:
        cur = self.db.execute("SELECT data FROM latest WHERE kind = 'reject' ORDER BY path")
        for (data,) in cur:
            yield _reject(data)


def _row(data: str) -> ManifestRow:
    return ManifestRow.from_cells(dict(zip(MANIFEST_COLUMNS, json.loads(data))))


def _reject(data: str) -> RejectRow:
    return RejectRow.from_cells(dict(zip(REJECT_COLUMNS, json.loads(data))))


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)
