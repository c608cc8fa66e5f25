"""`fibrosis review`: read the scores once, open the labels file, serve the pages with uvicorn.

The socket is bound here (so ``--port 0`` gets a free port that can be logged) before uvicorn
serves it; uvicorn's own access log is off (it would log query strings), the guard logs each
request as method, path and status.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fibrosis import artefacts
from fibrosis.config import IngestConfig
from fibrosis.review.app import Review, build_app
from fibrosis.review.images import Model, Viewer, load_model
from fibrosis.review.labels import LabelStore, check_reader
from fibrosis.review.pages import Mode
from fibrosis.review.security import TOKEN_ENV, Guard, check_binding, is_loopback
from fibrosis.review.worklist import Level, load_worklist
from fibrosis.score.output import iter_score_rows

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8765


@dataclass(frozen=True)
class Settings:
    scores: Path
    model: Path | None = None
    labels_out: Path | None = None  # default: reader_labels.csv beside the scores
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    reader: str = ""
    level: Level = "study"
    blinded: bool = False
    read_only: bool = False
    token: str | None = None  # default: $FIBROSIS_REVIEW_TOKEN
    truth: Path | None = None  # reference standard labels CSV for reader vs model

    def labels_path(self) -> Path:
        return self.labels_out or self.scores.with_name(artefacts.READER_LABELS)


def prepare(s: Settings) -> tuple[Review, Guard]:
    """The application's state, checked before a socket is opened: a bad option is one line and exit 2."""
    token = s.token if s.token is not None else os.environ.get(TOKEN_ENV) or None
    check_binding(s.host, token)
    if s.truth is not None and not s.truth.is_file():
        raise FileNotFoundError(f"--truth {s.truth}: labels CSV not found")
    if s.reader:
        check_reader(s.reader)
    model: Model | None = load_model(s.model) if s.model is not None else None
    ingest = model.frozen.ingest if model else IngestConfig()
    aggregate = model.frozen.score.study_aggregate if model else "max"
    wl = load_worklist(s.scores, aggregate)
    if model is not None and wl.model_id and wl.model_id != model.frozen.model_id:
        raise ValueError(f"{s.scores}: scored by model_id {wl.model_id!r}; --run {s.model} is model_id "
                         f"{model.frozen.model_id!r}: give the model that scored these files")
    store = LabelStore(s.labels_path(), wl, ingest.label_column)
    guard = Guard(loopback=is_loopback(s.host), token=token)
    mode = Mode(blinded=s.blinded, read_only=s.read_only, reader=s.reader, csrf=guard.csrf, has_model=model is not None)
    return Review(wl, store, Viewer(model), mode, s.level), guard


def serve(s: Settings, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM); ``on_ready`` gets the address once it listens."""
    import uvicorn

    review, guard = prepare(s)
    family = socket.AF_INET6 if ":" in s.host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((s.host.strip("[]"), s.port))
    sock.listen(128)  # connections wait in the backlog from now on, not refused until uvicorn is up
    port = sock.getsockname()[1]
    host = f"[{s.host.strip('[]')}]" if family == socket.AF_INET6 else s.host
    address = f"http://{'127.0.0.1' if s.host == '0.0.0.0' else host}:{port}/"
    config = uvicorn.Config(build_app(review, guard), log_config=None, access_log=False, server_header=False,
                            date_header=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    logger.info("review: %d images, %d studies; labels -> %s%s%s", len(review.worklist.image_table),
                len(review.worklist.study_table), review.labels.path,
                " (blinded)" if s.blinded else "", " (read-only: no labels recorded)" if s.read_only else "")
    logger.info("review: open %s%s (Ctrl-C to stop)", address,
                f"?token=<${TOKEN_ENV}>" if guard.token is not None else "")
    if on_ready is not None:
        on_ready(address)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C is how a reader ends a session, not an error
        pass
    logger.info("review: stopped; %d reader label(s) in %s", len(review.labels), review.labels.path)
    if s.model is not None and not s.read_only and len(review.labels):
        reader_vs_model(s, review)


def reader_vs_model(s: Settings, review: Review) -> None:
    """RUN/reader/reader.json for the report (the run of --run): the reader's labels against the model's."""
    from fibrosis.evaluate.reader import write_reader_vs_model
    from fibrosis.score.run import resolve_checkpoint

    assert s.model is not None
    run = resolve_checkpoint(s.model).parent
    out = run / artefacts.READER_DIR / artefacts.READER_VS_MODEL
    try:
        write_reader_vs_model(out, s.scores, iter_score_rows(s.scores), review.labels.path,
                              review.labels.label_column, s.truth)
    except (OSError, ValueError) as exc:  # the labels are saved; only the report's summary is missing
        logger.warning("reader vs model not written to %s: %s", out, exc)
        return
    logger.info("review: reader vs model -> %s (`fibrosis report --run %s` shows it)", out, run)
