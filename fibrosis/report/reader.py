"""The report's "Reader versus model" appendix, from ``RUN/reader/reader.json`` (written by
`fibrosis review` when it stops: :func:`fibrosis.evaluate.reader.reader_vs_model`). Absent file,
no appendix. Drawing and wording only: every number comes from that file."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from fibrosis import artefacts
from fibrosis.evaluate.operating import BinaryMetrics, Proportion
from fibrosis.evaluate.reader import Agreement, ReaderVsModel
from fibrosis.report import plots
from fibrosis.report.format import NA, estimate, proportion
from fibrosis.report.render import Block

FIGURE = "reader_roc"


def reader_json(run: Path) -> Path:
    return run / artefacts.READER_DIR / artefacts.READER_VS_MODEL


def _pm(p: Proportion | None) -> str:
    """'83.3% (5/6; 43.6% to 97.0%)', or 'n/a'."""
    return proportion(p) if p else NA


def _auc(part: Agreement | None) -> str:
    if part is None or part.auc is None:
        return f"{NA} ({part.why})" if part and part.why else NA
    return estimate(part.auc.auc, part.auc.ci, "auc") + " (DeLong)"


def _sens_spec(m: BinaryMetrics | None) -> str:
    return _pm(m.sensitivity if m else None) + " / " + _pm(m.specificity if m else None)


def read_reader(run: Path) -> ReaderVsModel | None:
    """The reader-vs-model record of ``run``, or None when no reader has labelled its scores."""
    path = reader_json(run)
    return ReaderVsModel.read(path) if path.is_file() else None


@plots.styled
def reader_figure(res: ReaderVsModel) -> Figure:
    """The model's ROC curve against the reference standard, its operating point, and the reader as
    a point with Wilson CIs on both axes."""
    t = res.against_truth
    assert t is not None and t.roc is not None and t.auc is not None, "drawn only when has_figure()"
    fig = plots.figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.plot(t.roc.fpr, t.roc.tpr, color=plots.BLUE, lw=2, label=f"model ROC  AUC {t.auc.auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color=plots.GREY, lw=1, label="chance")
    se, sp = (t.model.sensitivity, t.model.specificity) if t.model else (None, None)
    if se and sp and se.value is not None and sp.value is not None:
        ax.plot(1 - sp.value, se.value, "o", ms=7, mfc=plots.VERMILLION, mec="black", mew=0.6,
                label=f"model at threshold {res.threshold:.3f}")
    rse, rsp = (t.reader.sensitivity, t.reader.specificity) if t.reader else (None, None)
    if rse and rsp and rse.value is not None and rsp.value is not None and rse.ci and rsp.ci:
        x, y = 1 - rsp.value, rse.value
        (se_lo, se_hi), (sp_lo, sp_hi) = rse.ci, rsp.ci
        ax.errorbar([x], [y], xerr=[[x - (1 - sp_hi)], [(1 - sp_lo) - x]],
                    yerr=[[y - se_lo], [se_hi - y]], fmt="D", ms=7, color=plots.GREEN, mec="black",
                    capsize=3, label=f"reader ({int(100 * res.level)}% CIs)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)")
    ax.grid(alpha=0.3, lw=0.5)
    ax.set_title(f"Reader vs model (n={t.n}, {t.n_pos} positive)")
    ax.legend(loc="lower right")
    return fig


def reader_blocks(res: ReaderVsModel, have_figure: bool) -> list[Block]:
    """The appendix's text, table and (when drawn: :func:`reader_figure`) figure."""
    level = int(round(100 * res.level))
    t, r = res.against_truth, res.against_reader
    text = (f"A reader labelled {res.n_cases} scored image(s) in `fibrosis review` ({res.n_reader_positive} "
            f"present, {res.n_uncertain} uncertain; a study's label counts for each of its images, and "
            f"uncertain is no call: left out below). Scores: {res.scores or 'not recorded'}. Intervals are "
            f"{level}% (Wilson for proportions, DeLong for AUCs). These are the cases the reader chose to label, "
            "not a random sample: read them as a check of agreement, not as a measure of performance.")
    rows = [["model AUC against the reader's labels", _auc(r)],
            ["model sensitivity / specificity against the reader", _sens_spec(r.model)]]
    if t is not None:
        rows = [["model AUC against the reference standard", _auc(t)],
                ["model sensitivity / specificity (reference)", _sens_spec(t.model)],
                ["reader sensitivity / specificity (reference)", _sens_spec(t.reader)], *rows]
    blocks: list[Block] = [{"type": "p", "text": text},
                           {"type": "table", "caption": f"Reader and model on the same cases (threshold "
                                                        f"{res.threshold:.3f})",
                            "header": ["measure", f"value ({level}% CI)"], "rows": rows}]
    notes = [w for part in (t, r) if part for w in part.warnings or ()]
    if notes:
        blocks += [{"type": "h3", "text": "Read with care"}, {"type": "list", "items": notes}]
    if have_figure:
        blocks.append({"type": "figure", "key": FIGURE, "caption": "The model's ROC curve against the reference "
                       "standard on the reader's cases, its operating point, and the reader's sensitivity and "
                       "specificity as a point with its confidence intervals."})
    elif t is None:
        blocks.append({"type": "p", "style": "note", "text": "No reference standard was given (`fibrosis review "
                       "--truth LABELS_CSV`): the reader's own sensitivity and specificity cannot be measured."})
    return blocks


def has_figure(res: ReaderVsModel) -> bool:
    t = res.against_truth
    return t is not None and t.auc is not None and t.roc is not None
