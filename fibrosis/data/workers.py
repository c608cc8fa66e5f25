"""Per-file work and the process pool that runs it (shared by ingest and scoring).

:func:`process_file` never raises for a bad input: it returns a
:data:`~fibrosis.data.records.DecodeResult` (``Decoded``, ``Skipped`` or ``Rejected``),
so one file can never stop a run.
:func:`ordered_map` yields results in input order (deterministic shard contents
and "first path wins" for duplicates) and survives a worker that dies inside a
native decoder: the tasks in flight are re-run one at a time on a fresh
process and only the one that kills it again is rejected.

Helper processes never outlive the run (``kill -9`` included). Workers are forked
by the fork server, not by the run, and each holds the fork server's "alive" pipe
and the resource tracker's pipe open, so neither would see the run's death: the
fork server asks the kernel for SIGKILL when the run dies (PR_SET_PDEATHSIG) and
each worker for SIGKILL when the fork server dies; a watchdog thread in each
worker also exits when the run's sentinel pipe closes (other platforms, and a
spawn fallback). Once they are gone the resource tracker sees EOF and exits.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, TypeVar

from fibrosis.data.cache import to_cache_dtype
from fibrosis.config import IngestConfig
from fibrosis.data.records import Decoded, DecodeResult, Rejected, RejectKind, Skipped, file_stamp
from fibrosis.data.pixels import NOT_AN_IMAGE, InputError, load_bytes, read_input
from fibrosis.data.split import stored_dhash

logger = logging.getLogger(__name__)

Task = tuple[str, str, dict[str, Any]]  # (path, content hash already committed or "", hints)
R = TypeVar("R")  # what the function ordered_map runs returns
RACY_NS = 2_000_000_000  # coarser than any file system's mtime granularity (FAT: 2 s)


def process_file(task: Task, cfg: IngestConfig) -> DecodeResult:
    """Hash, skip-check, load and quantise one file."""
    path, known_hash, hints = task
    try:
        # Taken before the read: if the file changes while being read, the next run sees a
        # newer stamp than the recorded one and hashes it again (never the other way round).
        st = os.stat(path)
        # "Racily clean" (as git calls it): a file modified within the timestamp granularity
        # of its read could change again with the same mtime, so its stamp is not trusted;
        # it is hashed on the next run, which records the stamp once the file is older.
        stamp = file_stamp(st) if time.time_ns() - st.st_mtime_ns > RACY_NS else None
    except OSError:
        stamp = None  # read_input reports why the file cannot be read
    try:
        data, digest = read_input(path, cfg)  # bounded by ingest.max_file_mb, regular files only
    except InputError as exc:
        return _reject(path, "", exc.kind, exc.reason, exc.transfer_syntax)
    except MemoryError:
        return _reject(path, "", "error", "out of memory while reading", "")
    if known_hash and digest == known_hash:
        return Skipped(path, digest, stamp)
    if data is None:
        return _reject(path, digest, "error", NOT_AN_IMAGE, "")
    try:
        res = load_bytes(data, path, cfg, hints)
    except InputError as exc:
        return _reject(path, digest, exc.kind, exc.reason, exc.transfer_syntax)
    except MemoryError:
        return _reject(path, digest, "error", "out of memory while decoding", "")
    except Exception as exc:  # a decoder bug must not stop the run; it is still accounted for
        logger.exception("%s: unexpected failure", path)
        return _reject(path, digest, "error", f"unexpected {type(exc).__name__}: {exc}", "")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a native extension's panic (pyo3 PanicException) is no Exception
        logger.exception("%s: unexpected failure", path)
        return _reject(path, digest, "error", f"unexpected {type(exc).__name__}: {exc}", "")
    meta = res.meta
    if meta.source_format in ("png", "jpeg") or not meta.sop_uid:
        # File-derived keys: readable stem + content hash, unique even for equal stems.
        derived = f"file:{Path(path).stem}-{digest[:8]}"
        meta = meta.replace(**{key: getattr(meta, key) or derived for key in ("study_uid", "series_uid", "sop_uid")})
    stored = to_cache_dtype(res.image, cfg.cache_dtype)
    return Decoded(path, digest, meta, tuple(res.steps), stored, stored_dhash(stored), stamp)


def _reject(path: str, digest: str, kind: RejectKind, reason: str, ts: str) -> Rejected:
    return Rejected(path, digest, kind, reason, ts)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only).

    A SIGKILL needs no cooperation from the process, so it also ends a worker stuck in a
    native decoder that never releases the GIL. Returns False where unsupported.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return True


def _watch_parent() -> None:
    """Exit when the run that started this worker dies: its end of the sentinel pipe
    closes, which is immediate and has no pid-reuse race (the fallback to PDEATHSIG)."""
    parent = mp.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)  # no clean-up to do: results go to the run only, and it is gone

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _in_fork_server() -> bool:
    """True in multiprocessing's fork server, which imports this module as its preload."""
    return any(a.startswith("from multiprocessing.forkserver import main") for a in getattr(sys, "orig_argv", ()))


if _in_fork_server():
    # The fork server would otherwise only exit once every worker has closed its copy
    # of the "alive" pipe; this ends it (and through die_with_parent, its workers) with
    # the run. Done at import: preloading is the only code the fork server runs for us.
    # The kernel ties this to the *thread* that started the fork server: when that thread
    # ends (score's prefetch thread, after its pool has shut down) the fork server goes
    # too, and multiprocessing starts a fresh one for the next pool.
    die_with_parent()


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
    die_with_parent()  # the parent of a worker is the fork server (or the run, under spawn)
    _watch_parent()


def _crashed(task: Task) -> Rejected:
    return _reject(task[0], "", "error", "the decoder crashed its worker process (native fault); "
                                         "file is probably corrupt", "")


def _context() -> Any:
    """forkserver, not fork: the parent may hold torch/OpenMP/OpenCV threads, and a
    forked child of a threaded process can deadlock. The fork server is a fresh
    single-threaded interpreter that imports the pixel stack once; workers forked
    from it start in milliseconds instead of re-importing it (as spawn would)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["fibrosis.data.workers"])
    return ctx


def _canary() -> bool:
    return True


def _check_workers_start(ctx: Any) -> None:
    """A worker died: tell a file that kills its decoder from workers that cannot run
    at all (e.g. a __main__ that child processes cannot re-import, such as stdin).
    The latter must stop the run, not turn every input into a reject."""
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker) as ex:
        try:
            ex.submit(_canary).result()
        except BrokenProcessPool:
            raise RuntimeError("ingest worker processes die before doing any work (is the calling "
                               "program's __main__ importable? run from a file, or use workers=1)") from None


def _one_by_one(fn: Callable[[Task, IngestConfig], R], tasks: list[Task], cfg: IngestConfig,
                ctx: Any) -> Iterator[R | Rejected]:
    """Run tasks sequentially on one worker process; a task that kills it is the culprit."""
    ex = None
    try:
        for task in tasks:
            ex = ex or ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker)
            result: R | Rejected
            try:
                result = ex.submit(fn, task, cfg).result()
            except BrokenProcessPool:
                ex.shutdown(wait=True)
                ex, result = None, _crashed(task)
            yield result
    finally:
        if ex is not None:
            ex.shutdown(wait=True)


def _submit(ex: ProcessPoolExecutor, fn: Callable[[Task, IngestConfig], R], task: Task,
            cfg: IngestConfig) -> Future[R]:
    """``ex.submit``, except that a pool which broke while the window was being filled (a worker
    died at once) yields a failed future instead of raising here: every break then takes the
    one path below, which tells a crashing file from workers that cannot start at all."""
    try:
        return ex.submit(fn, task, cfg)
    except BrokenProcessPool as exc:
        fut: Future[R] = Future()
        fut.set_exception(exc)
        return fut


def ordered_map(fn: Callable[[Task, IngestConfig], R], tasks: Iterable[Task],
                cfg: IngestConfig, workers: int) -> Generator[R | Rejected, None, None]:
    """``fn(task, cfg)`` for every task, in order, on ``workers`` processes (1 = inline); a task
    whose worker process dies gives a Rejected."""
    if workers <= 1:
        for task in tasks:
            yield fn(task, cfg)
        return
    ctx = _context()
    it = iter(tasks)
    pending: deque[tuple[Task, Future[R]]] = deque()
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
    try:
        while True:
            while len(pending) < 4 * workers:  # bounded window: memory stays flat
                nxt = next(it, None)
                if nxt is None:
                    break
                pending.append((nxt, _submit(ex, fn, nxt, cfg)))
            if not pending:
                return
            task, fut = pending.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:
                logger.warning("a worker process died; re-running the %d tasks in flight one by one",
                               len(pending) + 1)
                ex.shutdown(wait=True, cancel_futures=True)
                _check_workers_start(ctx)
                redo = [task] + [t for t, _ in pending]
                pending.clear()
                yield from _one_by_one(fn, redo, cfg, ctx)
                ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
                continue
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
