"""Section "Data and participant flow": source, eligibility, reference standard, missing data,
the STARD flow (inputs -> excluded at ingest -> splits -> analysed) and baseline characteristics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.summary import PolarityQa, SplitCounts
from fibrosis.report.format import pct
from fibrosis.report.sections.context import Block, Context

MAX_REASONS = 6  # exclusion reasons named in the flow diagram; the table lists them all
ROLES = {"train": "trained the model", "val": "early stopping (best epoch)", "calib": "calibration only"}


def qa_line(qa: PolarityQa | None) -> str:
    """The polarity QA of the cache in one line: policy, exclusions, images kept with a note."""
    if qa is None:
        return "not recorded"
    noted = ", ".join(f"{n} {flag}" for flag, n in qa.n_flagged.items()) or "none"
    return (f"ingest.polarity_qa={qa.polarity_qa}: {qa.n_excluded} input(s) excluded by the polarity "
            f"check (inverted or unsure display); images in the cache with a QA note: {noted}")


def _eligibility(m: EvaluationResult) -> str:
    # the run's config as plain data: read for a few ingest settings
    ing = ((m.run.config if m.run else {}).get("ingest") or {})
    if not ing:
        return "not recorded"
    parts = [f"modality {', '.join(ing.get('allowed_modalities') or []) or 'any'}",
             "body part " + ", ".join(b or "(absent)" for b in ing.get("allowed_body_parts") or []),
             f"not the views {', '.join(ing.get('excluded_views') or [])}",
             f"at least {ing.get('min_side')} px on the short side",
             "no description naming another body part or a non-human subject"]
    return "Images accepted by ingest (settings of the model's run): " + "; ".join(parts) + "."


def _stated(ecfg: dict[str, Any], key: str, what: str = "") -> str:
    """The team's statement of a study fact the data cannot tell, or where to state it."""
    text = ecfg.get(key)
    if text:
        return str(text)
    return f"not stated ({what + '; ' if what else ''}set evaluate.{key} in the configuration)"


def data_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    d, ecfg = m.data, m.evaluate_config
    p = d.provenance
    items = [
        ("Source", p.source if p else "not recorded"),
        ("Setting", _stated(ecfg, "data_setting")),
        ("Dates", _stated(ecfg, "data_dates", "the cache keeps no acquisition dates")),
        ("Eligibility", _eligibility(m)),
        ("Reference standard", f"label column {p.labels if p else 'not recorded'}, one binary label per image: "
                               + _stated(ecfg, "reference_standard", "who labelled, how, and blinded to what")),
        ("Missing data", "images without a label are not evaluated (evaluate refuses them); missing age, sex, "
                         "view or manufacturer are counted in the baseline table below and form an "
                         "'unknown' subgroup; nothing is imputed"),
        ("Split method", d.split_method or "not recorded"),
        ("Polarity QA", qa_line(p.qa if p else None)),
        ("Manifest sha256", d.manifest_sha256 or "not recorded"),
    ]
    blocks: list[Block] = [{"type": "kv", "items": items}]
    if "flow" in ctx.have:
        blocks.append({"type": "figure", "key": "flow", "caption": flow_caption(ctx)})
    exc = p.exclusions if p else []
    if p and exc:
        blocks.append({"type": "table", "caption": f"Inputs excluded at ingest ({p.n_excluded})",
                       "header": ["kind", "reason", "count"],
                       "rows": [[e.kind, e.reason, e.count] for e in exc]})
    else:
        blocks.append({"type": "p", "text": "No inputs were excluded at ingest."})
    return blocks + baseline_blocks(ctx)


def flow_caption(ctx: Context) -> str:
    text = "Participant flow (STARD): inputs read, excluded at ingest by reason, images per split, images analysed."
    if ctx.pooled_development:
        text += (" `fibrosis tune` pooled train and val into one development set: models were chosen by "
                 "patient-level cross-validation on it and calibration and thresholds fitted on its out-of-fold "
                 "predictions; there was no separate validation set.")
    return text


@dataclass(frozen=True, slots=True)
class FlowColumn:
    """One box of the flow diagram's split row."""
    title: str
    n: int
    n_pos: int
    role: str  # what these images did, in words
    analysed: bool  # the reported split


@dataclass(frozen=True, slots=True)
class ParticipantFlow:
    """The boxes of the STARD flow diagram, in words."""
    inputs: int
    excluded: int
    reasons: list[str]
    cache: str
    columns: list[FlowColumn]
    analysed: str


def participant_flow(m: EvaluationResult, pooled: bool) -> ParticipantFlow:
    """The boxes of the flow diagram, in words (drawn by :func:`fibrosis.report.plots.flow_figure`)."""
    d, p = m.data, m.data.provenance
    # the evaluated split stands for the cache when the cache was not read (no provenance)
    total = p.total if p else SplitCounts(d.n, d.n_pos, d.prevalence, d.n_patients)
    n_exc = p.n_excluded if p else 0
    exc = p.exclusions if p else []
    reasons = [f"{e.count} {e.reason}" for e in exc[:MAX_REASONS]]
    if len(exc) > MAX_REASONS:
        reasons.append(f"{sum(e.count for e in exc[MAX_REASONS:])} for {len(exc) - MAX_REASONS} other reasons")
    splits = p.splits if p else {}
    columns: list[FlowColumn] = []
    if m.split == "all" or not splits:
        columns.append(FlowColumn("all images (no split)", total.n, total.n_pos,
                                  "evaluated with frozen calibration and thresholds", True))
    else:
        dev = [s for s in ("train", "val") if s in splits]
        if pooled and dev:
            n, n_pos = sum(splits[s].n for s in dev), sum(splits[s].n_pos for s in dev)
            columns.append(FlowColumn("development (" + " + ".join(dev) + " pooled)", n, n_pos,
                                      "cross-validated model selection; calibration and thresholds fitted out of fold",
                                      False))
        for name, s in splits.items():
            if pooled and name in dev:
                continue
            role = "not part of this evaluation" if m.frozen else ROLES.get(name, "not used")
            if name == m.fit_split and not m.frozen:
                role = ("early stopping; calibration and thresholds" if name == "val"
                        else "calibration and thresholds")
            if name == m.split:
                role = "reported: analysed"
            columns.append(FlowColumn(name, s.n, s.n_pos, role, name == m.split))
    return ParticipantFlow(total.n + n_exc, n_exc, reasons,
                           f"{total.n} images of {total.n_patients} patients, {total.n_pos} with fibrosis", columns,
                           f"analysed: {d.n} images ({d.n_pos} with fibrosis, {d.n - d.n_pos} without); "
                           "none excluded from analysis")


def _count(k: int, n: int) -> str:
    return f"{k} ({pct(k / n if n else None)})"


def baseline_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    b = m.baseline
    if not b:
        why = ("metrics.json schema 1" if m.schema < 2 else "the manifest rows were not at hand")
        return [{"type": "p", "style": "warn", "text": f"Baseline characteristics: not computed for this evaluation "
                                                       f"({why}); re-run `fibrosis evaluate` to add them."}]
    cols = b.columns
    dev = ctx.pooled_development
    header = ["characteristic"] + [
        (f"{c.name} ({c.within})" if c.by == "label"
         else f"development: {c.name}" if dev and c.name in ("train", "val") else c.name) for c in cols]
    rows: list[list[Any]] = [["images", *(c.n for c in cols)], ["patients", *(c.n_patients for c in cols)]]
    rows.append(["age, years: median (IQR)", *(
        "n/a" if a.median is None or a.q1 is None or a.q3 is None else f"{a.median:.0f} ({a.q1:.0f} to {a.q3:.0f})"
        for a in b.age)])
    rows.append(["age: missing", *(_count(a.missing, c.n) for a, c in zip(b.age, cols))])
    names = {"sex": "sex", "view_position": "view", "manufacturer": "manufacturer"}
    for cat in b.categorical:
        for level in cat.levels:
            rows.append([f"{names.get(cat.attribute, cat.attribute)}: {level.value}",
                         *(_count(k, c.n) for k, c in zip(level.counts, cols))])
    return [{"type": "table", "caption": "Baseline characteristics per split and, on the reported split, per "
                                         "label; n (% of the column)", "header": header, "rows": rows,
             }]
