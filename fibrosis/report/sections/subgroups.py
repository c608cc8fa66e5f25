"""Sections "Subgroups" and "Grad-CAM examples"."""
from __future__ import annotations

from fibrosis.evaluate.operating import SubgroupRow
from fibrosis.report.format import NA, estimate, pct
from fibrosis.report.sections.context import Block, Context


def subgroup_auc(g: SubgroupRow) -> str:
    """A subgroup's AUC with its interval; none without both classes, never a number from ties."""
    if g.n_pos in (0, g.n) or g.auc is None:
        return f"{NA}: one class only"
    return estimate(g.auc, g.ci, "auc")


def subgroup_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    cfg = m.evaluate_config
    rows, muted = [], []
    for g in m.subgroups:
        rows.append([g.attribute, g.value, g.n, g.n_pos, pct(g.prevalence), subgroup_auc(g),
                     "; ".join(g.flags) or "none"])
        muted.append(g.small)
    if not rows:
        return [{"type": "p", "text": "No subgroup attributes were configured (evaluate.subgroups)."}]
    return [{"type": "p", "text": f"AUC with DeLong {ctx.ci} per subgroup of the {m.split} split. Groups with "
                                  f"fewer than {cfg['min_subgroup_n']} images or fewer than "
                                  f"{cfg['min_subgroup_positives']} positives (or negatives) are greyed out and "
                                  "flagged: their AUC is shown for completeness and must not be read as a "
                                  "difference between groups. A group holding one class only has no AUC."},
            {"type": "table", "caption": "Subgroups", "header": ["attribute", "value", "n", "fibrosis",
                                                                "prevalence", f"AUC ({ctx.ci})", "flag"],
             "rows": rows, "muted": muted}]


def gradcam_blocks(ctx: Context) -> list[Block]:
    if "gradcam" not in ctx.have:
        return [{"type": "p", "style": "warn", "text": "Grad-CAM panels were not produced for this run."}]
    g = ctx.m.gradcam
    text = ("Most confident true positives, false positives and most confidently missed fibrosis cases at the "
            "Youden threshold. Red marks image regions that raised the fibrosis score. This is a plausibility "
            "check (is the model looking at the lungs rather than markers, tubes or borders?), not a "
            "localisation of disease. Images are shown without identifiers; check for burned-in text before "
            "sharing the report outside your institution.")
    if g is None:  # a figure drawn without its record: nothing to say about it
        return [{"type": "p", "text": text}, {"type": "figure", "key": "gradcam"}]
    if g.missing_kinds:
        text += f" No case of kind {', '.join(g.missing_kinds)} exists at this threshold."
    return [{"type": "p", "text": text}, {"type": "figure", "key": "gradcam", "caption": g.method}]
