"""What every section reads: the evaluation record, the tune record, the figures at hand, and
the numbers of the other sections for cross-references."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fibrosis.evaluate.reader import ReaderVsModel
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.run import OOF_FIT
from fibrosis.report.format import ci_label, pct
from fibrosis.evaluate.tune_record import TuneResult

Block = dict[str, Any]


@dataclass(frozen=True)
class Context:
    m: EvaluationResult
    tune: TuneResult | None = None
    have: frozenset[str] = frozenset()  # figure keys that were drawn
    refs: dict[str, str] = field(default_factory=dict)  # section key -> "section 3" / "appendix A"
    reader: ReaderVsModel | None = None  # RUN/reader/reader.json of `fibrosis review`, when a reader labelled

    def ref(self, key: str) -> str:
        return self.refs.get(key, "below")

    @property
    def ci(self) -> str:
        """'95% CI' (or the configured evaluate.ci_level) for every interval label."""
        return ci_label(self.m.evaluate_config.get("ci_level", 0.95))

    @property
    def out_of_fold(self) -> bool:
        """Calibration and thresholds were fitted by `fibrosis tune` on pooled out-of-fold logits."""
        return self.m.fit_split == OOF_FIT

    @property
    def pooled_development(self) -> bool:
        """The evaluated cache's train and val splits were pooled as this model's development data
        (not so for a frozen evaluation, whose cache's splits did not train the model)."""
        return self.out_of_fold and not self.m.frozen


def fitted_where(m: EvaluationResult) -> str:
    """Where the calibration and thresholds came from, in words: the one statement the summary,
    the calibration and operating-point sections and the model card all make."""
    fit = m.data.fit
    n = f"{fit.n} images, {fit.n_pos} with fibrosis" if fit.n else "size not recorded"
    if m.fit_split == OOF_FIT:
        where = ("fitted by `fibrosis tune` on the pooled out-of-fold predictions of the development data "
                 f"(train and val pooled, {n}; each image predicted by a fold model that did not train on it)")
    else:
        where = f"fitted on the {m.fit_split} split only ({n})"
    if m.frozen:
        return f"stored with the model ({where}) and applied unchanged: nothing was refitted on these data"
    return f"{where}, then frozen and applied unchanged to the {m.split} split"


def prevalence_text(n: int, n_pos: int, prevalence: float | None) -> str:
    return f"{n} images, {n_pos} with fibrosis (prevalence {pct(prevalence)})"
