"""`fibrosis score`: batch-score DICOM/PNG/JPEG studies with a trained, evaluated checkpoint.

Everything that shapes a score comes from the checkpoint: the ingestion settings
(the checkpoint's ``config.ingest``, so the same :func:`fibrosis.data.pixels.load_image` and
policy checks as training), the model input transform (the cache quantisation,
then :mod:`fibrosis.data.dataset`'s resize + normalise), the calibrator and the frozen
default operating point. Nothing on the command line can change them.

Pipeline: worker processes read, check and decode files with ingestion's own
per-file function (:func:`fibrosis.data.workers.ordered_map`: bounded, crash-isolated,
in sorted path order); a reader thread applies the model transform and keeps a
bounded queue of inputs full while the main thread runs batched inference, so
decoding overlaps inference; rows are appended to the output in sorted path order
as each batch completes (see :mod:`fibrosis.score.output` for resume and merging).
Under ``torchrun`` each rank scores ``paths[rank::world]`` into ``<out>.rank<k>``
and rank 0 merges after a barrier.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fibrosis import artefacts
from fibrosis.score import output as score_io
from fibrosis.score.pixels import model_input, overlay
from fibrosis.score.sr import write_dicom_outputs
from fibrosis.data.cache import image_statistics
from fibrosis.io import atomic_write_bytes, file_sha256
from fibrosis.config import IngestConfig, ScoreConfig, config_from_dict
from fibrosis.data.identity import identity, resolve_salt
from fibrosis.data.pixels import excluded_flag, qa_flags
from fibrosis.data.records import Decoded, DecodeResult, Preprocessing, Rejected, Skipped
from fibrosis.model.threshold import SCALE
from fibrosis.numeric import sigmoid
from fibrosis.words import plural

if TYPE_CHECKING:  # the record's module imports torch, which `import fibrosis` does not need
    from fibrosis.data.workers import Task
    from fibrosis.model.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

_END = object()


@dataclasses.dataclass
class ScoreSummary:
    out: str
    studies_out: str
    model_id: str
    engine: str
    counts: Counter[str] = dataclasses.field(default_factory=Counter)  # ok / excluded / error
    resumed: int = 0  # rows already in the output: not re-scored
    seconds: float = 0.0  # wall time of the whole call
    setup_seconds: float = 0.0  # of which before the first file: checkpoint, engine, inputs
    dicom_files: list[str] = dataclasses.field(default_factory=list)  # SR / SC objects written (--sr-out, --sc-out)

    def ok(self) -> bool:
        """False when any file failed (``error``); exclusions by policy are not failures."""
        return self.counts["error"] == 0

    def __str__(self) -> str:
        n = sum(self.counts.values())
        rate = n / self.seconds if self.seconds > 0 else 0.0
        return (f"score: {plural(n, 'file')} scored now + {self.resumed} resumed -> {self.out}: "
                f"ok {self.counts['ok']}, excluded {self.counts['excluded']}, "
                f"error {self.counts['error']}; {self.seconds:.1f} s ({rate:.1f} files/s), "
                f"engine {self.engine}, model {self.model_id}; per study: {self.studies_out}")


@dataclasses.dataclass(frozen=True)
class Frozen:
    """What the checkpoint fixes for scoring."""

    ingest: IngestConfig
    score: ScoreConfig
    preprocessing: Preprocessing
    calibrator: Any
    threshold_name: str
    threshold: float
    model_id: str


# ------------------------------------------------------------------ checkpoint


def resolve_checkpoint(model: str | Path) -> Path:
    """A run directory means its ``best.pt`` (the checkpoint evaluation annotates)."""
    p = Path(model)
    if p.is_dir():
        p = p / artefacts.BEST
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found (expected a run directory with best.pt "
                                f"or a .pt file written by `fibrosis train`)")
    return p


def frozen_settings(ckpt: Checkpoint, path: Path, sha256: str) -> Frozen:
    """Scoring settings from a checkpoint; refuses one that was never evaluated."""
    from fibrosis.model.calibration import calibrator_from_record

    thr, cal = ckpt.threshold, ckpt.calibration
    if thr is None or cal is None:
        raise ValueError(f"{path}: no calibration/threshold stored; run `fibrosis evaluate` on this "
                         f"run first (scoring applies the operating point chosen on validation)")
    if thr.scale != SCALE:
        raise ValueError(f"{path}: threshold scale {thr.scale!r}; expected {SCALE!r} "
                         f"(written by fibrosis.evaluate.run)")
    cfg = config_from_dict(ckpt.config)
    return Frozen(cfg.ingest, cfg.score, ckpt.preprocessing, calibrator_from_record(cal),
                  thr.default, thr.value, sha256[:16])


# ------------------------------------------------------------------ per file


# ------------------------------------------------------------------ streaming


def _prefetch(gen: Generator[Any, None, None], maxsize: int) -> Generator[Any, None, None]:
    """Run ``gen`` in a thread behind a bounded queue, so the worker pool keeps decoding
    while the caller runs inference; memory is bounded by ``maxsize`` items."""
    q: queue.Queue[Any] = queue.Queue(maxsize)
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            else:
                q.put(_END)
        except BaseException as exc:  # forwarded to the consumer
            q.put(exc)
        finally:
            gen.close()  # shuts the worker pool down

    t = threading.Thread(target=pump, name="score-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a pending put, then wait for the pool to close
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.1)


def results(entries: list[tuple[str, str]], cfg: IngestConfig, preprocessing: Preprocessing,
            workers: int, known: dict[str, str] | None = None,
            ) -> Generator[tuple[DecodeResult, np.ndarray | None, dict[str, float] | None], None, None]:
    """(decode result, model input, image statistics; None, None unless decoded) per entry, in entry order (folder errors
    interleaved in place). ``known``: path -> content hash of rows already written; such a
    file whose content is unchanged comes back :class:`Skipped` (hashed by a worker, not decoded)."""
    from fibrosis.data.workers import ordered_map, process_file

    # Workers run ingestion's own per-file function (read, hash, checks, load_image,
    # cache quantisation); fibrosis.data.workers is what their fork server preloads, so they
    # start in milliseconds without torch. The model transform (a 512 -> 224 area
    # resize and normalise, well under a millisecond) runs here, in the prefetch thread.
    known = known or {}
    files: list[Task] = [(p, known.get(p, ""), {}) for p, err in entries if not err]
    decoded = ordered_map(process_file, files, cfg, max(1, min(workers, len(files))))
    try:
        for path, err in entries:
            if err:
                yield Rejected(path, "", "error", err), None, None
            else:
                res = next(decoded)
                if res.path != path:  # ordered_map keeps order; a mismatch is a bug, not data
                    raise RuntimeError(f"decode order broken: got {res.path}, expected {path}")
                if isinstance(res, Decoded):  # + the statistics the monitor's side file records
                    yield res, model_input(res.image, cfg.cache_dtype, preprocessing), image_statistics(res.image)
                else:
                    yield res, None, None
    finally:
        decoded.close()


# ------------------------------------------------------------------ batches -> rows


class Scorer:
    """Turns ordered decode results into ordered rows, one inference batch at a time."""

    def __init__(self, model: Any, engine: Any, fz: Frozen, writer: score_io.RowWriter, *,
                 batch_size: int, salt: str, auto: bool, gradcam_dir: Path | None,
                 meta_writer: score_io.RowWriter | None = None, scored_at: str = "",
                 aux_writer: score_io.RowWriter | None = None):
        self.model, self.engine, self.fz, self.writer = model, engine, fz, writer
        self.aux_writer = aux_writer  # auxiliary heads' outputs, only when asked (--aux)
        self.meta_writer, self.scored_at = meta_writer, scored_at
        self.meta_rows: list[dict[str, score_io.Cell]] = []  # side-file rows (META_COLUMNS) of the pending rows
        self.batch_size, self.salt, self.auto, self.gradcam_dir = batch_size, salt, auto, gradcam_dir
        self.rows: list[score_io.ScoreRow] = []  # pending, in path order
        self.xs: list[np.ndarray] = []  # inputs of the pending ok rows, in order
        self.counts: Counter[str] = Counter()
        self.verified = engine.name == "eager"
        self.setup_seconds = 0.0

    def add(self, res: Decoded | Rejected, x: np.ndarray | None = None,
            stats: dict[str, float] | None = None) -> None:
        """One file's row: ``res`` decoded (with its model input ``x`` and the image
        statistics for the side file) or rejected."""
        fz = self.fz
        common = score_io.ScoreRow(path=res.path, status="", content_hash=res.content_hash, model_id=fz.model_id,
                                   threshold_name=fz.threshold_name, threshold=format(fz.threshold, ".10g"))
        self.meta_rows.append(self._meta_row(res, stats))
        if isinstance(res, Decoded):
            meta = res.meta
            row = dataclasses.replace(common, status="ok", patient_key=identity(meta, res.content_hash, self.salt),
                                      sop_uid=meta.sop_uid, series_uid=meta.series_uid, study_uid=meta.study_uid,
                                      view_position=meta.view_position, qa=qa_flags(res.steps))
            assert x is not None  # a decoded file comes with its model input
            self.xs.append(x)
        else:  # kind is "error" or "excluded"; one line per file, whatever the reason text holds
            cells = score_io.status_cells(res.kind, str(res.reason))
            row = dataclasses.replace(common, status=cells["status"], reason=cells["reason"],
                                      qa=excluded_flag(str(res.reason)) if res.kind == "excluded" else None)
        self.counts[row.status] += 1
        self.rows.append(row)
        if len(self.xs) >= self.batch_size or len(self.rows) >= 4 * self.batch_size:
            self.flush()

    def _meta_row(self, res: Decoded | Rejected, stats: dict[str, float] | None) -> dict[str, score_io.Cell]:
        """Header fields and image statistics for the side file; rejects carry path and batch only."""
        out: dict[str, score_io.Cell] = {"path": res.path, "scored_at": self.scored_at}
        if isinstance(res, Decoded):
            fields = res.meta.manifest_fields()
            out.update({k: fields[k] for k in score_io.META_COLUMNS if k in fields}, **(stats or {}))
        return {k: out.get(k, "") for k in score_io.META_COLUMNS}

    def _verify(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Check the engine once more on real images; ``auto`` falls back to eager
        (and the batch is recomputed with it)."""
        from fibrosis.model.engine import EngineError, TorchEngine, agreement

        # Up to 8 real images: plain eager is the slowest engine, and this is on the clock.
        eager = TorchEngine(self.model, "eager", next(self.model.parameters()).device)
        ref = eager(x[:8])
        agree = agreement(self.engine.name, ref, z[:8], self.fz.calibrator.predict, self.fz.threshold)
        self.verified = True
        if agree.ok:
            logger.info("first batch: %s", agree)
            return z
        if not self.auto:
            raise EngineError(f"on the first {len(x)} real images: {agree}")
        # auto's fallback, as when choosing the engine: the scores are eager fp32's, nothing to act on
        logger.info("first batch: engine %s not used: its outputs differ from eager fp32 beyond tolerance (%s); "
                    "eager fp32 scores this run", self.engine.name, agree)
        self.engine = eager
        return eager(x)

    def flush(self) -> None:
        if self.xs:
            x = np.stack(self.xs)
            z = self.engine(x)
            if not self.verified:
                z = self._verify(x, z)
            p = self.fz.calibrator.predict(z)
            ok = [i for i, r in enumerate(self.rows) if r.status == "ok"]
            for i, zi, pi in zip(ok, z, p):
                self.rows[i] = dataclasses.replace(
                    self.rows[i], logit_uncalibrated=f"{zi:.6f}", probability_calibrated=f"{pi:.6f}",
                    decision_fibrosis=int(pi >= self.fz.threshold), engine=self.engine.name)
            ok_rows = [self.rows[i] for i in ok]
            if self.gradcam_dir is not None:
                self._gradcam(x, ok_rows, self.gradcam_dir)
            if self.aux_writer is not None:
                self._aux(x, ok_rows, self.aux_writer)
        if self.meta_writer is not None:  # first: on resume, extra meta rows are pruned
            for meta_row in self.meta_rows:
                self.meta_writer.write(meta_row)
            self.meta_writer.flush()
        self.meta_rows.clear()
        for row in self.rows:
            self.writer.write(row.to_csv())
        self.writer.flush()
        self.rows.clear()
        self.xs.clear()

    def _aux(self, x: np.ndarray, ok_rows: list[score_io.ScoreRow], writer: score_io.RowWriter) -> None:
        """The auxiliary heads' probabilities (sigmoid, uncalibrated) by a plain eager pass: a
        second forward of the batch, paid only by runs that ask for them."""
        import torch


        dev = next(self.model.parameters()).device
        with torch.no_grad():
            z = self.model.forward_all(torch.from_numpy(x).to(dev))[:, 1:].float().cpu().numpy()
        names = self.model.aux_names
        for row, zi in zip(ok_rows, sigmoid(z.astype(np.float64))):
            writer.write({"path": row.path, "model_id": row.model_id,
                          **{f"p_{n}": f"{v:.6f}" for n, v in zip(names, zi)}})
        writer.flush()

    def _gradcam(self, x: np.ndarray, ok_rows: list[score_io.ScoreRow], out_dir: Path) -> None:
        import cv2
        import torch

        from fibrosis.model.cam import compute_cams

        pos = [i for i, r in enumerate(ok_rows) if r.decision_fibrosis == 1]
        if not pos:
            return
        dev = next(self.model.parameters()).device
        cams = compute_cams(self.model, torch.from_numpy(x[pos]).to(dev), self.model.cam_layer_name)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, cam in zip(pos, cams):
            name = re.sub(r"[^A-Za-z0-9._-]", "_", ok_rows[i].sop_uid or ok_rows[i].content_hash[:16])
            ok, png = cv2.imencode(".png", overlay(x[i, 0], cam, self.fz.preprocessing))
            if not ok:  # cv2.imwrite would have returned False and written nothing, silently
                raise RuntimeError(f"{out_dir / name}.png: PNG encoding failed")
            atomic_write_bytes(out_dir / f"{name}.png", png.tobytes())


# ------------------------------------------------------------------ entry point


@dataclasses.dataclass
class _Plan:
    """What this rank scores, and how: settled before the first file is read."""
    out: Path
    part: Path  # this rank's rows: ``out`` itself, or ``out.rankN`` under torchrun
    entries: list[tuple[str, str]]  # every input (path, discovery error), all ranks
    todo: list[tuple[str, str]]  # this rank's inputs without a still-valid row
    known: dict[str, str]  # path -> content hash of rows to keep if the file is unchanged
    resumed: int
    salt: str
    scored_at: str
    batch_size: int
    workers: int
    aggregate: str
    engine: str
    gradcam_dir: Path | None
    aux_columns: tuple[str, ...] | None = None  # --aux: the side file's columns


def score(model: str | Path, input: str | Path, out: str | Path, *, workers: int | None = None,
          batch_size: int | None = None, gradcam_dir: str | Path | None = None,
          study_aggregate: str | None = None, engine: str | None = None, progress: bool = True,
          salt_dir: str | Path | None = None, device: str | None = None,
          sr_out: str | Path | None = None, sc_out: str | Path | None = None, aux: bool = False) -> ScoreSummary:
    """Score every file under ``input`` (folder, file or CSV of paths) into ``out``.

    ``None`` arguments come from the checkpoint's ``score`` config. Per-study
    aggregates go to ``out`` with suffix ``.studies.csv``. The patient key salt is
    ``$FIBROSIS_SALT``, else ``<salt_dir>/salt.key`` (default: ``out``'s folder);
    use the training cache folder (or the same variable) to get the keys ingest wrote.
    ``sr_out`` / ``sc_out``: folders for one DICOM SR per study of the inputs
    (:mod:`fibrosis.score.sr`) and Grad-CAM Secondary Captures (:mod:`fibrosis.score.sc`).
    ``aux``: also write the auxiliary findings' uncalibrated probabilities to ``<out>.aux.csv``
    (checkpoints trained with auxiliary heads only; they are ignored otherwise).
    """
    from fibrosis.model import distributed
    from fibrosis.model.checkpoint import load_model
    from fibrosis.model.tta import describe as tta_describe, variants_of

    t0 = time.perf_counter()
    d = distributed.setup(device)
    try:
        ckpt_path = resolve_checkpoint(model)
        sha = file_sha256(ckpt_path)
        net, ckpt = load_model(ckpt_path, d.device)
        if aux and not getattr(net, "aux_names", ()):
            raise ValueError(f"{ckpt_path}: aux outputs asked for, but this model has no auxiliary heads "
                             f"(train with train.aux_weight > 0, or a tune arm with aux_weight)")
        logger.info("test-time augmentation: %s (recorded in the checkpoint)", tta_describe(variants_of(net)))
        fz = frozen_settings(ckpt, ckpt_path, sha)
        del ckpt  # the weights are in ``net`` now; a second copy would only hold memory
        plan = _plan(fz, d, input, Path(out).resolve(), workers=workers, batch_size=batch_size,
                     gradcam_dir=gradcam_dir, study_aggregate=study_aggregate, engine=engine, salt_dir=salt_dir,
                     aux_columns=score_io.aux_columns(net.aux_names) if aux else None)
        scorer = _score_files(plan, fz, net, ckpt_path, sha, d, progress, t0)
        summary = ScoreSummary(str(plan.out), str(score_io.studies_path(plan.out)), fz.model_id,
                               scorer.engine.describe(), scorer.counts, plan.resumed,
                               setup_seconds=scorer.setup_seconds)
        _finish(plan, summary, scorer, d)
        if d.is_main and (sr_out or sc_out):  # the inputs' studies only (resumed rows included)

            summary.dicom_files = write_dicom_outputs(
                plan.out, {p for p, _ in plan.entries}, fz, sha, plan.aggregate, net,
                Path(sr_out) if sr_out else None, Path(sc_out) if sc_out else None)
        distributed.barrier(d)
        summary.seconds = time.perf_counter() - t0
        return summary
    finally:
        distributed.teardown(d)


def _plan(fz: Frozen, d: Any, input: str | Path, out: Path, *, workers: int | None, batch_size: int | None,
          gradcam_dir: str | Path | None, study_aggregate: str | None, engine: str | None,
          salt_dir: str | Path | None, aux_columns: tuple[str, ...] | None = None) -> _Plan:
    """Settings (arguments over the checkpoint's), the salt, the inputs, and what a
    previous run already scored."""
    from fibrosis.model import distributed

    aggregate = study_aggregate or fz.score.study_aggregate
    if aggregate not in score_io.AGGREGATES:
        raise ValueError(f"study aggregate {aggregate!r}; allowed: {list(score_io.AGGREGATES)}")
    bs = batch_size or fz.score.batch_size
    if bs < 1:
        raise ValueError(f"batch_size={bs}; expected >= 1")
    n_workers = workers if workers is not None else (
        fz.score.workers or max(1, len(os.sched_getaffinity(0)) // d.world))
    gc_dir = Path(gradcam_dir) if gradcam_dir else (out.with_suffix(".gradcam") if fz.score.gradcam else None)
    # Rank 0 resolves (maybe creates) the salt and lists the inputs; the others get
    # the same values, so every rank shards one list and hashes with one salt.
    if d.is_main:
        salt_home = Path(salt_dir) if salt_dir else out.parent
        if not os.environ.get("FIBROSIS_SALT") and not (salt_home / artefacts.SALT_KEY).exists():
            logger.warning("patient keys: creating %s (keep it private, never share it with the "
                           "scores); use the training cache's salt (salt_dir / FIBROSIS_SALT) for keys "
                           "that match the training manifest", salt_home / artefacts.SALT_KEY)
        shared = (resolve_salt(salt_home), score_io.discover_inputs(input, out, gc_dir, salt_home / artefacts.SALT_KEY),
                  dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"))
    salt, entries, scored_at = distributed.broadcast_object(d, shared if d.is_main else None)
    if not entries:
        logger.warning("%s: no input files found", input)
    part = out if d.world == 1 else out.with_name(f"{out.name}.rank{d.rank}")
    # Every file written beside --out gets the checks --out gets: a FIFO there would block the
    # run, a foreign file with a side file's name would be overwritten.
    if d.is_main:
        for side, columns in score_io.side_files(out, aux_columns):
            score_io.check_ours(side, columns)
    if part != out:
        for side, columns in score_io.side_files(part, aux_columns)[1:]:  # a rank writes no studies file
            score_io.check_ours(side, columns)
    done = score_io.open_for_resume(part, fz.model_id)
    if d.world > 1 and out.exists():
        done = {**score_io.open_for_resume(out, fz.model_id), **done}  # this rank's part is newer
    score_io.prune_meta(score_io.meta_path(part), done)
    if aux_columns:
        score_io.prune_meta(score_io.aux_path(part), done, aux_columns)
    mine = entries[d.rank::d.world]
    # A row is kept only while its file is unchanged: workers re-hash every file that
    # has one (no decode) and a changed file is scored again. Entries reported without
    # being read (unlistable folder, FIFO, ...) have no content to compare: kept.
    todo = [e for e in mine if not (e[1] and e[0] in done)]
    known = {p: done[p] for p, err in todo if not err and done.get(p)}
    resumed = len(mine) - len(todo)
    if done:
        logger.info("resuming: %d of %s have a row in %s; files whose content hash "
                    "changed are scored again", len(known) + resumed, plural(len(mine), "file"), part)
    return _Plan(out, part, entries, todo, known, resumed, salt, scored_at, bs, n_workers, aggregate,
                 engine or fz.score.engine, gc_dir, aux_columns)


def _score_files(plan: _Plan, fz: Frozen, net: Any, ckpt_path: Path, sha: str, d: Any,
                 progress: bool, t0: float) -> "Scorer":
    """Choose the engine, then decode (worker pool, prefetched) and score this rank's files
    in path order; rows are written batch by batch. Counts the resumed rows into ``plan``."""
    from tqdm import tqdm

    from fibrosis.model import distributed
    from fibrosis.model.engine import onnx_cache_path, select_engine

    # Rank 0 builds its engine first (it writes the cached ONNX export); then the rest.
    if not d.is_main:
        distributed.barrier(d)
    eng, _ = select_engine(net, plan.engine, device=d.device, onnx_path=onnx_cache_path(ckpt_path, sha),
                           calibrate=fz.calibrator.predict, threshold=fz.threshold)
    if d.is_main:
        distributed.barrier(d)
    writer = score_io.RowWriter(plan.part)
    meta_writer = score_io.RowWriter(score_io.meta_path(plan.part), score_io.META_COLUMNS)
    aux_writer = score_io.RowWriter(score_io.aux_path(plan.part), plan.aux_columns) if plan.aux_columns else None
    scorer = Scorer(net, eng, fz, writer, batch_size=plan.batch_size, salt=plan.salt,
                    auto=plan.engine == "auto", gradcam_dir=plan.gradcam_dir, meta_writer=meta_writer,
                    scored_at=plan.scored_at, aux_writer=aux_writer)
    bar = tqdm(total=len(plan.todo), unit="img", desc="score", disable=not progress or not d.is_main)
    scorer.setup_seconds = time.perf_counter() - t0  # since score() started: checkpoint, engine, inputs
    try:
        # Queue: two batches ahead of inference, on top of the pool's own window.
        decoded = results(plan.todo, fz.ingest, fz.preprocessing, plan.workers, plan.known)
        for res, x, stats in _prefetch(decoded, 2 * plan.batch_size):
            bar.update()
            if isinstance(res, Skipped):  # its row is in the file and its content unchanged
                plan.resumed += 1
                continue
            scorer.add(res, x, stats)
        scorer.flush()
    finally:
        writer.close()
        meta_writer.close()
        if aux_writer is not None:
            aux_writer.close()
        bar.close()
    return scorer


def _finish(plan: _Plan, summary: ScoreSummary, scorer: "Scorer", d: Any) -> None:
    """One sorted scores file (torchrun: rank 0 merges the parts) and its side file, the
    counts over all ranks, and the per-study aggregates."""
    from fibrosis.model import distributed

    out = plan.out
    summary.resumed = plan.resumed
    if d.world > 1:
        distributed.barrier(d)
        parts = distributed.gather_object(d, (dict(scorer.counts), plan.resumed))
        summary.counts = sum((Counter(c) for c, _ in parts), Counter())
        summary.resumed = sum(r for _, r in parts)
        if d.is_main:
            ranks = [out.with_name(f"{out.name}.rank{k}") for k in range(d.world)]
            score_io.merge_parts(out, ranks)
            score_io.merge_parts(score_io.meta_path(out), [score_io.meta_path(p) for p in ranks],
                                 score_io.META_COLUMNS)
            if plan.aux_columns:
                score_io.merge_parts(score_io.aux_path(out), [score_io.aux_path(p) for p in ranks], plan.aux_columns)
    else:
        if not score_io.is_sorted(out):
            score_io.sort_in_place(out)
        if not score_io.is_sorted(score_io.meta_path(out)):
            score_io.sort_in_place(score_io.meta_path(out), score_io.META_COLUMNS)
        if plan.aux_columns and not score_io.is_sorted(score_io.aux_path(out)):
            score_io.sort_in_place(score_io.aux_path(out), plan.aux_columns)
    if d.is_main:
        n_studies = score_io.write_studies(out, Path(summary.studies_out), plan.aggregate)
        # The count is of the whole file, which may hold earlier runs' rows (resume, the node).
        logger.info("%s: %s in all, aggregate %s over frontal ok images", summary.studies_out,
                    plural(n_studies, "study"), plan.aggregate)
