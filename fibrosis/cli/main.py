"""Command-line interface: a thin layer over the importable stage functions.

Each sub-command parses arguments, loads the config, calls one stage function
and maps its outcome to an exit status. No pipeline logic lives here.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from fibrosis import __version__
from fibrosis.config import Config, ConfigError, load_config

logger = logging.getLogger("fibrosis")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


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
    cfg = _config(args)
    summary = ingest(args.inputs, args.cache, cfg.ingest, strict=args.strict,
                     workers=args.workers, progress=not args.no_progress)
    logger.info("%s", summary)
    return summary.exit_code


def cmd_split(args: argparse.Namespace) -> int:
    from fibrosis.data.split import split_cache

    summary = split_cache(args.cache, _config(args).split, reassign=args.reassign)
    for name, counts in summary.counts.items():
        logger.info("%-6s %s", name, counts)
    for warning in summary.warnings:
        logger.warning("%s", warning)
    logger.info("near-duplicate pairs: %s", Path(args.cache) / "near_duplicates.csv")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from fibrosis.train.loop import train

    best = train(_config(args), args.cache, args.out, resume=args.resume,
                 max_epochs=args.max_epochs, device=args.device)
    logger.info("best checkpoint: %s", best)
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    from fibrosis.cli.tune import run_tune

    result = run_tune(_config(args), args.cache, args.out, device=args.device,
                      max_units=args.max_units, progress=not args.no_progress)
    if result is None:
        logger.info("tune stopped after --max-units %s; run the same command again to continue", args.max_units)
    else:
        logger.info("model: %s (evaluate it with `fibrosis evaluate --run %s --cache %s`)",
                    Path(args.out) / "best.pt", args.out, args.cache)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fibrosis.evaluate.run import evaluate_run

    # Without --config, the run's own resolved config is used and --set goes on top of it.
    cfg = _config(args) if args.config else None
    out = evaluate_run(args.run, args.cache, split=args.split, cfg=cfg,
                       overrides=() if args.config else (args.set or ()), frozen=args.frozen,
                       gradcam=not args.no_gradcam, device=args.device)
    logger.info("metrics: %s", out)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from fibrosis.report.build import write_report

    out = write_report(args.run, args.out, split=args.split)
    logger.info("report written to %s", out)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from fibrosis.evaluate.compare import compare_runs

    result = compare_runs(args.run_a, args.run_b, split=args.split, level=args.level)
    logger.info("%s", result)
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from fibrosis.model.engine import EngineError
    from fibrosis.score.run import score

    try:
        summary = score(args.model, args.input, args.out, workers=args.workers,
                        batch_size=args.batch_size, gradcam_dir=args.gradcam,
                        study_aggregate=args.aggregate, engine=args.engine,
                        progress=not args.no_progress, salt_dir=args.salt_dir, device=args.device)
    except EngineError as exc:  # a named engine is unavailable or disagrees with eager fp32
        logger.error("%s", exc)
        return EXIT_USAGE
    logger.info("%s", summary)
    return EXIT_OK if summary.ok() else EXIT_FAIL


def cmd_demo(args: argparse.Namespace) -> int:
    from fibrosis.cli.demo import run_demo

    return EXIT_OK if run_demo(args.work, quick=args.quick, data=args.data) else EXIT_FAIL


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fibrosis",
        description="Train, validate and batch-score a pulmonary-fibrosis classifier on chest "
                    "X-rays by transfer learning. Pipeline: ingest -> split -> train -> evaluate "
                    "-> report -> score.")
    parser.add_argument("--version", action="version", version=f"fibrosis {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-file", type=Path, default=None, help="also log to this file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("ingest", cmd_ingest,
            "Decode DICOM/PNG/JPEG inputs into the preprocessing cache (manifest.csv, rejects.csv).")
    p.add_argument("inputs", nargs="+", help="folders (recursive), files, or a CSV with a 'path' column")
    p.add_argument("--cache", type=Path, required=True, help="cache directory (created or resumed)")
    p.add_argument("--labels", default=None,
                   help="labels CSV joined by file name (image/file), sop_instance_uid or "
                        "study_instance_uid; label column = ingest.label_column")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--strict", action="store_true", help="exit non-zero on any rejected file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(p)

    p = add("split", cmd_split,
            "Write a seeded, patient-level, label-stratified train/val/test(/calib) split into the manifest.")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--reassign", action="store_true",
                   help="re-draw every patient's split (default: assigned patients never move)")
    _add_config_args(p)

    p = add("train", cmd_train, "Fine-tune an ImageNet backbone (freeze, then unfreeze) on the cache.")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, logs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt exactly where it stopped (error if absent)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="stop after N epochs in this invocation (time-boxed jobs; then --resume)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    _add_config_args(p)

    p = add("tune", cmd_tune,
            "How much to unfreeze? Patient-level k-fold CV over train+val of linear probe, "
            "fine-tuning arms and a random-init control; picks an arm by the one-SE rule and leaves "
            "its fold models as one ensemble checkpoint in OUT/best.pt (resumable).")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="tune directory (re-run to resume)")
    p.add_argument("--max-units", type=int, default=None,
                   help="stop after N (fold, arm) units in this invocation; re-run to continue")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(p)

    p = add("evaluate", cmd_evaluate,
            "Fit calibration and operating points on validation, measure on a held-out split.")
    p.add_argument("--run", type=Path, required=True, help="run directory written by `train`")
    p.add_argument("--cache", type=Path, required=True)
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
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="default: reports/<run name>/")
    p.add_argument("--split", default="test",
                   help="evaluation to report: a folder name under RUN/eval/ (default: test; a "
                        "frozen evaluation is frozen-<cache dir name>-<split>)")

    p = add("compare", cmd_compare, "Paired DeLong test of two evaluated runs on the same cases.")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the CI")

    p = add("score", cmd_score,
            "Batch-score DICOM/PNG studies with a trained model, its calibration and threshold.")
    p.add_argument("--model", type=Path, required=True, help="run directory or checkpoint (.pt)")
    p.add_argument("--input", type=Path, required=True, help="folder (recursive) or CSV of paths")
    p.add_argument("--out", type=Path, required=True,
                   help="per-image scores CSV; per-study aggregate goes to <out>.studies.csv")
    p.add_argument("--workers", type=int, default=None, help="decode worker processes")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--aggregate", choices=["max", "mean"], default=None,
                   help="per-study aggregate over frontal images (default from checkpoint config)")
    p.add_argument("--engine", choices=["auto", "eager", "channels_last", "bf16", "onnx"],
                   default=None, help="inference engine (default from the checkpoint config: auto, "
                                      "the first that agrees with eager fp32)")
    p.add_argument("--salt-dir", type=Path, default=None,
                   help="training cache folder (or folder holding salt.key), so patient keys match "
                        "the training manifest; default: $FIBROSIS_SALT, else the output's folder")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--gradcam", type=Path, default=None, help="write Grad-CAM PNGs of positives here")
    p.add_argument("--no-progress", action="store_true")

    p = add("demo", cmd_demo,
            "Run the whole pipeline on the bundled demo data (data/demo): ingest, split, train, "
            "evaluate, report, score.")
    p.add_argument("--work", type=Path, default=Path("work/demo"), help="working directory")
    p.add_argument("--quick", action="store_true", help="fewer epochs (smoke test)")
    p.add_argument("--data", type=Path, default=None,
                   help="the demo data folder (<repository>/data/demo; default: $FIBROSIS_DEMO_DATA, "
                        "else the checkout this package runs from)")
    return parser


def _setup_logging(verbose: bool, log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.log_file)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        # Expected user errors: one clear line, no traceback (use -v for one).
        logger.error("%s", exc)
        if args.verbose:
            logger.exception("details")
        return EXIT_USAGE
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
