"""Appendix "Reporting checklist": every TRIPOD+AI (2024) item, with the STARD 2015 item that
asks the same, mapped to the section of this report that answers it -- or to who must answer
it and why the data cannot. The CLAIM (2024) topics TRIPOD+AI does not cover follow, by topic.

Why TRIPOD+AI carries the numbering: it is the one of the three written for prediction
models of any kind, and every one of its items has a row here, so a team sees the gaps as
well as the answers. CLAIM is named by topic because its 2024 update renumbered its items;
the topic names are its headings.
"""
from __future__ import annotations

from dataclasses import dataclass

from fibrosis.report.sections.context import Block, Context

TEAM = "team"  # the study team writes it: a property of the study, not of the data or the model
NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Item:
    number: str  # TRIPOD+AI item ("5b"); "" for a CLAIM-only topic
    topic: str
    where: str  # a section key of the report, TEAM or NOT_APPLICABLE
    note: str  # what that section holds, or why the item is not answered here
    stard: str = ""  # STARD 2015 item(s) asking the same
    # evaluate config key the team states it with; unset -> the item reads "not stated"
    stated_by: str = ""


TRIPOD_AI: tuple[Item, ...] = (
    Item("1", "Title", TEAM, "the manuscript's; this report's title names the model and the split", "1"),
    Item("2", "Abstract", TEAM, "TRIPOD+AI for Abstracts; the summary (section 1) has the numbers", "2"),
    Item("3a", "Healthcare context and rationale", TEAM, "", "3"),
    Item("3b", "Target population, intended purpose and users", "limitations", "intended use, out of scope", "3"),
    Item("3c", "Known health inequalities", TEAM, "performance by sex and age band is in the subgroups section"),
    Item("4", "Objectives: development, evaluation or both", TEAM,
         "the summary says whether this split is internal or external", "4"),
    Item("5a", "Data sources (development and evaluation)", "data", "evaluate.data_source; splits in the flow diagram",
         "6", stated_by="data_source"),
    Item("5b", "Dates of the data", "data", "as stated by the team", "8", stated_by="data_dates"),
    Item("6a", "Setting, number and location of centres", "data", "as stated by the team", "8",
         stated_by="data_setting"),
    Item("6b", "Eligibility criteria", "data", "ingest's acceptance rules; exclusions by reason", "6, 7"),
    Item("6c", "Treatments received", NOT_APPLICABLE, "a diagnostic image model: no treatment enters it"),
    Item("7", "Data preparation and quality checking", "data",
         "one pixel pipeline for every input; polarity QA; exclusions by reason"),
    Item("8a", "Outcome (reference standard): definition and how assessed", "data", "as stated by the team",
         "10b, 11", stated_by="reference_standard"),
    Item("8b", "Outcome assessors: qualifications", "data", "as stated by the team", "10b",
         stated_by="reference_standard"),
    Item("8c", "Blinding of outcome assessment", "data", "as stated by the team", "13b",
         stated_by="reference_standard"),
    Item("9a", "Choice of predictors", "model", "the image alone; no clinical variables"),
    Item("9b", "Definition of predictors", "reproducibility", "preprocessing and input size recorded with the model",
         "10a"),
    Item("9c", "Predictor assessors", NOT_APPLICABLE, "no predictor is read by a person"),
    Item("10", "Sample size", "data", "images and positives per split; no sample-size calculation: the data set "
                                      "sets the size, and the intervals show what it supports", "18"),
    Item("11", "Missing data", "data", "how each missing field is handled; nothing imputed", "16"),
    Item("12a", "How the data were used; partitioning", "data", "patient-level split; the flow diagram gives each "
                                                                "split's role"),
    Item("12b", "Handling of predictors (rescaling, standardisation)", "reproducibility",
         "preprocessing settings recorded in the checkpoint"),
    Item("12c", "Model type, building steps, tuning, internal validation", "model",
         "the backbone, the freeze/unfreeze schedule, tune's cross-validation and its multiplicity caveat"),
    Item("12d", "Heterogeneity across clusters", "subgroups",
         "by manufacturer where recorded; the data record no centre, so no per-centre analysis"),
    Item("12e", "Performance measures and plots", "results", "discrimination here; calibration and decision "
                                                             "curve in their sections", "14"),
    Item("12f", "Model updating (recalibration)", "calibration", "the calibration map and the data it was fitted on"),
    Item("12g", "How predictions were calculated", "reproducibility",
         "the checkpoint (hash) with its preprocessing, calibration and thresholds; `fibrosis score`"),
    Item("13", "Class imbalance", "reproducibility", "train.pos_weight and the sampler in the configuration; "
                                                      "recalibrated after (section on calibration)"),
    Item("14", "Fairness", "subgroups", "performance by subgroup; no fairness constraint in training"),
    Item("15", "Model output and how thresholds were chosen", "decisions",
         "calibrated probability; thresholds chosen on the fit data, frozen before the reported split", "12a"),
    Item("16", "Differences between development and evaluation data", "data",
         "baseline table by split; an external evaluation shows only its own data"),
    Item("17", "Ethics approval and consent", TEAM, "not known to the software"),
    Item("18a", "Funding", TEAM, "", "30"),
    Item("18b", "Conflicts of interest", TEAM, ""),
    Item("18c", "Protocol", TEAM, "", "29"),
    Item("18d", "Registration", TEAM, "", "28"),
    Item("18e", "Data sharing", TEAM, "the manifest holds salted patient keys only, never identifiers"),
    Item("18f", "Code sharing", "reproducibility", "fibrosis is open source; version, package versions and "
                                                   "configuration recorded"),
    Item("19", "Patient and public involvement", TEAM, ""),
    Item("20a", "Participant flow", "data", "flow diagram: inputs, exclusions by reason, splits, analysed", "19"),
    Item("20b", "Characteristics (demographics, missing data)", "data", "baseline table by split and label", "20"),
    Item("20c", "Evaluation data compared with development data", "data", "baseline table by split"),
    Item("21", "Participants and events in each analysis", "data", "per split in the flow diagram; tune's pooled "
                                                                    "development data in the model section"),
    Item("22", "Full model specification", "reproducibility", "checkpoint hash, architecture, weights origin"),
    Item("23a", "Performance with confidence intervals, incl. subgroups", "results",
         "AUC (DeLong and bootstrap), sensitivity, specificity, PPV, NPV (Wilson); subgroups in their section", "24"),
    Item("23b", "Heterogeneity of performance across clusters", "subgroups", "as for 12d"),
    Item("24", "Model updating results", "calibration", "before and after calibration"),
    Item("25", "Interpretation, including fairness", TEAM, "the limitations section states what the numbers do "
                                                           "not show", "27"),
    Item("26", "Limitations", "limitations", "", "26"),
    Item("27a", "Handling of poor-quality or unavailable input", "limitations",
         "ingest and score refuse or exclude such inputs with a reason code, never silently"),
    Item("27b", "User interaction and expertise required", "limitations", "intended use: a research tool read "
                                                                          "by clinicians"),
    Item("27c", "Next steps for research", TEAM, ""),
)

CLAIM_ONLY: tuple[Item, ...] = (
    Item("", "De-identification", "reproducibility", "patient keys are salted hashes; no identifier is written"),
    Item("", "Annotation tools and inter-reader variability", NOT_APPLICABLE,
         "labels arrive as one column, without readers or agreement; `fibrosis review` records one reader"),
    Item("", "Initialisation of model parameters (transfer learning)", "model", "ImageNet weights and their origin"),
    Item("", "Ensembling", "model", "tune: the chosen arm's fold models as one ensemble"),
    Item("", "Robustness or sensitivity analysis", "subgroups", "subgroups only; no perturbation analysis"),
    Item("", "Explainability and how it was checked", "gradcam", "Grad-CAM of confident and missed cases; not "
                                                                 "validated against annotations"),
    Item("", "Failure analysis of misclassified cases", "gradcam",
         "false positives and negatives shown; no systematic review"),
    Item("", "Validation on external data", "summary", "internal (held-out split of the same source) or external "
                                                       "(frozen evaluation of another cache)"),
)


def _where(ctx: Context, item: Item) -> tuple[str, str]:
    """(where, note) of one item for this report."""
    if item.where == TEAM:
        return "the study team", item.note or "a property of the study, not of the data"
    if item.where == NOT_APPLICABLE:
        return "not available from the data", item.note
    if item.stated_by and not ctx.m.evaluate_config.get(item.stated_by):
        return "not stated", f"set evaluate.{item.stated_by} so the report states it"
    if item.where not in ctx.refs:  # a section this run does not have (e.g. no Grad-CAM)
        return "not in this report", f"its section is not shown for this evaluation; {item.note}"
    return ctx.ref(item.where), item.note or "see there"


def checklist_blocks(ctx: Context) -> list[Block]:
    rows = []
    for item in TRIPOD_AI:
        where, note = _where(ctx, item)
        rows.append([item.number, item.topic, where, note, item.stard])
    claim = []
    for item in CLAIM_ONLY:
        where, note = _where(ctx, item)
        claim.append([item.topic, where, note])
    return [{"type": "p", "text": "Every item of TRIPOD+AI (2024), with the STARD 2015 item asking the same, and "
                                  "where this report answers it. Items of the study rather than the data "
                                  "(objectives, ethics, funding) are the study team's to write; \"not stated\" "
                                  "marks what the team can state in the evaluate section of the configuration."},
            {"type": "table", "caption": "TRIPOD+AI (2024) and STARD 2015",
             "header": ["TRIPOD+AI", "topic", "where", "what / why not", "STARD 2015"], "rows": rows},
            {"type": "p", "text": "CLAIM (2024) topics not covered above, named by topic: its 2024 update "
                                  "renumbered the items."},
            {"type": "table", "caption": "CLAIM (2024), further topics",
             "header": ["topic", "where", "what / why not"], "rows": claim}]
