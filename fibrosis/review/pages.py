"""Server-side HTML of the worklist and the study view: every value escaped, no inline script or
style (the Content-Security-Policy forbids both); behaviour lives in static/review.js, which reads
what it needs from ``data-`` attributes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

import numpy as np

from fibrosis.score.output import STATUSES
from fibrosis.review.labels import CALLS, Entry
from fibrosis.review.worklist import DECISIONS, LEVELS, Query, Table, Worklist

SHORTCUTS = (("p", "present"), ("a", "absent"), ("u", "uncertain"), ("n / j", "next"), ("b / k", "previous"),
             ("o", "Grad-CAM overlay"), ("+ / -", "zoom"), ("0", "reset window and zoom"), ("Esc", "worklist"))
PLURAL = {"image": "images", "study": "studies"}
CALL_KEYS = {"present": "p", "absent": "a", "uncertain": "u"}


@dataclass(frozen=True)
class Mode:
    blinded: bool
    read_only: bool
    reader: str
    csrf: str
    has_model: bool


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _url(path: str, params: dict[str, str]) -> str:
    return path + (f"?{urlencode(params)}" if params else "")


def _prob(p: float) -> str:
    return "" if math.isnan(p) else f"{p:.3f}"


def _decision(d: int) -> str:
    return {1: "positive", 0: "negative"}.get(d, "")


def page(title: str, body: str, mode: Mode, data: dict[str, str]) -> str:
    attrs = " ".join(f'data-{k}="{_e(v)}"' for k, v in {**data, "csrf": mode.csrf, "reader": mode.reader,
                                                         "readonly": "1" if mode.read_only else "0",
                                                         "blinded": "1" if mode.blinded else "0"}.items())
    flags = "".join(f'<span class="badge">{_e(t)}</span>' for t, on in
                    (("blinded", mode.blinded), ("read-only", mode.read_only)) if on)
    reader = "" if mode.read_only else (
        '<label class="reader">reader <input id="reader" size="8" maxlength="32" autocomplete="off" '
        f'value="{_e(mode.reader)}" title="your initials or code, saved with each label"></label>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            '<link rel="stylesheet" href="/static/review.css"><script src="/static/review.js" defer></script>'
            f'</head><body {attrs}><header><a class="home" href="/">fibrosis review</a> {flags} {reader}'
            '<span class="note">research software, not a diagnosis</span></header>'
            f'<main>{body}</main></body></html>')


def _select(name: str, value: str, options: list[tuple[str, str]], label: str) -> str:
    opts = "".join(f'<option value="{_e(v)}"{" selected" if v == value else ""}>{_e(t)}</option>' for v, t in options)
    return f'<label>{_e(label)} <select name="{name}">{opts}</select></label>'


def _filters(wl: Worklist, q: Query, mode: Mode) -> str:
    t = wl.table(q.level)
    parts = [_select("level", q.level, [(v, PLURAL[v]) for v in LEVELS], "rows"),
             _select("status", q.status, [("", "any"), *((s, s) for s in STATUSES)], "status"),
             _select("view", q.view, [("", "any"), *((v, v or "(none)") for v in sorted(t.views) if v)], "view"),
             _select("manufacturer", q.manufacturer,
                     [("", "any"), *((m, m) for m in sorted(wl.image_table.manufacturers) if m)], "manufacturer")]
    if not mode.blinded:
        parts.append(_select("decision", q.decision, [("", "any"), *((d, {"1": "positive", "0": "negative"}.get(d, d))
                                                                      for d in DECISIONS)], "decision"))
        for name, value in (("p_min", q.p_min), ("p_max", q.p_max)):
            parts.append(f'<label>{"p ≥" if name == "p_min" else "p ≤"} <input name="{name}" size="4" '
                         f'inputmode="decimal" value="{"" if value is None else _e(value)}"></label>')
    parts.append(f'<label><input type="checkbox" name="unread" value="1"{" checked" if q.unread else ""}> '
                 'not yet read</label>')
    keep = "".join(f'<input type="hidden" name="{k}" value="{_e(v)}">'
                   for k, v in q.params().items() if k in ("sort", "desc", "per_page"))
    return f'<form class="filters" method="get" action="/">{"".join(parts)}{keep}<button>apply</button></form>'


def _header_cell(q: Query, key: str, text: str) -> str:
    desc = key == q.sort and not q.desc
    arrow = (" ▼" if q.desc else " ▲") if key == q.sort else ""
    return f'<th><a class="sort" data-sort="{key}" href="{_e(_url("/", q.params(sort=key, desc=desc, page=1)))}">' \
           f'{_e(text)}{arrow}</a></th>'


def worklist_page(wl: Worklist, q: Query, rows: np.ndarray, total: int, labels: list[Entry | None],
                  mode: Mode) -> str:
    t: Table = wl.table(q.level)
    cols = [("order", "#"), ("order", q.level), ("view", "view"), ("manufacturer", "manufacturer"),
            ("status", "status")]
    if not mode.blinded:
        cols += [("probability", "probability"), ("decision", "decision")]
    cols += [("read", "reader")]
    head = "".join(_header_cell(q, k, text) for k, text in cols)
    body = []
    for n, (i, entry) in enumerate(zip(rows.tolist(), labels), start=(q.page - 1) * q.per_page + 1):
        href = _url(f"/view/{q.level}/{t.keys[i]}", q.params(page=1))
        status = STATUSES[t.status[i]] + (f": {t.reasons[i]}" if t.reasons[i] else "")
        cells = [str(n), f'<a class="open" href="{_e(href)}">{_e(t.names[i])}</a>', _e(t.views[t.view[i]]),
                 _e(t.manufacturers[t.manufacturer[i]]), _e(status)]
        if not mode.blinded:
            cells += [_prob(float(t.prob[i])), _decision(int(t.decision[i]))]
        cells.append(_e(f"{entry.call} ({entry.reader}{', study' if entry.via_study else ''})") if entry else "")
        body.append(f'<tr data-key="{_e(t.keys[i])}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    pages = max(1, math.ceil(total / q.per_page))
    nav = []
    if q.page > 1:
        nav.append(f'<a id="prev-page" href="{_e(_url("/", q.params(page=q.page - 1)))}">previous page</a>')
    nav.append(f"page {q.page} of {pages} ({total} {PLURAL[q.level]})")
    if q.page < pages:
        nav.append(f'<a id="next-page" href="{_e(_url("/", q.params(page=q.page + 1)))}">next page</a>')
    counts = (f"{len(wl.image_table)} images in {len(wl.study_table)} studies; "
              f"{int(wl.image_table.read.sum())} images and {int(wl.study_table.read.sum())} studies labelled")
    table = (f'<table id="worklist"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
             if body else '<p class="empty">no rows match these filters</p>')
    html = (f'<h1>Worklist</h1><p class="counts">{_e(counts)}</p>{_filters(wl, q, mode)}'
            f'<nav class="pager">{" · ".join(nav)}</nav>{table}')
    return page("fibrosis review: worklist", html, mode, {"page": "worklist"})


@dataclass(frozen=True)
class StudyView:
    """What the study view shows; ``image`` is the row in the image table being displayed."""

    level: str
    key: str
    image: int
    study: int
    siblings: list[int]
    entry: Entry | None
    revealed: bool
    back: str
    prev: str
    next: str
    threshold_name: str
    threshold: float
    aggregate: str
    query: dict[str, str]  # the worklist's order and filters, carried from page to page


def _model_panel(wl: Worklist, v: StudyView, mode: Mode) -> str:
    it, st = wl.image_table, wl.study_table
    if not v.revealed:
        return ('<section class="model hidden-output"><h2>Model</h2><p id="blinded-note">Blinded: the model\'s '
                'output is shown once you have committed your label.</p></section>')
    thr = "" if math.isnan(v.threshold) else f"{v.threshold:.3f}"
    rows = [("image probability (calibrated)", _prob(float(it.prob[v.image]))),
            ("image decision", _decision(int(it.decision[v.image])) or "not scored"),
            ("operating point", f"{v.threshold_name} (threshold {thr})" if v.threshold_name else ""),
            (f"study aggregate ({v.aggregate or 'none'} of {int(wl.studies.n_frontal[v.study])} frontal image(s))",
             _prob(float(st.prob[v.study])) or "none"),
            ("study decision", _decision(int(st.decision[v.study])) or "none")]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(val)}</td></tr>" for k, val in rows)
    return f'<section class="model"><h2>Model</h2><table id="model-output">{body}</table></section>'


def _label_panel(v: StudyView, mode: Mode) -> str:
    current = (f'<p id="current-label" data-call="{_e(v.entry.call)}">{_e(v.entry.call)} by {_e(v.entry.reader)} '
               f'at {_e(v.entry.labelled_at)}</p>' if v.entry else '<p id="current-label" data-call="">not yet read</p>')
    if mode.read_only:
        return f'<section class="label"><h2>Reader label ({_e(v.level)})</h2>{current}</section>'
    buttons = "".join(f'<button class="call{" chosen" if v.entry and v.entry.call == c else ""}" data-call="{c}">'
                      f'{_e(c)} <kbd>{CALL_KEYS[c]}</kbd></button>' for c in CALLS)
    return (f'<section class="label"><h2>Reader label for this {_e(v.level)}</h2><div class="calls">{buttons}</div>'
            f'{current}<p id="save-status" role="status"></p></section>')


def study_page(wl: Worklist, v: StudyView, mode: Mode, image_problem: str) -> str:
    it = wl.image_table
    img_key = it.keys[v.image]
    status = STATUSES[it.status[v.image]] + (f": {it.reasons[v.image]}" if it.reasons[v.image] else "")
    if image_problem:
        stage = f'<p class="problem">{_e(image_problem)}</p>'
    else:
        heat = (f'<img id="heat" class="heat" alt="Grad-CAM heat map" src="/cam/{_e(img_key)}.png" hidden>'
                if v.revealed and mode.has_model else "")
        stage = (f'<div id="stage" class="stage"><div id="zoom" class="zoom"><img id="base" alt="image as the '
                 f'model saw it" src="/image/{_e(img_key)}.png">{heat}</div></div>'
                 '<div class="controls"><label>level <input id="wl-center" type="range" min="0" max="1" step="0.01" '
                 'value="0.5"></label><label>window <input id="wl-width" type="range" min="0.05" max="1" step="0.01" '
                 'value="1"></label><button id="zoom-in">zoom +</button><button id="zoom-out">zoom −</button>'
                 '<button id="reset">reset</button>'
                 + ('<button id="overlay-toggle" aria-pressed="false">Grad-CAM overlay <kbd>o</kbd></button>'
                    if heat else "") + "</div>")
    sib = "".join(f'<li><a href="{_e(_url(f"/view/{v.level}/{v.key}", {**v.query, "img": it.keys[i]}))}"'
                  f'{" class=current" if i == v.image else ""}>{_e(it.names[i])} ({_e(it.views[it.view[i]] or "?")})</a></li>'
                  for i in v.siblings)
    nav = (f'<nav class="study-nav"><a id="back" href="{_e(v.back)}">worklist <kbd>Esc</kbd></a>'
           + (f' · <a id="prev" href="{_e(v.prev)}">previous <kbd>b</kbd></a>' if v.prev else "")
           + (f' · <a id="next" href="{_e(v.next)}">next <kbd>n</kbd></a>' if v.next else "") + "</nav>")
    keys = "".join(f"<li><kbd>{_e(k)}</kbd> {_e(what)}</li>" for k, what in SHORTCUTS)
    title = wl.table(v.level).names[wl.table(v.level).index[v.key]]
    body = (f'{nav}<h1>{_e(title)}</h1><div class="study"><div class="viewer">{stage}</div><aside>'
            f'{_label_panel(v, mode)}{_model_panel(wl, v, mode)}'
            f'<section class="image-info"><h2>Image</h2><p>{_e(it.names[v.image])}: {_e(status)}</p>'
            f'<ul class="siblings">{sib}</ul></section>'
            f'<section class="keys"><h2>Keys</h2><ul>{keys}</ul></section></aside></div>')
    data = {"page": "study", "level": v.level, "key": v.key, "image": img_key, "next": v.next, "prev": v.prev,
            "back": v.back}
    return page(f"fibrosis review: {title}", body, mode, data)
