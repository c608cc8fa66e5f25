"""Appendix "Reporting checklist": TRIPOD+AI (2024), CLAIM (2024) and STARD 2015 topics, each
mapped to the section of this report that answers it, or to why the data cannot answer it.

Items are named by topic, not number, because the three checklists number the same topic
differently; a team fills in the item numbers of the form its journal asks for.
"""
from __future__ import annotations

from fibrosis.report.sections.context import Block, Context

# (checklists, topic, section key or None, what it covers there / why it is not available)
ITEMS: tuple[tuple[str, str, str | None, str], ...] = (
    ("TRIPOD+AI, CLAIM", "Intended use and clinical role", "limitations", "intended use, out of scope"),
    ("TRIPOD+AI, CLAIM, STARD", "Data source and setting", "data", "source as set in evaluate.data_source"),
    ("TRIPOD+AI, CLAIM, STARD", "Dates of data collection", None,
     "the cache keeps no acquisition dates: state them with the source"),
    ("TRIPOD+AI, CLAIM, STARD", "Eligibility criteria", "data", "ingest settings; exclusions by reason"),
    ("CLAIM", "Data preprocessing and anonymisation", "reproducibility",
     "ingest settings in the configuration; patient keys are salted hashes, none shown"),
    ("TRIPOD+AI, CLAIM, STARD", "Reference standard (ground truth): definition and source", "data",
     "the label column; who labelled and how is a property of the data set"),
    ("CLAIM, STARD", "Annotators, their qualifications and inter-reader agreement", None,
     "not in the data: labels arrive as one column, without readers or agreement"),
    ("TRIPOD+AI, CLAIM", "Missing data and how it was handled", "data", "baseline table; no imputation"),
    ("TRIPOD+AI, CLAIM", "Data partitions, level of partitioning, and their use", "data",
     "patient-level split; flow diagram says what each split was used for"),
    ("TRIPOD+AI", "Sample size", "data",
     "images and positives per split; no sample-size calculation: the data set sets the size"),
    ("TRIPOD+AI, CLAIM", "Model description, initialisation (transfer learning), training", "model", ""),
    ("TRIPOD+AI, CLAIM", "Model selection and hyperparameter tuning", "model",
     "arms, cross-validation and the multiplicity caveat (tune runs); the preset otherwise"),
    ("CLAIM", "Ensembling", "model", "tune: fold models as one ensemble, when chosen"),
    ("TRIPOD+AI", "Class imbalance", "reproducibility", "train.pos_weight / sampler in the configuration"),
    ("TRIPOD+AI, CLAIM, STARD", "Performance measures with uncertainty", "results",
     "AUC (DeLong and bootstrap CIs), sensitivity, specificity, PPV, NPV (Wilson CIs)"),
    ("TRIPOD+AI", "Calibration", "calibration", "reliability, ECE, Brier, intercept and slope"),
    ("TRIPOD+AI", "Clinical utility (decision curve)", "decisions", "net benefit vs treat all / none"),
    ("STARD, CLAIM", "Threshold: pre-specified or chosen, and on which data", "decisions",
     "chosen on the fit data, frozen before the reported split"),
    ("TRIPOD+AI, STARD, CLAIM", "Participant flow", "data", "flow diagram"),
    ("TRIPOD+AI, STARD, CLAIM", "Baseline characteristics (demographics, by split and label)", "data",
     "age, sex, view, manufacturer, missing values"),
    ("TRIPOD+AI, CLAIM", "Fairness: performance in subgroups", "subgroups", "sex, age band, view, manufacturer"),
    ("CLAIM", "Explainability", "gradcam", "Grad-CAM of confident and missed cases"),
    ("CLAIM", "Failure analysis", "gradcam", "false positives and false negatives shown; no systematic review"),
    ("TRIPOD+AI, CLAIM", "Internal or external evaluation", "summary",
     "held-out split of the same source (internal) or frozen evaluation of another cache (external)"),
    ("TRIPOD+AI, CLAIM", "Limitations and generalisability", "limitations", ""),
    ("TRIPOD+AI, CLAIM", "Code, software versions and reproducibility", "reproducibility",
     "hashes, seeds, package versions, configuration"),
    ("TRIPOD+AI, CLAIM", "Ethics approval, funding, registration, protocol, patient involvement", None,
     "not known to the software: the study team reports them"),
)


def checklist_blocks(ctx: Context) -> list[Block]:
    rows = []
    for standards, topic, key, note in ITEMS:
        where = ctx.ref(key) if key else "not available from the data"
        rows.append([topic, standards, where, note or "see there"])
    return [{"type": "p", "text": "Where this report answers the topics of TRIPOD+AI (2024), CLAIM (2024) and "
                                  "STARD 2015. Topics are named, not numbered: the checklists number them "
                                  "differently; fill in the numbers of the form your journal asks for. Topics "
                                  "about the study rather than the data (objectives, ethics, funding) are the "
                                  "team's to write."},
            {"type": "table", "caption": "Reporting checklist", "header": ["topic", "checklists", "where",
                                                                           "what / why not"], "rows": rows}]
