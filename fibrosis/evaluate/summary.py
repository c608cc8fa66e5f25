"""What a validation report must state about the data and the model, gathered at evaluation time.

Everything here is aggregate (counts, hashes, settings): no file paths, patient keys or
other identifiers, because it ends up in a report that leaves the hospital. Exclusion
reasons written by ingest may quote a file path; those are scrubbed before counting.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fibrosis import artefacts
from fibrosis.config import Config
from fibrosis.data.cache import manifest_hash
from fibrosis.data.manifest import ManifestRow
from fibrosis.data.pixels import POLARITY_EXCLUDED, excluded_flag, qa_flags
from fibrosis.evaluate.shape import arr, obj
from fibrosis.model.threshold import FitData
from fibrosis.io import file_sha256, package_versions, read_csv, read_text

if TYPE_CHECKING:  # the record's module imports torch, which `import fibrosis` does not need
    from fibrosis.model.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

# An absolute path (/a/b, C:\a\b; not glued to a word or digit as in
# "MONOCHROME1/MONOCHROME2") or any slash-separated token ending in a file extension.
_PATHLIKE = re.compile(r"(?<![\w)])(?:[A-Za-z]:)?(?:[\\/][^\s:;,'\"()]+)+"
                       r"|[^\s:;,'\"()]*[\\/][^\s:;,'\"()]*\.[A-Za-z0-9]{1,5}\b")


@dataclass(frozen=True, slots=True)
class SplitCounts:
    """Images, positives, prevalence (None with no images) and patients of one split or of all."""
    n: int
    n_pos: int
    prevalence: float | None
    n_patients: int

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "n_pos": self.n_pos, "prevalence": self.prevalence, "n_patients": self.n_patients}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "SplitCounts":
        d = obj(data, where, ("n", "n_pos", "prevalence", "n_patients"))
        return cls(d["n"], d["n_pos"], d["prevalence"], d["n_patients"])


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Inputs left out at ingest for one kind and (scrubbed) reason."""
    kind: str
    reason: str
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "count": self.count}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Exclusion":
        d = obj(data, where, ("kind", "reason", "count"))
        return cls(d["kind"], d["reason"], d["count"])


@dataclass(frozen=True, slots=True)
class PolarityQa:
    """What the pixel QA did about images that look inverted: the policy, images excluded, and
    images let in with a flag (per flag)."""
    polarity_qa: str
    n_excluded: int
    n_flagged: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"polarity_qa": self.polarity_qa, "n_excluded": self.n_excluded, "n_flagged": dict(self.n_flagged)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "PolarityQa":
        d = obj(data, where, ("polarity_qa", "n_excluded", "n_flagged"))
        return cls(d["polarity_qa"], d["n_excluded"], obj(d["n_flagged"], f"{where}.n_flagged"))


_PROVENANCE = ("source", "labels", "total", "splits", "split_method", "exclusions", "n_excluded")


@dataclass(frozen=True, slots=True)
class CacheProvenance:
    """Source, labels, counts per split, split method and exclusions of the evaluated cache."""
    source: str
    labels: str  # the labels file and column, in words
    total: SplitCounts
    splits: dict[str, SplitCounts]  # train, val, calib, test order, then any other
    split_method: str
    exclusions: list[Exclusion]
    n_excluded: int
    qa: PolarityQa | None  # None: an evaluation from before the polarity QA
    manifest_sha256: str | None
    cache: dict[str, int | str]  # image_size and dtype, where the cache recorded them

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source, "labels": self.labels, "total": self.total.to_json(),
            "splits": {k: v.to_json() for k, v in self.splits.items()}, "split_method": self.split_method,
            "exclusions": [e.to_json() for e in self.exclusions], "n_excluded": self.n_excluded}
        if self.qa is not None:
            out["qa"] = self.qa.to_json()
        return {**out, "manifest_sha256": self.manifest_sha256, "cache": dict(self.cache)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "CacheProvenance":
        d = obj(data, where, _PROVENANCE)
        return cls(d["source"], d["labels"], SplitCounts.from_json(d["total"], f"{where}.total"),
                   {k: SplitCounts.from_json(v, f"{where}.splits.{k}")
                    for k, v in obj(d["splits"], f"{where}.splits").items()},
                   d["split_method"], [Exclusion.from_json(e, f"{where}.exclusions[{i}]")
                                       for i, e in enumerate(arr(d["exclusions"], f"{where}.exclusions"))],
                   d["n_excluded"], None if d.get("qa") is None else PolarityQa.from_json(d["qa"], f"{where}.qa"),
                   d.get("manifest_sha256"), obj(d.get("cache") or {}, f"{where}.cache"))


@dataclass(frozen=True, slots=True)
class DataSummary:
    """The ``data`` section of metrics.json: the evaluated split's counts and prevalence, the fit
    split's counts, then (after `fibrosis evaluate` has read the cache) its provenance, on the
    same level of the JSON object."""
    n: int
    n_pos: int
    n_neg: int
    prevalence: float
    n_patients: int
    fit: FitData
    provenance: CacheProvenance | None = None  # None: measured from arrays alone, no cache read

    @property
    def split_method(self) -> str | None:
        return None if self.provenance is None else self.provenance.split_method

    @property
    def manifest_sha256(self) -> str | None:
        return None if self.provenance is None else self.provenance.manifest_sha256

    def to_json(self) -> dict[str, Any]:
        counts = {"n": self.n, "n_pos": self.n_pos, "n_neg": self.n_neg, "prevalence": self.prevalence,
                  "n_patients": self.n_patients, "fit": self.fit.to_json()}
        return counts if self.provenance is None else {**counts, **self.provenance.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "DataSummary":
        d = obj(data, where, ("n", "n_pos", "n_neg", "prevalence", "n_patients", "fit"))
        provenance = CacheProvenance.from_json(d, where) if any(k in d for k in _PROVENANCE) else None
        return cls(d["n"], d["n_pos"], d["n_neg"], d["prevalence"], d["n_patients"],
                   FitData.from_json(d["fit"], f"{where}.fit"), provenance)

    def with_split_method(self, text: str) -> "DataSummary":
        """The same summary with its split method replaced (e.g. external validation: no split)."""
        assert self.provenance is not None, "split method of a summary without provenance"
        return replace(self, provenance=replace(self.provenance, split_method=text))


def scrub_reason(reason: str, path: str = "") -> str:
    """Remove the file's own path/name and anything path-like from an ingest reason."""
    text = reason or ""
    for p in sorted({path, Path(path).name} - {""}, key=len, reverse=True):
        text = text.replace(p, "<file>")
    text = _PATHLIKE.sub("<path>", text)
    return re.sub(r"^(<file>|<path>)\s*:\s*", "", text).strip()


def _positive(row: ManifestRow) -> bool:
    return row.label == 1


def _split_counts(rows: Sequence[ManifestRow]) -> dict[str, SplitCounts]:
    out: dict[str, dict[str, Any]] = {}  # running counts and the patient-key set, per split
    for r in rows:
        s = out.setdefault(r.split or "unassigned", {"n": 0, "n_pos": 0, "patients": set()})
        s["n"] += 1
        s["n_pos"] += _positive(r)
        s["patients"].add(r.patient_key)
    order = {name: i for i, name in enumerate(("train", "val", "calib", "test"))}
    return {k: SplitCounts(v["n"], v["n_pos"], v["n_pos"] / v["n"], len(v["patients"]))
            for k, v in sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))}


_POLARITY_GROUP = {"polarity-suspect": "looks inverted", "polarity-unsure": "polarity unsure"}


def data_summary(cache: str | Path, rows: Sequence[ManifestRow], cfg: Config) -> CacheProvenance:
    """Source, counts per split, prevalence, split method and exclusions of the evaluated cache."""
    cache = Path(cache)
    meta: dict[str, Any] = {}  # cache_meta.json as ingest wrote it (read for a few keys only)
    if (cache / artefacts.CACHE_META).is_file():
        meta = json.loads(read_text(cache / artefacts.CACHE_META))
    rejects = read_csv(cache / artefacts.REJECTS) if (cache / artefacts.REJECTS).is_file() else []
    policy = (meta.get("ingest_config") or {}).get("polarity_qa")
    # Polarity exclusions carry each image's measured score: one group per verdict, not one row each.
    is_qa = [r.get("kind") == "excluded" and r.get("reason", "").startswith(POLARITY_EXCLUDED) for r in rejects]
    reasons = Counter((r.get("kind") or "rejected",
                       f"{POLARITY_EXCLUDED}: {_POLARITY_GROUP[excluded_flag(r.get('reason', ''))]} "
                       f"(ingest.polarity_qa={policy or 'exclude'})" if qa
                       else scrub_reason(r.get("reason", ""), r.get("path", "")))
                      for r, qa in zip(rejects, is_qa))
    flagged = Counter(f for r in rows for f in qa_flags(r.steps).split(";") if f)
    s = cfg.split
    n_pos = sum(_positive(r) for r in rows)
    source = cfg.evaluate.data_source or meta.get("source") or meta.get("description")
    return CacheProvenance(
        source=source or "not recorded (set evaluate.data_source)",
        labels=(Path(cfg.ingest.labels_csv).name if cfg.ingest.labels_csv else "from the inputs")
        + f", column {cfg.ingest.label_column!r}",
        total=SplitCounts(len(rows), n_pos, n_pos / len(rows) if rows else None,
                          len({r.patient_key for r in rows})),
        splits=_split_counts(rows),
        split_method=(f"patient-level, label-stratified random split (seed {s.seed}): train {s.train:g} / "
                      f"val {s.val:g} / test {s.test:g}" + (f" / calib {s.calib:g}" if s.calib else "")
                      + f"; near-duplicates (dHash distance <= {s.near_duplicate_hamming}) kept together"),
        exclusions=[Exclusion(k, r, c) for (k, r), c in reasons.most_common()],
        n_excluded=len(rejects),
        # Images left out, or let in with a note, on the pixel QA's suspicion of inverted display.
        qa=PolarityQa(policy or "keep (cache built before ingest.polarity_qa existed)", sum(is_qa),
                      dict(sorted(flagged.items()))),
        manifest_sha256=manifest_hash(cache) if (cache / artefacts.MANIFEST).is_file() else None,
        cache={k: meta[k] for k in ("image_size", "dtype") if k in meta},
    )


@dataclass(frozen=True, slots=True)
class WeightsRecord:
    """Where the backbone's starting weights came from (all None: random initialisation)."""
    source: str | None
    file: str | None
    sha256: str | None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "file": self.file, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "WeightsRecord":
        d = obj(data, where)
        return cls(d.get("source"), d.get("file"), d.get("sha256"))


@dataclass(frozen=True, slots=True)
class ConfiguredStage:
    """One training stage as configured (None where the stage record lacks the setting)."""
    name: str | None
    epochs: int | None
    lr: float | None
    unfreeze: list[str]
    warmup_epochs: float | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs, "lr": self.lr, "unfreeze": list(self.unfreeze),
                "warmup_epochs": self.warmup_epochs}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ConfiguredStage":
        d = obj(data, where)
        return cls(d.get("name"), d.get("epochs"), d.get("lr"), arr(d.get("unfreeze") or [], f"{where}.unfreeze"),
                   d.get("warmup_epochs"))


@dataclass(frozen=True, slots=True)
class StageRun:
    """Epochs a stage actually ran, its peak learning rate and best validation AUC."""
    name: str
    epochs: int
    lr_peak: float | None
    best_val_auc: float | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs, "lr_peak": self.lr_peak, "best_val_auc": self.best_val_auc}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "StageRun":
        d = obj(data, where, ("name", "epochs"))
        return cls(d["name"], d["epochs"], d.get("lr_peak"), d.get("best_val_auc"))


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The ``run`` section of metrics.json: model, weights, schedule and reproducibility facts."""
    name: str
    checkpoint_sha256: str | None
    arch: str | None
    weights: WeightsRecord
    pretrained: bool
    input_size: int | None
    # The checkpoint's own records, stored as they are: the TTA variants
    # (fibrosis.model.tta) and the auxiliary heads (fibrosis.train.aux), None when off.
    tta: dict[str, Any] | None
    preset: str | None
    stages_configured: list[ConfiguredStage]
    stages_run: list[StageRun]
    epochs_done: int | None
    best_epoch: int | None
    best_val_auc: float | None
    seed: int | None
    split_seed: int | None
    manifest_sha256: str | None
    config: dict[str, Any]  # the run's resolved config as plain data (fibrosis.config owns its shape)
    aux: dict[str, Any] | None
    versions_training: dict[str, str] | None
    versions_evaluation: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint_sha256": self.checkpoint_sha256, "arch": self.arch,
                "weights": self.weights.to_json(), "pretrained": self.pretrained, "input_size": self.input_size,
                "tta": self.tta, "preset": self.preset,
                "stages_configured": [st.to_json() for st in self.stages_configured],
                "stages_run": [st.to_json() for st in self.stages_run], "epochs_done": self.epochs_done,
                "best_epoch": self.best_epoch, "best_val_auc": self.best_val_auc, "seed": self.seed,
                "split_seed": self.split_seed, "manifest_sha256": self.manifest_sha256, "config": self.config,
                "aux": self.aux, "versions_training": self.versions_training,
                "versions_evaluation": self.versions_evaluation}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "RunSummary":
        d = obj(data, where, ("name",))
        return cls(d["name"], d.get("checkpoint_sha256"), d.get("arch"),
                   WeightsRecord.from_json(d.get("weights") or {}, f"{where}.weights"), bool(d.get("pretrained")),
                   d.get("input_size"), d.get("tta"), d.get("preset"),
                   [ConfiguredStage.from_json(st, f"{where}.stages_configured[{i}]")
                    for i, st in enumerate(arr(d.get("stages_configured") or [], f"{where}.stages_configured"))],
                   [StageRun.from_json(st, f"{where}.stages_run[{i}]")
                    for i, st in enumerate(arr(d.get("stages_run") or [], f"{where}.stages_run"))],
                   d.get("epochs_done"), d.get("best_epoch"), d.get("best_val_auc"), d.get("seed"), d.get("split_seed"),
                   d.get("manifest_sha256"), obj(d.get("config") or {}, f"{where}.config"), d.get("aux"),
                   d.get("versions_training"), d.get("versions_evaluation") or {})


def read_history(run: Path, ckpt: Checkpoint) -> list[dict[str, Any]]:
    """Per-epoch training records: RUN/metrics.jsonl (complete) or the checkpoint's own copy.

    best.pt is written at the best epoch, so its history stops there; the run's
    metrics file holds every epoch that was trained.
    """
    path = run / artefacts.EPOCHS_JSONL
    if path.is_file():
        return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]
    return ckpt.history


def stages_run(history: Sequence[dict[str, Any]]) -> list[StageRun]:
    """Epochs actually run per stage, with the peak learning rate and best val AUC."""
    stages: dict[Any, dict[str, Any]] = {}  # running maxima per (stage, stage name)
    for row in history:
        key = (row.get("stage"), row.get("stage_name"))
        st = stages.setdefault(key, {"name": row.get("stage_name") or f"stage {row.get('stage')}",
                                     "epochs": 0, "lr_peak": None, "best_val_auc": None})
        st["epochs"] += 1
        for field, name in (("lr", "lr_peak"), ("val_auc", "best_val_auc")):
            v = row.get(field)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                st[name] = v if st[name] is None else max(st[name], v)
    return [StageRun(st["name"], st["epochs"], st["lr_peak"], st["best_val_auc"]) for st in stages.values()]


def run_summary(run: str | Path, ckpt: Checkpoint) -> RunSummary:
    """Model, weights, schedule and reproducibility facts of a run (from its checkpoint)."""
    run = Path(run)
    cfg = ckpt.config
    train_cfg = cfg.get("train", {})
    info = ckpt.weights_info
    configured = [ConfiguredStage(st.get("name"), st.get("epochs"), st.get("lr"), list(st.get("unfreeze") or []),
                                  st.get("warmup_epochs"))
                  for st in (ckpt.stages or train_cfg.get("stages") or [])]
    history = read_history(run, ckpt)
    return RunSummary(
        name=run.name,
        checkpoint_sha256=file_sha256(run / artefacts.BEST) if (run / artefacts.BEST).is_file() else None,
        arch=ckpt.arch,
        weights=WeightsRecord(info.get("source"), info.get("file"), info.get("sha256")),
        pretrained=ckpt.pretrained,
        input_size=ckpt.preprocessing.input_size,
        tta=ckpt.tta.to_json() if ckpt.tta else None,  # test-time augmentation variants (None: off)
        preset=ckpt.preset or train_cfg.get("preset"),
        stages_configured=configured,
        stages_run=stages_run(history),
        epochs_done=len(history) or None,
        best_epoch=ckpt.best_epoch,
        best_val_auc=ckpt.best_val_auc,
        seed=train_cfg.get("seed"),
        split_seed=(cfg.get("split") or {}).get("seed"),
        manifest_sha256=ckpt.manifest_hash or None,
        config=cfg,
        aux=ckpt.aux.to_json() if ckpt.aux else None,  # auxiliary-finding heads, None when the model has none
        versions_training=ckpt.versions or None,
        versions_evaluation=package_versions(),
    )
