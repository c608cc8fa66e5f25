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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fibrosis import artefacts
from fibrosis.config import Config
from fibrosis.data.cache import manifest_hash
from fibrosis.data.manifest import ManifestRow
from fibrosis.data.pixels import POLARITY_EXCLUDED, excluded_flag, qa_flags
from fibrosis.io import file_sha256, package_versions, read_csv, read_text

if TYPE_CHECKING:  # the record's module imports torch, which `import fibrosis` does not need
    from fibrosis.model.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

# An absolute path (/a/b, C:\a\b; not glued to a word or digit as in
# "MONOCHROME1/MONOCHROME2") or any slash-separated token ending in a file extension.
_PATHLIKE = re.compile(r"(?<![\w)])(?:[A-Za-z]:)?(?:[\\/][^\s:;,'\"()]+)+"
                       r"|[^\s:;,'\"()]*[\\/][^\s:;,'\"()]*\.[A-Za-z0-9]{1,5}\b")


def scrub_reason(reason: str, path: str = "") -> str:
    """Remove the file's own path/name and anything path-like from an ingest reason."""
    text = reason or ""
    for p in sorted({path, Path(path).name} - {""}, key=len, reverse=True):
        text = text.replace(p, "<file>")
    text = _PATHLIKE.sub("<path>", text)
    return re.sub(r"^(<file>|<path>)\s*:\s*", "", text).strip()


def _positive(row: ManifestRow) -> bool:
    return row.label == 1


def _split_counts(rows: Sequence[ManifestRow]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r.split or "unassigned", {"n": 0, "n_pos": 0, "patients": set()})
        s["n"] += 1
        s["n_pos"] += _positive(r)
        s["patients"].add(r.patient_key)
    order = {name: i for i, name in enumerate(("train", "val", "calib", "test"))}
    return {k: {"n": v["n"], "n_pos": v["n_pos"], "prevalence": v["n_pos"] / v["n"],
                "n_patients": len(v["patients"])}
            for k, v in sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))}


_POLARITY_GROUP = {"polarity-suspect": "looks inverted", "polarity-unsure": "polarity unsure"}


def data_summary(cache: str | Path, rows: Sequence[ManifestRow], cfg: Config) -> dict[str, Any]:
    """Source, counts per split, prevalence, split method and exclusions of the evaluated cache."""
    cache = Path(cache)
    meta: dict[str, Any] = {}
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
    return {
        "source": source or "not recorded (set evaluate.data_source)",
        "labels": (Path(cfg.ingest.labels_csv).name if cfg.ingest.labels_csv else "from the inputs")
        + f", column {cfg.ingest.label_column!r}",
        "total": {"n": len(rows), "n_pos": n_pos, "prevalence": n_pos / len(rows) if rows else None,
                  "n_patients": len({r.patient_key for r in rows})},
        "splits": _split_counts(rows),
        "split_method": (f"patient-level, label-stratified random split (seed {s.seed}): train {s.train:g} / "
                         f"val {s.val:g} / test {s.test:g}" + (f" / calib {s.calib:g}" if s.calib else "")
                         + f"; near-duplicates (dHash distance <= {s.near_duplicate_hamming}) kept together"),
        "exclusions": [{"kind": k, "reason": r, "count": c} for (k, r), c in reasons.most_common()],
        "n_excluded": len(rejects),
        # Images left out, or let in with a note, on the pixel QA's suspicion of inverted display.
        "qa": {"polarity_qa": policy or "keep (cache built before ingest.polarity_qa existed)",
               "n_excluded": sum(is_qa), "n_flagged": dict(sorted(flagged.items()))},
        "manifest_sha256": manifest_hash(cache) if (cache / artefacts.MANIFEST).is_file() else None,
        "cache": {k: meta.get(k) for k in ("image_size", "dtype") if k in meta},
    }


def read_history(run: Path, ckpt: Checkpoint) -> list[dict[str, Any]]:
    """Per-epoch training records: RUN/metrics.jsonl (complete) or the checkpoint's own copy.

    best.pt is written at the best epoch, so its history stops there; the run's
    metrics file holds every epoch that was trained.
    """
    path = run / artefacts.EPOCHS_JSONL
    if path.is_file():
        return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]
    return ckpt.history


def stages_run(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epochs actually run per stage, with the peak learning rate and best val AUC."""
    stages: dict[Any, dict[str, Any]] = {}
    for row in history:
        key = (row.get("stage"), row.get("stage_name"))
        st = stages.setdefault(key, {"name": row.get("stage_name") or f"stage {row.get('stage')}",
                                     "epochs": 0, "lr_peak": None, "best_val_auc": None})
        st["epochs"] += 1
        for field, name in (("lr", "lr_peak"), ("val_auc", "best_val_auc")):
            v = row.get(field)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                st[name] = v if st[name] is None else max(st[name], v)
    return list(stages.values())


def run_summary(run: str | Path, ckpt: Checkpoint) -> dict[str, Any]:
    """Model, weights, schedule and reproducibility facts of a run (from its checkpoint)."""
    run = Path(run)
    cfg = ckpt.config
    train_cfg = cfg.get("train", {})
    info = ckpt.weights_info
    configured = [{"name": st.get("name"), "epochs": st.get("epochs"), "lr": st.get("lr"),
                   "unfreeze": list(st.get("unfreeze") or []), "warmup_epochs": st.get("warmup_epochs")}
                  for st in (ckpt.stages or train_cfg.get("stages") or [])]
    history = read_history(run, ckpt)
    return {
        "name": run.name,
        "checkpoint_sha256": file_sha256(run / artefacts.BEST) if (run / artefacts.BEST).is_file() else None,
        "arch": ckpt.arch,
        "weights": {"source": info.get("source"), "file": info.get("file"), "sha256": info.get("sha256")},
        "pretrained": ckpt.pretrained,
        "input_size": ckpt.preprocessing.input_size,
        "tta": ckpt.tta,  # test-time augmentation variants (None: off); see fibrosis.model.tta
        "preset": ckpt.preset or train_cfg.get("preset"),
        "stages_configured": configured,
        "stages_run": stages_run(history),
        "epochs_done": len(history) or None,
        "best_epoch": ckpt.best_epoch,
        "best_val_auc": ckpt.best_val_auc,
        "seed": train_cfg.get("seed"),
        "split_seed": (cfg.get("split") or {}).get("seed"),
        "manifest_sha256": ckpt.manifest_hash or None,
        "config": cfg,
        "aux": ckpt.aux,  # auxiliary-finding heads, None when the model has none
        "versions_training": ckpt.versions or None,
        "versions_evaluation": package_versions(),
    }
