"""Command-line interface: a thin layer over the importable stage functions.

Each sub-command parses arguments, loads the config, calls one stage function
and maps its outcome to an exit status. No pipeline logic lives here.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, get_args

from fibrosis import artefacts
from fibrosis import __version__
from fibrosis.cli.completion import SHELLS, script
from fibrosis.cli.demo import run_demo
from fibrosis.cli.logs import setup_logging
from fibrosis.cli.options import (EXIT_FAIL, EXIT_OK, EXIT_USAGE, Formatter, add_global_options, add_run_option,
                                  check_required, deprecated, deprecations, exit_status)
from fibrosis.config import Config, ConfigError, EngineName, StudyAggregate, load_config
from fibrosis.io import NO_SPACE_ERRNOS
from fibrosis.cli.tracking import attach_report, log_evaluation, log_tune
from fibrosis.data.split import split_cache
from fibrosis.pipeline.tune import run_tune
from fibrosis.score.dicomweb import Query, retrieve, store
from fibrosis.words import plural

if TYPE_CHECKING:
    from fibrosis.score.dicomweb import Retrieved

logger = logging.getLogger("fibrosis")

# OSErrors that mean "this path cannot be used as given" (a file where a folder is
# expected, no permission, read-only) or "this file system is full" (fibrosis.io.NoSpaceError
# names the file system and the file): usage errors, one line. Others (I/O errors) keep
# their traceback.
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
               errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP, *NO_SPACE_ERRNOS}
MAX_MESSAGE_CHARS = 2000  # an error is read on a terminal; the log file gets the same line


class UsageError(ValueError):
    """A command-line path or option that cannot work, found before any work starts."""


def _folder(path: Path, option: str, *, create: bool = False) -> Path:
    """``path`` is (or, with ``create``, can become) a folder; else a UsageError naming ``option``."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file; expected a folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{option} {path}: cannot create the folder ({exc.strerror or exc})") from None
    return path


def _file_out(path: Path, option: str, example: str = artefacts.SCORES) -> Path:
    """``path`` can be written as a file: not an existing folder."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; expected a file path (e.g. {path / example})")
    return path


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.set or ())


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config (see configs/default.yaml); unknown keys are an error")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.batch_size=16 (repeatable)")


# ------------------------------------------------------------------ commands


def cmd_ingest(args: argparse.Namespace) -> int:
    from fibrosis.data.ingest import ingest

    if args.labels:
        args.set = [*(args.set or ()), f"ingest.labels_csv={args.labels}"]
    # As JSON, which YAML reads verbatim: a column named `no` or `null` stays a string.
    if args.aux_columns is not None:
        columns = [c.strip() for c in args.aux_columns.split(",") if c.strip()]
        args.set = [*(args.set or ()), f"ingest.aux_label_columns={json.dumps(columns)}"]
    if args.findings_column is not None:
        args.set = [*(args.set or ()), f"ingest.findings_column={json.dumps(args.findings_column)}"]
    cfg = _config(args)
    _folder(args.cache, "--cache", create=True)
    inputs, retrieved = list(args.inputs), None
    if args.dicomweb:
        retrieved, folder = _retrieve(args)
        inputs.append(str(folder))
    elif not inputs:
        raise UsageError("ingest: give INPUT folders or files, or --dicomweb URL with --fetch-dir")
    summary = ingest(inputs, args.cache, cfg.ingest, strict=args.strict,
                     workers=args.workers, progress=not args.no_progress, verify=args.verify)
    if retrieved is not None and retrieved.failed and summary.exit_code == EXIT_OK:
        return EXIT_FAIL  # the stage ran, but not every instance the query named got in
    return summary.exit_code


def cmd_split(args: argparse.Namespace) -> int:

    _folder(args.cache, "--cache")
    split_cache(args.cache, _config(args).split, reassign=args.reassign)  # logs its summary and warnings
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from fibrosis.model.net import WeightsError
    from fibrosis.train.loop import train

    cfg = _config(args)
    _folder(args.cache, "--cache")
    _folder(args.run, "--run", create=True)
    try:
        best = train(cfg, args.cache, args.run, resume=args.resume,
                     max_epochs=args.max_epochs, device=args.device)
    except WeightsError as exc:  # offline without the ImageNet file, or a bad model.weights
        logger.error("%s", _one_line(exc))
        if args.verbose:
            logger.exception("details")
        return EXIT_USAGE
    logger.info("best checkpoint: %s", best)
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:

    cfg = _config(args)
    result = run_tune(cfg, args.cache, args.run, device=args.device,
                      max_units=args.max_units, progress=not args.no_progress)
    if result is not None and cfg.train.mlflow_uri:

        logger.info("MLflow run %s (%s)", log_tune(cfg.train.mlflow_uri, Path(args.run), result), cfg.train.mlflow_uri)
    if result is None:
        logger.info("tune stopped after --max-units %s; run the same command again to continue", args.max_units)
    else:
        logger.info("model: %s (evaluate it with `fibrosis evaluate --run %s --cache %s`)",
                    Path(args.run) / artefacts.BEST, args.run, args.cache)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fibrosis.evaluate.run import evaluate_run

    # Without --config, the run's own resolved config is used and --set goes on top of it.
    cfg = _config(args) if args.config else None
    _folder(args.run, "--run")
    _folder(args.cache, "--cache")
    out = evaluate_run(args.run, args.cache, split=args.split, cfg=cfg,
                       overrides=() if args.config else (args.set or ()), frozen=args.frozen,
                       gradcam=not args.no_gradcam, device=args.device)
    logger.info("metrics: %s", out)
    # The tracking URI of this command (--config / --set), not the one the run was trained with.
    uri = (cfg or _config(args)).train.mlflow_uri
    if uri:

        logger.info("MLflow run %s (%s)", log_evaluation(uri, Path(out)), uri)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from fibrosis.report.build import write_report

    if args.out is not None:
        _folder(args.out, "--out")
    out = write_report(args.run, args.out, split=args.split)
    logger.info("report written to %s", out)
    eval_dir = Path(args.run) / artefacts.EVAL_DIR / args.split
    try:
        link = attach_report(eval_dir, out)
    except Exception as exc:  # noqa: BLE001 - the report stands; MLflow (optional, maybe remote) is a copy of it
        logger.warning("report not added to the evaluation's MLflow run (%s): %s", eval_dir / artefacts.MLFLOW_RUN,
                       _one_line(exc))
    else:
        if link is not None:
            logger.info("report added to MLflow run %s (%s)", link.run_id, link.uri)
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    if not args.dir.exists():
        raise UsageError(f"runs {args.dir}: no such folder; expected a folder holding run folders")
    _folder(args.dir, "runs")
    if args.out is not None:
        _file_out(args.out, "--out", artefacts.RUNS_INDEX)
    roots = args.reports if args.reports is not None else [Path("reports")]
    from fibrosis.report.runs_page import write_runs_index  # reads metrics.json: scipy

    page, index = write_runs_index(args.dir, args.out, roots)
    logger.info("runs: %s, %s (%d not readable) -> %s", plural(index.n_runs, "run"),
                plural(index.n_evaluations, "evaluation"), index.n_unreadable, page)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from fibrosis.evaluate.compare import compare_runs

    if args.evaluations:
        logger.warning("%s", deprecated("compare A B", "compare --run A --run B"))
    given = [*(args.run or []), *args.evaluations]
    if len(given) != 2:
        raise UsageError(f"compare: give two evaluations (--run A --run B); got {len(given)}")
    splits = args.split or ["test"]
    if len(splits) > 2:
        raise UsageError(f"compare: --split once (both) or twice (A's, B's); got {len(splits)}")
    compare_runs(given[0], given[1], split=splits[0], split_b=splits[-1], level=args.level, out=args.out)
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from fibrosis.model.engine import EngineError
    from fibrosis.score.run import score

    _file_out(args.out, "--out")
    if args.salt_dir is not None:
        _folder(args.salt_dir, "--salt-dir")
    if (args.input is None) == (args.dicomweb is None):
        raise UsageError("score: give exactly one of --input DIR_OR_CSV and --dicomweb URL")
    if args.stow and not (args.dicomweb and (args.sr_out or args.sc_out)):
        raise UsageError("--stow: sends the SR/SC back to the --dicomweb server; give --dicomweb and --sr-out "
                         "(and/or --sc-out)")
    for option in ("sr_out", "sc_out"):
        if getattr(args, option) is not None:
            _folder(getattr(args, option), "--" + option.replace("_", "-"), create=True)
    retrieved, stow_failed = None, 0
    if args.dicomweb:
        retrieved, args.input = _retrieve(args)
    try:
        summary = score(args.run, args.input, args.out, workers=args.workers,
                        batch_size=args.batch_size, gradcam_dir=args.gradcam,
                        study_aggregate=args.aggregate, engine=args.engine,
                        progress=not args.no_progress, salt_dir=args.salt_dir, device=args.device,
                        sr_out=args.sr_out, sc_out=args.sc_out, aux=args.aux)
    except EngineError as exc:  # a named engine is unavailable or disagrees with eager fp32
        logger.error("%s", exc)
        return EXIT_USAGE
    logger.info("%s", summary)
    if args.stow:

        _, _, stow_failed = store(args.dicomweb, summary.dicom_files, _stow_record(args.fetch_dir),
                                  args.dicomweb_auth_file)
    ok = summary.ok() and not stow_failed and not (retrieved is not None and retrieved.failed)
    return EXIT_OK if ok else EXIT_FAIL


def _stow_record(fetch_dir: Path) -> Path:
    """Beside the fetch folder, not in it: the folder is scored as input, file by file."""
    return fetch_dir.with_name(fetch_dir.name + ".stowed.txt")


def _retrieve(args: argparse.Namespace) -> tuple[Retrieved, Path]:
    """QIDO-RS + WADO-RS into --fetch-dir: (what was retrieved, the folder to read)."""

    if args.fetch_dir is None:
        raise UsageError("--dicomweb: give --fetch-dir DIR, the folder the studies are retrieved into "
                         "(kept: a re-run retrieves only what is not there yet)")
    _folder(args.fetch_dir, "--fetch-dir", create=True)
    q = Query(args.dicomweb, tuple(args.study or ()), tuple(args.modality or ("CR", "DX")), args.study_date or "")
    return retrieve(q, args.fetch_dir, args.dicomweb_auth_file), args.fetch_dir


def cmd_listen(args: argparse.Namespace) -> int:

    from fibrosis.score.node import Destination, NodeConfig, listen

    _folder(args.workdir, "--workdir", create=True)
    if args.salt_dir is not None:
        _folder(args.salt_dir, "--salt-dir")
    cfg = NodeConfig(model=args.run, workdir=args.workdir, port=args.port, ae_title=args.ae_title,
                     host=args.host, idle_seconds=args.idle, allowed_callers=tuple(args.allow_caller or ()),
                     destination=Destination.parse(args.send_to) if args.send_to else None, sc=args.sc,
                     timeout=args.timeout, engine=args.engine, device=args.device, workers=args.workers,
                     batch_size=args.batch_size, salt_dir=args.salt_dir, retry_seconds=args.retry_wait,
                     retry_max_seconds=max(args.retry_wait, 3600.0), send_attempts=args.send_attempts)
    stop = threading.Event()

    # SIGTERM (service manager) and SIGINT (Ctrl-C): stop accepting, let the batch being scored
    # finish, exit. A second signal exits at once (128 + signal number) without waiting; what
    # was received stays in incoming/ and is scored on the next start. os._exit: the scoring
    # thread may be inside native code, which an interpreter shutdown would abort.
    def on_signal(signum: int, frame: object) -> None:
        if not stop.is_set():
            stop.set()
            return
        logger.warning("second %s: exiting now; the batch being scored is scored again on the next start",
                       signal.Signals(signum).name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    counts = listen(cfg, stop)
    if counts.get("unsent_studies") or counts.get("batches_failed"):
        logger.warning("exit 1: %s with results not sent (kept in %s, sent on the next start), %s "
                       "failed (scored again on the next start)", plural(counts.get("unsent_studies", 0), "study"),
                       args.workdir, plural(counts.get("batches_failed", 0), "batch"))
        return EXIT_FAIL
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    from fibrosis.monitor.run import monitor

    _folder(args.out, "--out", create=True)
    summary = monitor(args.run, args.scores, args.out, labels=args.labels, reference=args.reference,
                      alpha=args.alpha, window=args.window, label_column=args.label_column)
    logger.info("monitor: %s -> %s", plural(len(summary.alerts), "alert") if summary.alert else "no alert",
                summary.html_path)
    return EXIT_FAIL if summary.alert else EXIT_OK


def cmd_review(args: argparse.Namespace) -> int:
    from fibrosis.review.server import Settings, serve

    if args.labels_out is not None:
        _file_out(args.labels_out, "--labels-out")
    serve(Settings(args.scores, model=args.run, labels_out=args.labels_out,
                   host=args.host, port=args.port, reader=args.reader or "", level=args.level,
                   blinded=args.blinded, read_only=args.read_only, truth=args.truth))
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:

    sys.stdout.write(script(build_parser(), args.shell))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:

    _folder(args.work, "--work")
    return EXIT_OK if run_demo(args.work, quick=args.quick, data=args.data) else EXIT_FAIL


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fibrosis",
        description="Train, validate and batch-score a pulmonary-fibrosis classifier on chest "
                    "X-rays by transfer learning. Pipeline: ingest -> split -> train or tune -> evaluate "
                    "-> report -> score -> monitor. -v and --log-file go before or after the command.",
        epilog=exit_status(None), formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"fibrosis {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=exit_status(name), formatter_class=Formatter)
        add_global_options(p, top=False)
        p.set_defaults(func=func)
        return p

    p = add("ingest", cmd_ingest,
            "Decode DICOM/PNG/JPEG inputs into the preprocessing cache (manifest.csv, rejects.csv).")
    p.add_argument("inputs", nargs="*", help="folders (recursive), files, or a CSV with a 'path' column "
                                             "(or none, with --dicomweb)")
    p.add_argument("--cache", type=Path, required=True, help="cache directory (created or resumed)")
    p.add_argument("--labels", default=None,
                   help="labels CSV joined by file name (image/file), sop_instance_uid or "
                        "study_instance_uid; label column = ingest.label_column")
    p.add_argument("--aux-columns", default=None, metavar="A,B",
                   help="auxiliary finding columns of --labels (1 / 0 / empty = missing), comma-separated; "
                        "stored per image in the manifest's aux_labels (= ingest.aux_label_columns)")
    p.add_argument("--findings-column", default=None, metavar="NAME",
                   help="pipe-separated findings column of --labels, e.g. finding_labels: listed = 1, the "
                        "column's other findings = 0, empty = missing (= ingest.findings_column)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--strict", action="store_true", help="exit non-zero on any rejected file")
    p.add_argument("--verify", action="store_true",
                   help="hash every file, even those unchanged (size, mtime, inode) since committed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _dicomweb_options(p, stow=False)
    _add_config_args(p)

    p = add("split", cmd_split,
            "Write a seeded, patient-level, label-stratified train/val/test(/calib) split into the manifest.")
    p.add_argument("--cache", type=Path, required=True, help="cache folder written by `fibrosis ingest`")
    p.add_argument("--reassign", action="store_true",
                   help="re-draw every patient's split (default: assigned patients never move)")
    _add_config_args(p)

    p = add("train", cmd_train, "Fine-tune an ImageNet backbone (freeze, then unfreeze) on the cache.")
    p.add_argument("--cache", type=Path, required=True, help="cache folder, split by `fibrosis split`")
    add_run_option(p, "run folder to write (checkpoints, logs; created)", old=["--out"])
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN/last.pt exactly where it stopped (error if absent)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="stop after N epochs in this invocation (time-boxed jobs; then --resume)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    _add_config_args(p)

    p = add("tune", cmd_tune,
            "How much to unfreeze? Patient-level k-fold CV over train+val of a scikit-learn reference, "
            "the linear probe, fine-tuning arms (with augmentation), `fibrosis train`'s partial preset and "
            "a random-init control; picks the arm with the highest pooled out-of-fold AUC, kept only if it "
            "beats each simpler arm on its path in every repeat of the CV (tune.selection), reports its "
            "selection-adjusted AUC, and leaves its fold models as one ensemble checkpoint in RUN/best.pt "
            "(resumable).")
    p.add_argument("--cache", type=Path, required=True, help="cache folder, split by `fibrosis split`")
    add_run_option(p, "run folder to write (re-run the same command to resume)", old=["--out"])
    p.add_argument("--max-units", type=int, default=None,
                   help="stop after N (fold, arm) units of the first repeats in this invocation; re-run to continue")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(p)

    p = add("evaluate", cmd_evaluate,
            "Fit calibration and operating points on validation, measure on a held-out split.")
    add_run_option(p, "run folder written by `fibrosis train` or `fibrosis tune`")
    p.add_argument("--cache", type=Path, required=True,
                   help="cache folder to measure on: the training cache, or (with --frozen) an external one")
    p.add_argument("--split", default="test",
                   help="split to measure on: test (default); `all` = every row of the cache, "
                        "only with --frozen")
    p.add_argument("--frozen", action="store_true",
                   help="external validation: apply the calibration and thresholds stored in the "
                        "checkpoint, refit nothing, leave the checkpoint unchanged")
    p.add_argument("--no-gradcam", action="store_true", help="skip the Grad-CAM panels")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    _add_config_args(p)

    p = add("report", cmd_report, "Write the HTML + PDF validation report and metrics.json.")
    add_run_option(p, "run folder evaluated by `fibrosis evaluate`")
    p.add_argument("--out", type=Path, default=None, help="folder for the report (default: reports/<run name>/)")
    p.add_argument("--split", default="test",
                   help="evaluation to report: a folder name under RUN/eval/ (default: test; a "
                        "frozen evaluation is frozen-<cache dir name>-<split>)")

    p = add("runs", cmd_runs,
            "Write one HTML page listing every run under DIR (at any depth) and each of its evaluations: "
            "model, data, split, AUC with its CI, calibration, date and a link to its report; newest first. "
            "A run not evaluated yet, and a folder that cannot be read (with the reason), get a row too.")
    p.add_argument("dir", type=Path, metavar="DIR", help="folder to search for run folders (each holding best.pt)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="the page to write (default: DIR/index.html)")
    p.add_argument("--reports", type=Path, action="append", metavar="FOLDER",
                   help="where to look for reports besides DIR: `fibrosis report`'s --out folders or a folder "
                        "above them (repeatable; default: ./reports, where `fibrosis report` writes by default); "
                        "a report is linked to the evaluation whose metrics.json it copied")

    p = add("compare", cmd_compare,
            "Paired DeLong test of two evaluations on the same cases: two models on the same test split, or on "
            "the same external images (`evaluate --frozen`). Each --run is a run folder (its evaluation named "
            "by --split) or an evaluation folder itself (RUN/eval/NAME/, holding predictions.csv). Refused "
            "when the two case sets or their labels differ.")
    p.add_argument("--run", type=Path, action="append", metavar="RUN_OR_EVALUATION",
                   help="a run folder or an evaluation folder; give it twice, A then B")
    p.add_argument("evaluations", type=Path, nargs="*", metavar="A B", help=argparse.SUPPRESS)
    p.add_argument("--split", action="append", metavar="NAME",
                   help="evaluation of a run folder: a folder name under RUN/eval/ (test, or "
                        "frozen-<cache dir name>-<split> for `evaluate --frozen`); once for both, or twice, "
                        "A's then B's (default: test)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the CI (default 0.95)")
    p.add_argument("--out", type=Path, default=None,
                   help="result JSON (default: compare_<B>.json in A's evaluation folder)")

    p = add("score", cmd_score,
            "Batch-score DICOM/PNG studies with a trained model, its calibration and threshold; from a folder, "
            "a CSV of paths or a DICOMweb server.")
    add_run_option(p, "run folder (or its checkpoint .pt) whose model, calibration and threshold score",
                   old=["--model"])
    p.add_argument("--input", type=Path, default=None,
                   help="folder (recursive) or CSV of paths (or --dicomweb instead)")
    p.add_argument("--out", type=Path, required=True,
                   help="per-image scores CSV; per-study aggregate goes to <out>.studies.csv")
    _inference_options(p)
    p.add_argument("--aggregate", choices=get_args(StudyAggregate), default=None,
                   help="per-study aggregate over frontal images (default from checkpoint config)")
    p.add_argument("--salt-dir", type=Path, default=None,
                   help="training cache folder (or folder holding salt.key), so patient keys match "
                        "the training manifest; default: $FIBROSIS_SALT, else the output's folder")
    p.add_argument("--gradcam", type=Path, default=None, help="write Grad-CAM PNGs of positives here")
    p.add_argument("--sr-out", type=Path, default=None,
                   help="write one DICOM Comprehensive SR per scored study here (<StudyInstanceUID>.sr.dcm; "
                        "patient/study modules copied from the source images)")
    p.add_argument("--sc-out", type=Path, default=None,
                   help="write a Grad-CAM overlay per frontal image scored here, as DICOM Secondary Capture "
                        "in the source's study")
    p.add_argument("--aux", action="store_true",
                   help="also write the auxiliary findings' outputs (models trained with auxiliary heads) to "
                        "<out>.aux.csv: uncalibrated probabilities, never validated; scores.csv is fibrosis only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _dicomweb_options(p, stow=True)

    p = add("listen", cmd_listen,
            "Run a DICOM node (C-STORE SCP with C-ECHO): receive CR/DX images from a PACS or modality, "
            "score each study once it has been idle, write CSV rows and an SR (and SC), optionally send "
            "them back with C-STORE. SIGTERM / Ctrl-C: stop accepting, let the batch being scored finish, "
            "exit; a second one exits at once.")
    add_run_option(p, "run folder or checkpoint (.pt); preprocessing, policy, calibrator and threshold "
                      "come from it, as for `score`", old=["--model"])
    p.add_argument("--workdir", type=Path, required=True,
                   help="node folder: incoming/<StudyInstanceUID>/ (received instances), scores.csv, "
                        "scores.studies.csv, sr/, sc/, state/ (created; reused on restart)")
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on (0: any free port, logged)")
    p.add_argument("--ae-title", default="FIBROSIS",
                   help="this node's AE title; associations must call it (default: FIBROSIS)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--idle", type=float, default=30.0,
                   help="score a study once no instance of it arrived for this many seconds (default 30)")
    p.add_argument("--allow-caller", action="append", metavar="AE",
                   help="accept associations only from this calling AE title (repeatable; default: any)")
    p.add_argument("--send-to", metavar="AE@HOST:PORT", default=None,
                   help="send each study's SR (and SC) with C-STORE to this AE; a failed send is retried "
                        "(the results are kept, never scored again) after --retry-wait seconds, doubled after "
                        "each failure up to 1 h, --send-attempts times, then again on the next start")
    p.add_argument("--retry-wait", type=float, default=30.0,
                   help="seconds before the first retry of a failed send (default 30)")
    p.add_argument("--send-attempts", type=int, default=10,
                   help="attempts per study before the node gives up on it until its next start (default 10)")
    p.add_argument("--sc", action="store_true",
                   help="also write (and send) Grad-CAM overlays as Secondary Capture in the study")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="association, DIMSE and network timeouts in seconds (default 30)")
    _inference_options(p)
    p.add_argument("--salt-dir", type=Path, default=None,
                   help="folder with salt.key for the pseudonymous patient keys (default: --workdir; "
                        "$FIBROSIS_SALT wins)")

    p = add("monitor", cmd_monitor,
            "Compare scored batches with the evaluation the model was validated on: input shift "
            "(metadata mix, image statistics, exclusions), output shift (probabilities, positive rate) "
            "and, with labels, performance.")
    add_run_option(p, "run folder or checkpoint (.pt) that scored the files; its reference is "
                      "RUN/eval/test/reference.json, written by `fibrosis evaluate`", old=["--model"])
    p.add_argument("--scores", type=Path, required=True, action="append",
                   help="scores CSV written by `fibrosis score` (its side file <name>.meta.csv is read "
                        "beside it); repeatable: each file is a scoring batch")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels CSV, joined as `ingest --labels` joins it (sop_instance_uid, image/file, "
                        "study_instance_uid); enables the performance checks")
    p.add_argument("--out", type=Path, required=True, help="folder for monitor.json and monitor.html")
    p.add_argument("--reference", type=Path, default=None,
                   help="reference.json of another evaluation (default: RUN/eval/test/reference.json)")
    p.add_argument("--window", choices=["auto", "month", "batch"], default="auto",
                   help="time windows: StudyDate/AcquisitionDate month, scoring batch, or auto (month "
                        "when most images are dated)")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="significance level of the shift tests, Bonferroni-corrected within each window "
                        "(default 0.01)")
    p.add_argument("--label-column", default=None,
                   help="label column of --labels (default: the checkpoint's ingest.label_column)")

    p = add("review", cmd_review,
            "Serve a local web page to review scored studies: a sortable, filterable worklist, each image as "
            "the model saw it with its Grad-CAM overlay, and a reader's label (present / absent / uncertain) "
            "saved on each click to a labels CSV that `ingest --labels` and `monitor --labels` read. "
            "Binds 127.0.0.1 unless --host says otherwise. Ctrl-C stops it; labels are kept and resumed.")
    p.add_argument("--scores", type=Path, required=True,
                   help="scores CSV written by `fibrosis score` (its side files <name>.meta.csv and "
                        "<name>.studies.csv are read beside it when present)")
    add_run_option(p, "run directory or checkpoint (.pt) that scored the files: shows each image as this "
                      "model saw it and its Grad-CAM; without it, images as ingest prepares them and no heat map",
                   required=False)
    p.add_argument("--labels-out", type=Path, default=None,
                   help=f"the reader's labels CSV, created or resumed (default: {artefacts.READER_LABELS} beside "
                        "--scores); one file per reader")
    p.add_argument("--reader", default=None, metavar="CODE",
                   help="the reader's initials or code, saved with each label (else asked for in the page)")
    p.add_argument("--level", choices=["study", "image"], default="study",
                   help="what the worklist lists and a label applies to when the address names none "
                        "(default: study; the page switches between the two)")
    p.add_argument("--blinded", action="store_true",
                   help="hide the model's output (probability, decision, Grad-CAM) until the reader has "
                        "committed a label for the item: a reader study without automation bias")
    p.add_argument("--read-only", action="store_true",
                   help="show scores and existing labels, record nothing (to show results to others)")
    p.add_argument("--truth", type=Path, default=None, metavar="LABELS_CSV",
                   help="reference standard labels of the scored files (read as `ingest --labels` reads them): "
                        "on stop, RUN/reader/reader.json gets the reader's sensitivity and specificity against "
                        "it beside the model's ROC, for `fibrosis report` (with --run)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only); any other needs a token in "
                        "$FIBROSIS_REVIEW_TOKEN (16+ characters), opened once as ?token=...")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any free port, logged)")

    p = add("demo", cmd_demo,
            "Run the whole pipeline on the bundled demo data (data/demo): ingest, split, tune (patient-level "
            "cross-validation of how much to unfreeze; keeps the chosen arm's fold ensemble), evaluate on the "
            "test split, report (reports/demo/), score data/demo/score (two broken files on purpose), and the "
            "runs index WORK/index.html (`fibrosis runs`).")
    p.add_argument("--work", type=Path, default=Path("work/demo"),
                   help="working folder for the cache, run and scores (emptied first; default work/demo)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test size: 2 folds, one fine-tuning epoch, one probe strength, eager scoring")
    p.add_argument("--data", type=Path, default=None,
                   help="the demo data folder (<repository>/data/demo; default: $FIBROSIS_DEMO_DATA, "
                        "else the checkout this package runs from)")

    p = add("completion", cmd_completion,
            "Print a shell completion script for fibrosis (every command and option; paths complete file "
            "names). bash: fibrosis completion bash > ~/.local/share/bash-completion/completions/fibrosis; "
            "zsh: fibrosis completion zsh > DIR/_fibrosis, with DIR on $fpath.")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    return parser


def _dicomweb_options(p: argparse.ArgumentParser, *, stow: bool) -> None:
    """Studies from a DICOMweb server (QIDO-RS + WADO-RS), for `score` and `ingest`."""
    g = p.add_argument_group("DICOMweb (the only network calls, and only when --dicomweb is given)")
    g.add_argument("--dicomweb", metavar="URL", default=None,
                   help="DICOMweb root of the server to query and retrieve from, e.g. "
                        "https://pacs.example.org/dicom-web; credentials from $FIBROSIS_DICOMWEB_AUTH or "
                        "--dicomweb-auth-file, never from the command line")
    g.add_argument("--study", action="append", metavar="UID",
                   help="StudyInstanceUID to retrieve (repeatable); default: the studies matching "
                        "--modality and --study-date")
    g.add_argument("--modality", action="append", choices=["CR", "DX"],
                   help="modality in study to query for (repeatable; default CR and DX)")
    g.add_argument("--study-date", metavar="RANGE", default=None,
                   help="study date or range to query for: YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD")
    g.add_argument("--fetch-dir", type=Path, default=None, metavar="DIR",
                   help="folder the CR/DX instances are retrieved into (<StudyInstanceUID>/<SOPInstanceUID>.dcm) "
                        "and read from; kept, so a re-run retrieves only what is not there yet")
    g.add_argument("--dicomweb-auth-file", type=Path, default=None, metavar="FILE",
                   help="file with one line 'bearer TOKEN' or 'basic USER:PASSWORD' (default: "
                        "$FIBROSIS_DICOMWEB_AUTH, same format; none: no authentication)")
    if stow:
        g.add_argument("--stow", action="store_true",
                       help="STOW-RS the SR (--sr-out) and SC (--sc-out) back to the --dicomweb server; an object "
                            "the server already accepted is not sent again (<fetch-dir>.stowed.txt)")


def _inference_options(p: argparse.ArgumentParser) -> None:
    """What `score` and `listen` share: how to run the checkpoint, never what it computes."""
    p.add_argument("--workers", type=int, default=None, help="decode worker processes")
    p.add_argument("--batch-size", type=int, default=None, help="inference batch size (default: checkpoint's)")
    p.add_argument("--engine", choices=get_args(EngineName), default=None,
                   help="inference engine (default from the checkpoint config: auto, the first that "
                        "agrees with eager fp32)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")


def _one_line(exc: BaseException) -> str:
    """The message, cut to MAX_MESSAGE_CHARS: a hostile input must not print megabytes."""
    text = str(exc)
    return text if len(text) <= MAX_MESSAGE_CHARS else (
        f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_required(args)
    problem = setup_logging(args.verbose, args.log_file)
    if problem:
        logger.error("%s", problem)
        return EXIT_USAGE
    for line in deprecations(args):
        logger.warning("%s", line)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        # Expected user errors: one clear line, no traceback (use -v for one).
        logger.error("%s", _one_line(exc))
        if args.verbose:
            logger.exception("details")
        return EXIT_USAGE
    except OSError as exc:
        if exc.errno not in PATH_ERRNOS:
            raise
        logger.error("%s", _one_line(exc))
        if args.verbose:
            logger.exception("details")
        return EXIT_USAGE
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
