"""The worklist: every scored image and study, read once into columns, sorted, filtered and paged.

``scores.csv`` (and its side files ``scores.meta.csv`` for the manufacturer and
``scores.studies.csv`` for the study aggregate) is read once at start into numpy columns and
:class:`~fibrosis.review.strings.Strings`; a page of 100,000 rows costs an argsort done once per
sort key and a boolean mask, never a pass over Python dicts.

Rows are named in URLs by opaque keys, never by a path or a DICOM UID: an image by the first 16
hex digits of its content hash, a study by a hash of its salted patient key and its UID.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import typing
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from fibrosis.evaluate.summary import scrub_reason
from fibrosis.io import iter_csv
from fibrosis.monitor.load import row_problem
from fibrosis.review.strings import KeyIndex, Strings
from fibrosis.score.output import (FRONTAL_VIEWS, STATUSES, iter_score_rows, meta_path, study_rows,
                                   studies_path)

logger = logging.getLogger(__name__)

Level = Literal["image", "study"]
LEVELS: tuple[str, ...] = typing.get_args(Level)
SortKey = Literal["order", "probability", "decision", "status", "view", "manufacturer", "read"]
SORT_KEYS: tuple[str, ...] = typing.get_args(SortKey)
DECISIONS = ("1", "0", "none")  # the decision filter: positive, negative, no decision (not scored)
MODEL_OUTPUT_SORTS = frozenset({"probability", "decision"})  # hidden in blinded mode
PER_PAGE, MAX_PER_PAGE = 50, 500
KEY_HEX = 16


@dataclass(frozen=True)
class Query:
    """One worklist request: what to show, in which order, which page. Every field has a
    default, and :meth:`params` writes only the fields that differ from it."""

    level: Level = "image"
    sort: SortKey = "order"
    desc: bool = False
    status: str = ""  # one of STATUSES, or "" for all
    decision: str = ""  # one of DECISIONS, or ""
    view: str = ""
    manufacturer: str = ""
    unread: bool = False
    p_min: float | None = None
    p_max: float | None = None
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str], *, blinded: bool = False, level: Level = "image") -> Query:
        """From URL query parameters; ValueError names the parameter, its value and what is allowed.
        ``blinded`` refuses what would show the model's output (its sort or a filter on it)."""
        def choice(name: str, allowed: Iterable[str], default: str) -> str:
            value = params.get(name, default)
            allowed = tuple(allowed)
            if value not in allowed:
                raise ValueError(f"{name}={value!r}; expected one of {list(allowed)}")
            return value

        def number(name: str, lo: float, hi: float, cast: type = float) -> typing.Any:
            text = params.get(name, "")
            if text == "":
                return None
            try:
                value = cast(text)
            except ValueError:
                value = math.nan
            if not lo <= value <= hi:
                raise ValueError(f"{name}={text!r}; expected a number from {lo:g} to {hi:g}")
            return value

        q = cls(level=typing.cast(Level, choice("level", LEVELS, level)),
                sort=typing.cast(SortKey, choice("sort", SORT_KEYS, "order")),
                desc=choice("desc", ("0", "1"), "0") == "1",
                status=choice("status", ("", *STATUSES), ""),
                decision=choice("decision", ("", *DECISIONS), ""),
                view=params.get("view", ""), manufacturer=params.get("manufacturer", ""),
                unread=choice("unread", ("0", "1"), "0") == "1",
                p_min=number("p_min", 0.0, 1.0), p_max=number("p_max", 0.0, 1.0),
                page=number("page", 1, 10**9, int) or 1, per_page=number("per_page", 1, MAX_PER_PAGE, int) or PER_PAGE)
        if blinded and (q.sort in MODEL_OUTPUT_SORTS or q.decision or q.p_min is not None or q.p_max is not None):
            raise ValueError("blinded mode: the worklist cannot be sorted or filtered by the model's output "
                             "(probability, decision); expected sort=order|status|view|manufacturer|read")
        return q

    def params(self, **changes: typing.Any) -> dict[str, str]:
        """The query (with ``changes``) as URL parameters, defaults left out."""
        q, default = replace(self, **changes), Query()
        out: dict[str, str] = {}
        for name in self.__dataclass_fields__:
            value = getattr(q, name)
            if value != getattr(default, name):
                out[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


@dataclass
class Table:
    """Rows of one level, column by column. ``view`` and ``manufacturer`` are codes into
    ``views`` / ``manufacturers``; ``decision`` is -1 where there is none; ``status`` a code into
    STATUSES; ``read`` whether a reader label exists (kept current by the label store)."""

    keys: Strings
    names: Strings
    prob: np.ndarray
    decision: np.ndarray
    status: np.ndarray
    reasons: Strings
    view: np.ndarray
    views: list[str]
    manufacturer: np.ndarray
    manufacturers: list[str]
    read: np.ndarray = field(init=False)
    index: KeyIndex = field(init=False)
    _orders: dict[tuple[str, bool], np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.read = np.zeros(len(self.keys), bool)
        self.index = KeyIndex(self.keys, KEY_HEX)

    def __len__(self) -> int:
        return len(self.keys)

    def _sort_values(self, key: str) -> np.ndarray:
        if key == "order":
            return np.arange(len(self), dtype=np.float64)
        if key == "probability":
            return self.prob.astype(np.float64)
        if key == "decision":
            return np.where(self.decision < 0, np.nan, self.decision).astype(np.float64)
        if key == "status":
            return self.status.astype(np.float64)
        if key == "read":
            return self.read.astype(np.float64)
        names = self.views if key == "view" else self.manufacturers
        rank = np.argsort(np.argsort(np.array(names, dtype=object), kind="stable"), kind="stable")
        codes = self.view if key == "view" else self.manufacturer
        return rank[codes].astype(np.float64) if len(names) else codes.astype(np.float64)

    def order(self, key: str, desc: bool) -> np.ndarray:
        """Row indices sorted by ``key``; ties keep file order, missing values come last either way."""
        cached = self._orders.get((key, desc))
        if cached is not None:
            return cached
        values = self._sort_values(key)
        out = np.argsort(-values if desc else values, kind="stable")  # NaN sorts last
        if key != "read":  # labels change while the server runs; the rest never does
            self._orders[(key, desc)] = out
        return out

    def mask(self, q: Query) -> np.ndarray:
        m = np.ones(len(self), bool)
        if q.status:
            m &= self.status == STATUSES.index(q.status)
        if q.decision:
            m &= self.decision == {"1": 1, "0": 0, "none": -1}[q.decision]
        for value, codes, names in ((q.view, self.view, self.views),
                                    (q.manufacturer, self.manufacturer, self.manufacturers)):
            if value:
                m &= codes == (names.index(value) if value in names else -2)
        if q.unread:
            m &= ~self.read
        if q.p_min is not None:
            m &= self.prob >= q.p_min  # NaN (not scored) fails both bounds
        if q.p_max is not None:
            m &= self.prob <= q.p_max
        return m

    def ordered(self, q: Query, keep: int | None = None) -> np.ndarray:
        """Indices of the rows ``q`` selects, in its order; ``keep``: a row kept even if the
        filter drops it (the row being read, whose label just took it off "not yet read")."""
        m = self.mask(q)
        if keep is not None:
            m[keep] = True
        order = self.order(q.sort, q.desc)
        return order[m[order]]

    def page(self, q: Query) -> tuple[np.ndarray, int]:
        """(row indices of page ``q.page``, number of rows selected)."""
        rows = self.ordered(q)
        start = (q.page - 1) * q.per_page
        return rows[start:start + q.per_page], len(rows)

    def neighbours(self, q: Query, i: int) -> tuple[int | None, int | None]:
        """The rows before and after row ``i`` in the order of ``q``."""
        rows = self.ordered(q, keep=i)
        pos = int(np.flatnonzero(rows == i)[0])
        return (int(rows[pos - 1]) if pos > 0 else None,
                int(rows[pos + 1]) if pos + 1 < len(rows) else None)


@dataclass
class Images:
    """What the study view and the label store need of each image beyond the table."""

    path: Strings
    sop_uid: Strings
    study_uid: Strings
    content_hash: Strings
    threshold_name: Strings
    threshold: np.ndarray
    study: np.ndarray  # row of the image's study in the study table


@dataclass
class Studies:
    """Per study: its UID, aggregate, and its images (``members[starts[s]:starts[s + 1]]``)."""

    study_uid: Strings
    aggregate: list[str]
    n_frontal: np.ndarray
    starts: np.ndarray
    members: np.ndarray

    def images(self, s: int) -> list[int]:
        return [int(i) for i in self.members[self.starts[s]:self.starts[s + 1]]]


@dataclass
class Worklist:
    scores: Path
    model_id: str
    image_table: Table
    study_table: Table
    images: Images
    studies: Studies

    def table(self, level: str) -> Table:
        return self.image_table if level == "image" else self.study_table


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:KEY_HEX]


class _Codes:
    """Category -> code, in order of first appearance."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._code: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        code = self._code.get(value)
        if code is None:
            code = self._code[value] = len(self.names)
            self.names.append(value)
        return code


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def load_worklist(scores: Path, aggregate: str = "max") -> Worklist:
    """Read ``scores`` (written by `fibrosis score`) and its side files once; a row `score` could not
    have written, or scores of two models, are refused with the file and line."""
    if not scores.is_file():
        raise FileNotFoundError(f"{scores}: scores file not found (written by `fibrosis score --out`)")
    meta = meta_path(scores)
    maker = {m["path"]: m.get("manufacturer", "") for m in iter_csv(meta)} if meta.is_file() else {}
    text = {c: Strings() for c in ("path", "sop_uid", "study_uid", "content_hash", "threshold_name", "reason", "name",
                                   "key")}
    prob, threshold = array("f"), array("f")
    decision, status = array("b"), array("b")
    view, made, study = array("h"), array("h"), array("l")
    views, makers, study_codes = _Codes(), _Codes(), _Codes()
    seen: set[str] = set()
    model_ids: set[str] = set()
    for line, r in enumerate(iter_score_rows(scores), start=2):
        problem = row_problem(r)
        if problem:
            raise ValueError(f"{scores}:{line}: {problem} (a scores file written by `fibrosis score`)")
        model_ids.add(r["model_id"])
        kind, reason = r["status"], r["reason"]
        key = r["content_hash"][:KEY_HEX] if len(r["content_hash"]) >= KEY_HEX else _key("row", str(line))
        if key in seen:  # the same content under two paths: still two rows
            key = _key(key, str(line))
        seen.add(key)
        for c in ("path", "sop_uid", "study_uid", "content_hash", "threshold_name"):
            text[c].append(r[c])
        text["key"].append(key)
        text["name"].append(os.path.basename(r["path"]))
        text["reason"].append(scrub_reason(reason, r["path"]) if reason else "")
        status.append(STATUSES.index(kind))
        ok = kind == "ok"
        prob.append(float(r["probability_calibrated"]) if ok else math.nan)
        decision.append(int(r["decision_fibrosis"]) if ok else -1)
        threshold.append(_float(r["threshold"]))
        view.append(views(r["view_position"]))
        made.append(makers(maker.get(r["path"], "")))
        # an image without a study UID (unreadable) is a study of its own
        study.append(study_codes(_key(r["patient_key"], r["study_uid"]) if r["study_uid"] else _key("image", key)))
    del seen, maker
    if len(model_ids) > 1:
        raise ValueError(f"{scores}: rows of {len(model_ids)} models {sorted(model_ids)}; expected the scores "
                         "of one model (review each model's scores on their own)")
    images = Images(text["path"], text["sop_uid"], text["study_uid"], text["content_hash"], text["threshold_name"],
                    np.array(threshold, np.float32), np.array(study, np.int32))
    image_table = Table(text["key"], text["name"], np.array(prob, np.float32), np.array(decision, np.int8),
                        np.array(status, np.int8), text["reason"], np.array(view, np.int16), views.names,
                        np.array(made, np.int16), makers.names)
    studies, study_table = _studies(scores, aggregate, images, image_table, Strings(study_codes.names))
    logger.info("%s: %d image(s) in %d stud(ies)", scores, len(image_table), len(study_table))
    return Worklist(scores, next(iter(model_ids), ""), image_table, study_table, images, studies)


def _studies(scores: Path, aggregate: str, images: Images, t: Table,
             keys: Strings) -> tuple[Studies, Table]:
    """The study table: the aggregate from ``scores.studies.csv`` (else computed as `score` does),
    status ok when any image is ok, else the first image's; views joined; first image's maker."""
    n = len(keys)
    order = np.argsort(images.study, kind="stable")
    starts = np.searchsorted(images.study[order], np.arange(n + 1))
    side = studies_path(scores)
    by_uid = {r["study_uid"]: (r["aggregate"], r["probability_calibrated"], r["decision_fibrosis"])
              for r in (iter_csv(side) if side.is_file() else
                        ({k: str(v) for k, v in s.to_csv().items()} for s in study_rows(scores, aggregate)))}
    uids, names, reasons = Strings(), Strings(), Strings()
    aggs: list[str] = []
    prob = np.full(n, np.nan, np.float32)
    decision = np.full(n, -1, np.int8)
    status = np.zeros(n, np.int8)
    n_frontal = np.zeros(n, np.int32)
    view, made = np.zeros(n, np.int16), np.zeros(n, np.int16)
    views = _Codes()
    for s in range(n):
        members = order[starts[s]:starts[s + 1]]
        first = int(members[0])
        uid = images.study_uid[first]
        uids.append(uid)
        names.append(f"study {keys[s][:8]} ({len(members)} image{'s' * (len(members) > 1)})")
        ok = [int(i) for i in members if t.status[i] == 0]
        status[s] = 0 if ok else t.status[first]
        reasons.append("" if ok else t.reasons[first])
        view[s] = views("+".join(sorted({t.views[t.view[i]] or "?" for i in members})))
        made[s] = t.manufacturer[first]
        n_frontal[s] = sum(t.views[t.view[i]] in FRONTAL_VIEWS for i in ok)
        agg, p, d = by_uid.get(uid, ("", "", "")) if uid else ("", "", "")
        aggs.append(sys.intern(agg))
        if p:
            prob[s], decision[s] = float(p), int(d)
    table = Table(keys, names, prob, decision, status, reasons, view, views.names, made, t.manufacturers)
    return Studies(uids, aggs, n_frontal, starts.astype(np.int64), order.astype(np.int64)), table
