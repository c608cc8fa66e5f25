"""`fibrosis report`: the validation report (HTML + PDF of the same content + metrics.json).

The content is built once as a list of neutral blocks (headings, paragraphs, tables,
figures) from ``RUN/eval/<split>/metrics.json`` (and ``RUN/tune.json`` for a tune run);
``report_render`` turns the same blocks into a self-contained HTML page and a PDF, so the
two cannot disagree. Sections come in the order a reader needs them (:data:`SECTIONS`):
what was found, on which data, how well calibrated, at which thresholds, for whom, then
how the model was made and chosen, its limits, and the appendices. Only aggregates, hashes
and settings go in: no patient keys, file paths or other identifiers from the manifest.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fibrosis import artefacts
from fibrosis.io import atomic_write_bytes, read_text
from fibrosis.evaluate.reader import ReaderVsModel
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.model.cam import PANELS_FILE, load_panels
from fibrosis.report import plots
from fibrosis.report.card import model_card
from fibrosis.report import reader
from fibrosis.report.render import Block, render_html, render_pdf
from fibrosis.report.sections import appendix, checklist, data, decisions, results, selection, subgroups, summary
from fibrosis.report.sections.context import Context
from fibrosis.evaluate.tune_record import TuneResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Section:
    key: str  # what other sections and the checklist refer to
    title: str  # "{split}" is replaced by the reported split
    blocks: Callable[[Context], list[Block]]
    appendix: bool = False  # lettered A, B, ... after the numbered sections
    # in the PDF, start on a page of its own (always, or where this says so for the run)
    new_page: bool | Callable[[Context], bool] = False
    shown: Callable[[Context], bool] = lambda ctx: True  # a section only some runs have


# The report's order. A new section is one line here.
SECTIONS: tuple[Section, ...] = (
    Section("summary", "Summary", summary.summary),
    Section("data", "Data and participant flow", data.data_blocks),
    Section("results", "Results on the {split} split", results.discrimination_blocks),
    Section("calibration", "Calibration", results.calibration_blocks),
    Section("decisions", "Operating points and decision curve", decisions.operating_blocks),
    Section("subgroups", "Subgroups", subgroups.subgroup_blocks),
    # a page of its own: its figure fills a page, and its heading must not stay behind without it
    Section("gradcam", "Grad-CAM examples", subgroups.gradcam_blocks, new_page=lambda ctx: "gradcam" in ctx.have),
    Section("model", "Model and selection", selection.model_blocks),
    Section("limitations", "Intended use and limitations (model card)", model_card),
    Section("reproducibility", "Reproducibility", appendix.reproducibility_blocks, appendix=True),
    Section("checklist", "Reporting checklist (TRIPOD+AI, CLAIM, STARD)", checklist.checklist_blocks, appendix=True),
    Section("reader", "Reader versus model",
            lambda ctx: reader.reader_blocks(ctx.reader, reader.FIGURE in ctx.have) if ctx.reader else [],
            appendix=True, shown=lambda ctx: ctx.reader is not None),
    # a page of its own: its tail never strands a few lines of settings on a page alone
    Section("configuration", "Configuration", appendix.configuration_blocks, appendix=True, new_page=True),
)


def _labels(sections: tuple[Section, ...]) -> dict[str, str]:
    out, n, letter = {}, 0, 0
    for s in sections:  # the shown ones
        if s.appendix:
            out[s.key] = f"appendix {chr(ord('A') + letter)}"
            letter += 1
        else:
            n += 1
            out[s.key] = f"section {n}"
    return out


def build_blocks(m: EvaluationResult, have: set[str], tune: TuneResult | None = None,
                 reader_result: ReaderVsModel | None = None) -> list[Block]:
    """The report as neutral blocks (same content for HTML and PDF); ``tune``: RUN/tune.json;
    ``reader_result``: `fibrosis review`'s RUN/reader/reader.json."""
    probe = Context(m, tune, frozenset(have), {}, reader_result)
    sections = tuple(s for s in SECTIONS if s.shown(probe))
    refs = _labels(sections)
    ctx = Context(m, tune, frozenset(have), refs, reader_result)
    blocks = summary.title_blocks(ctx)
    for s in sections:
        label = refs[s.key].split(" ", 1)[1]
        title = s.title.format(split=m.split)
        blocks.append({"type": "h2", "text": f"Appendix {label}: {title}" if s.appendix else f"{label}. {title}",
                       **({"new_page": True} if (s.new_page(ctx) if callable(s.new_page) else s.new_page) else {})})
        blocks += s.blocks(ctx)
    return blocks


def make_figures(m: EvaluationResult, eval_dir: Path, tune: TuneResult | None = None,
                 reader_result: ReaderVsModel | None = None) -> dict[str, bytes]:
    disc, cal, ops = m.discrimination, m.calibration, m.operating_points
    ctx = Context(m, tune)
    figs = {"flow": plots.png_bytes(plots.flow_figure(data.participant_flow(m, ctx.pooled_development))),
            "roc": plots.png_bytes(plots.roc_figure(disc, ops)),
            "pr": plots.png_bytes(plots.pr_figure(disc.pr)),
            "reliability": plots.png_bytes(plots.reliability_figure(cal.before, cal.after, cal.method)),
            "histogram": plots.png_bytes(plots.histogram_figure(cal.before.histogram, cal.after.histogram, ops))}
    if m.decision_curve:
        figs["decision"] = plots.png_bytes(plots.decision_figure(m.decision_curve))
    g = m.gradcam
    if g and (eval_dir / PANELS_FILE).is_file():
        panels, per_kind = load_panels(eval_dir / PANELS_FILE)
        figs["gradcam"] = plots.png_bytes(plots.gradcam_figure(panels, g.threshold, per_kind))
    if tune:
        figs["tune_roc"] = plots.png_bytes(plots.tune_roc_figure([a.to_json() for a in tune.arms], tune.chosen))
    if reader_result is not None and reader.has_figure(reader_result):
        figs[reader.FIGURE] = plots.png_bytes(reader.reader_figure(reader_result))
    return figs


def write_report(run: str | Path, out: str | Path | None = None, split: str = "test") -> Path:
    """Write ``out`` (default ``reports/<run name>/``): report.html, report.pdf, metrics.json."""
    run = Path(run)
    eval_dir = run / "eval" / split
    mpath = eval_dir / artefacts.METRICS
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no evaluation of split {split!r}; run `fibrosis evaluate "
                                f"--run {run} --cache CACHE --split {split}` first")
    m = EvaluationResult.read(mpath)
    out = Path(out) if out is not None else Path("reports") / run.name
    out.mkdir(parents=True, exist_ok=True)
    tune = TuneResult.read(run / artefacts.TUNE) if (run / artefacts.TUNE).is_file() else None  # `fibrosis tune`
    reader_result = reader.read_reader(run)  # `fibrosis review`'s reader vs model, when a reader labelled
    figs = make_figures(m, eval_dir, tune, reader_result)
    blocks = build_blocks(m, set(figs), tune, reader_result)
    title = f"Fibrosis classifier validation: {m.run_name or run.name}"
    page = render_html(blocks, figs, title)
    atomic_write_bytes(out / artefacts.REPORT_HTML, page.encode("utf-8"))  # never left truncated
    atomic_write_bytes(out / artefacts.METRICS, read_text(mpath).encode("utf-8"))
    render_pdf(page, out / artefacts.REPORT_PDF,  # last: HTML and metrics stand even if the PDF engine fails
               page_banner=None if m.pretrained else "NOT ImageNet-pretrained")
    logger.info("report: %s, %s, %s", out / artefacts.REPORT_HTML, out / artefacts.REPORT_PDF, out / artefacts.METRICS)
    return out
