"""The review server's routes (Starlette): worklist, study view, pixels, labels, static files.

``GET /`` the worklist (query: :class:`~fibrosis.review.worklist.Query`); ``GET /view/<level>/<key>``
a study or image (``?img=<key>`` picks an image of the study; the worklist's query travels along
for previous / next); ``GET /image/<key>.png?center=&width=`` the image as the model saw it through
a window; ``GET /cam/<key>.png`` its Grad-CAM heat map; ``POST /label`` a reader label (JSON
``{level, key, call, reader}``). Keys are opaque (:mod:`fibrosis.review.worklist`).

Blinded mode keeps the model's output (probability, decision, heat map) from the reader until
the item carries the reader's label; it is enforced here, not only in the page.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fibrosis.review.images import ImageUnavailable, Viewer, heat_rgba, png, window
from fibrosis.review.labels import Entry, LabelStore
from fibrosis.review.pages import Mode, StudyView, study_page, worklist_page
from fibrosis.review.security import Guard
from fibrosis.review.worklist import LEVELS, Level, Query, Worklist
from fibrosis.score.output import FRONTAL_VIEWS

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_BODY = 4096  # a label is a few dozen bytes


@dataclass
class Review:
    """Everything the routes read: the worklist, the labels, the pixels and the mode."""

    worklist: Worklist
    labels: LabelStore
    viewer: Viewer
    mode: Mode
    level: Level = "study"  # the worklist's rows when the address names none


def _bad(message: str, status: int = 400) -> Response:
    return PlainTextResponse(message, status)


def _revealed(r: Review, level: str, i: int) -> bool:
    """Whether the model's output may be shown for row ``i`` of ``level``: always, unless blinded;
    then once the item (or, for an image, its study) carries a label."""
    if not r.mode.blinded:
        return True
    wl = r.worklist
    if level == "image":
        return bool(wl.image_table.read[i] or wl.study_table.read[wl.images.study[i]])
    return bool(wl.study_table.read[i])


def _label(r: Review, level: Level, i: int) -> Entry | None:
    """The label of row ``i``; for an image without one, its study's (as ingest and monitor join it)."""
    entry = r.labels.get(level, i)
    if entry is None and level == "image":
        study = r.labels.get("study", int(r.worklist.images.study[i]))
        return replace(study, via_study=True) if study else None
    return entry


def _item(r: Review, request: Request) -> tuple[Level, int] | Response:
    level, key = request.path_params["level"], request.path_params["key"]
    if level not in LEVELS:
        return _bad(f"level {level!r}; expected one of {list(LEVELS)}", 404)
    i = r.worklist.table(level).index.get(key)
    return _bad("no such row in this worklist", 404) if i is None else (cast(Level, level), i)


def build_app(r: Review, guard: Guard) -> Starlette:
    def query(request: Request) -> Query:
        return Query.parse(request.query_params, blinded=r.mode.blinded, level=r.level)

    def home(request: Request) -> Response:
        try:
            q = query(request)
        except ValueError as exc:
            return _bad(str(exc))
        rows, total = r.worklist.table(q.level).page(q)
        entries = [_label(r, q.level, i) for i in rows.tolist()]
        return HTMLResponse(worklist_page(r.worklist, q, rows, total, entries, r.mode),
                            headers={"Cache-Control": "no-store"})

    def view(request: Request) -> Response:
        found = _item(r, request)
        if isinstance(found, Response):
            return found
        level, i = found
        try:
            q = query(request)
        except ValueError as exc:
            return _bad(str(exc))
        q = replace(q, level=level)
        wl = r.worklist
        study = int(wl.images.study[i]) if level == "image" else i
        siblings = wl.studies.images(study)
        image = i if level == "image" else _first_shown(r, siblings)
        chosen = wl.image_table.index.get(request.query_params.get("img", ""))
        if chosen is not None and chosen in siblings:
            image = chosen
        table = wl.table(level)
        prev, nxt = table.neighbours(q, i)
        link = q.params(page=1)

        def href(j: int | None) -> str:
            return "" if j is None else f"/view/{level}/{table.keys[j]}" + (f"?{urlencode(link)}" if link else "")

        back = "/" + (f"?{urlencode(q.params())}" if q.params() else "")
        problem = ""
        if wl.image_table.status[image] != 0 and not wl.images.content_hash[image]:
            problem = "this file could not be read when it was scored: nothing to show"
        v = StudyView(level, table.keys[i], image, study, siblings, r.labels.get(level, i), _revealed(r, level, i),
                      back, href(prev), href(nxt), wl.images.threshold_name[image],
                      float(wl.images.threshold[image]), wl.studies.aggregate[study], link)
        if not problem:
            try:
                r.viewer.gray(wl.image_table.keys[image], wl.images.path[image], wl.images.content_hash[image])
            except ImageUnavailable as exc:
                problem = str(exc)
        return HTMLResponse(study_page(wl, v, r.mode, problem), headers={"Cache-Control": "no-store"})

    def _image_row(request: Request) -> int | Response:
        i = r.worklist.image_table.index.get(request.path_params["key"])
        return _bad("no such image in this worklist", 404) if i is None else i

    def image(request: Request) -> Response:
        i = _image_row(request)
        if isinstance(i, Response):
            return i
        try:
            center = float(request.query_params.get("center", "0.5"))
            width = float(request.query_params.get("width", "1"))
        except ValueError:
            return _bad("center and width: numbers from 0 to 1 expected")
        if not (0 <= center <= 1 and 0 < width <= 1) or math.isnan(center + width):
            return _bad(f"center={center}, width={width}; expected 0 <= center <= 1 and 0 < width <= 1")
        wl = r.worklist
        try:
            gray = r.viewer.gray(wl.image_table.keys[i], wl.images.path[i], wl.images.content_hash[i])
            body = png(window(gray, center, width))
        except ImageUnavailable as exc:
            return _bad(str(exc), 404)
        return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    def cam(request: Request) -> Response:
        i = _image_row(request)
        if isinstance(i, Response):
            return i
        if not _revealed(r, "image", i):
            return _bad("blinded mode: the heat map is shown once this image or its study is labelled", 403)
        wl = r.worklist
        try:
            body = png(heat_rgba(r.viewer.cam(wl.image_table.keys[i], wl.images.path[i],
                                              wl.images.content_hash[i])))
        except ImageUnavailable as exc:
            return _bad(str(exc), 404)
        return Response(body, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    async def label(request: Request) -> Response:
        if r.mode.read_only:
            return _bad("read-only mode: labels are not recorded", 403)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _bad(f"request of {len(raw)} bytes; expected at most {MAX_BODY}", 413)
        try:
            body: Any = json.loads(raw)
            level, key, call, reader = (str(body[k]) for k in ("level", "key", "call", "reader"))
        except (ValueError, KeyError, TypeError):
            return _bad('expected JSON {"level": ..., "key": ..., "call": ..., "reader": ...}')
        i = r.worklist.table(level).index.get(key) if level in LEVELS else None
        if i is None:
            return _bad("no such row in this worklist", 404)
        try:
            # the atomic rewrite (fsync) in a worker thread, not on the event loop
            entry = await run_in_threadpool(r.labels.set, cast(Level, level), i, call, reader)
        except ValueError as exc:
            return _bad(str(exc))
        return JSONResponse({"call": entry.call, "reader": entry.reader, "labelled_at": entry.labelled_at,
                             "labels": len(r.labels)})

    routes = [Route("/", home), Route("/view/{level}/{key}", view), Route("/image/{key}.png", image),
              Route("/cam/{key}.png", cam), Route("/label", label, methods=["POST"]),
              Route("/favicon.ico", lambda request: Response(status_code=204)),  # browsers ask; there is none
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard.dispatch)])


def _first_shown(r: Review, images: list[int]) -> int:
    """The image a study opens on: its first scored frontal image, else its first."""
    t = r.worklist.image_table
    return next((i for i in images if t.status[i] == 0 and t.views[t.view[i]] in FRONTAL_VIEWS), images[0])
