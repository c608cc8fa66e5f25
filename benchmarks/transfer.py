"""Does ImageNet transfer help here? 5-fold patient-level CV: random init vs head-only vs partial.

    nice python benchmarks/transfer.py            # ../shared NIH sample + shared MobileNetV2 weights

Data: ../shared/data/nih-cxr14-sample (421 NIH ChestX-ray14 PNGs, 36 Fibrosis), read through
fibrosis.data.ingest (the same pixel path as real runs) into a cache at --size px.
Folds: StratifiedGroupKFold by patient (labels stratified); inside each training part a
patient-level validation split (1/4) drives early stopping and best-checkpoint selection;
the held-out fold is scored once with predict_split and its AUC recorded.

Arms (same architecture, data, augmentation, epoch budget, early stopping, pos_weight):
- random:    model.weights=none, every layer trains from the start at lr --scratch-lr
             (a head-only stage on random features would be a strawman);
- head-only: shared ImageNet MobileNetV2, backbone frozen (features cached), head only;
- partial:   shared ImageNet MobileNetV2, head stage, then features.14-18 unfrozen at 10x lower lr.
Every arm runs through fibrosis.train.loop.train, i.e. the tool itself.

Reported: test AUC mean ± sd over folds per arm, and (secondary) the AUC of the pooled
out-of-fold logits with a DeLong CI and a paired DeLong test against random init. Pooling
mixes five models' score scales, so it is a rough summary, but with ~7 positives per test
fold the per-fold AUCs alone have standard errors near 0.1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibrosis.data.cache import MANIFEST_COLUMNS  # noqa: E402

from fibrosis.io import read_csv, write_csv  # noqa: E402
from fibrosis.config import load_config  # noqa: E402
from fibrosis.evaluate.metrics import auc_delong, delong_paired_test  # noqa: E402
from fibrosis.model.inference import predict_split  # noqa: E402
from fibrosis.train.loop import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ARMS = ("random", "head-only", "partial")


def ingest_sample(data: Path, cache: Path, size: int) -> Path:
    from fibrosis.config import IngestConfig
    from fibrosis.data.ingest import ingest

    if not (cache / "manifest.csv").exists():
        cfg = IngestConfig(image_size=size, labels_csv=str(data / "labels.csv"), label_column="fibrosis")
        summary = ingest([data / "images"], cache, cfg, progress=False)
        logging.getLogger("transfer").warning("ingest: %s", summary)
    return cache


def fold_assignments(rows: list[dict[str, str]], folds: int, seed: int) -> list[dict[int, str]]:
    """Per fold: row index -> train | val | test, grouped by patient, stratified by label."""
    y = np.array([int(r["label"]) for r in rows])
    groups = np.array([r["patient_key"] for r in rows])
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for k, (rest, test) in enumerate(outer.split(np.zeros(len(y)), y, groups)):
        inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed + 1 + k)
        tr, va = next(inner.split(np.zeros(len(rest)), y[rest], groups[rest]))
        split = {int(i): "test" for i in test}
        split.update({int(rest[i]): "train" for i in tr})
        split.update({int(rest[i]): "val" for i in va})
        out.append(split)
    return out


def fold_cache(base: Path, rows: list[dict[str, str]], split: dict[int, str], where: Path) -> Path:
    """A cache view sharing the base shards, with its own manifest (the fold's split column)."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(base / "cache.json", where / "cache.json")
    if not (where / "shards").exists():
        os.symlink((base / "shards").resolve(), where / "shards")
    write_csv(where / "manifest.csv", [{**r, "split": split[i]} for i, r in enumerate(rows)],
              MANIFEST_COLUMNS)
    return where


def arm_overrides(arm: str, args: argparse.Namespace) -> list[str]:
    common = ["model.arch=mobilenet_v2", f"model.input_size={args.size}",
              f"train.batch_size={args.batch_size}", "train.num_workers=0",
              f"train.head_epochs={args.head_epochs}", f"train.finetune_epochs={args.finetune_epochs}",
              f"train.early_stopping_patience={args.patience}", f"train.seed={args.seed}"]
    if arm == "random":
        total = args.head_epochs + args.finetune_epochs
        return common + ["model.weights=none", "train.preset=null",
                         f"train.stages=[{{name: scratch, epochs: {total}, lr: {args.scratch_lr}, "
                         f"unfreeze: [all], warmup_epochs: 1.0}}]"]
    weights = [f"model.weights={args.weights}", f"model.weights_sha256={args.weights_sha256}"]
    return common + weights + [f"train.preset={arm}"]


def _pooled(recs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold labels and logits in a fixed case order (by content hash)."""
    pairs = sorted((h, y, z) for r in recs for h, y, z in zip(r["test_hashes"], r["labels"], r["logits"]))
    return np.array([y for _, y, _ in pairs]), np.array([z for _, _, z in pairs])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "nih-cxr14-sample")
    ap.add_argument("--weights", type=Path, default=SHARED / "weights" / "mobilenet_v2-imagenet-features.pth")
    ap.add_argument("--weights-sha256", default="221f65aa066671af07650dac6d86a51916c5a61f97e50f238fd3aa7a56bef257")
    ap.add_argument("--work", type=Path, default=REPO / "work" / "transfer")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "transfer.json")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--head-epochs", type=int, default=5)
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--scratch-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 is faster on a CPU shared with other jobs)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--reuse", action="store_true",
                    help="score existing finished runs in --work instead of retraining them")
    args = ap.parse_args(argv)
    if not (args.data / "labels.csv").is_file() or not args.weights.is_file():
        print(f"needs {args.data} and {args.weights} (../shared); not found", file=sys.stderr)
        raise SystemExit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)  # per-run INFO goes to each run's train.log
    logging.basicConfig(level=logging.WARNING, handlers=[console])
    log = logging.getLogger("transfer")

    t_start = time.perf_counter()
    base = ingest_sample(args.data, args.work / f"cache{args.size}", args.size)
    rows = read_csv(base / "manifest.csv")
    splits = fold_assignments(rows, args.folds, args.seed)
    arms = args.arms.split(",")
    results: dict[str, list[dict]] = {a: [] for a in arms}
    for k, split in enumerate(splits):
        fc = fold_cache(base, rows, split, args.work / f"fold{k}")
        n = {s: sum(1 for v in split.values() if v == s) for s in ("train", "val", "test")}
        pos = {s: sum(int(rows[i]["label"]) for i, v in split.items() if v == s) for s in n}
        for arm in arms:
            run = args.work / f"fold{k}-{arm}"
            t0 = time.perf_counter()
            reused = args.reuse and (run / "best.pt").exists() and "done: best" in (run / "train.log").read_text()
            if reused:
                best = run / "best.pt"
            else:
                shutil.rmtree(run, ignore_errors=True)
                best = train(load_config(None, arm_overrides(arm, args)), fc, run, device="cpu")
            test_rows, logits = predict_split(best, fc, "test")
            labels = [int(r["label"]) for r in test_rows]
            auc = float(roc_auc_score(labels, logits))
            hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            rec = {"fold": k, "test_auc": auc, "best_val_auc": max(h["val_auc"] for h in hist),
                   "epochs": len(hist), "n": n, "positives": pos,
                   # train + predict wall time; a reused run only knows its epochs' time
                   "seconds": round(sum(h["seconds"] for h in hist) if reused
                                    else time.perf_counter() - t0, 1),
                   "test_hashes": [r["content_hash"] for r in test_rows], "labels": labels,
                   "logits": [float(v) for v in logits]}
            results[arm].append(rec)
            log.warning("fold %d %-9s test AUC %.3f (val %.3f, %d epochs, %.0f s)", k, arm, auc,
                        rec["best_val_auc"], rec["epochs"], rec["seconds"])
    summary = {}
    for arm, recs in results.items():
        aucs = [r["test_auc"] for r in recs]
        summary[arm] = {"mean": statistics.mean(aucs), "sd": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                        "folds": aucs, "minutes": round(sum(r["seconds"] for r in recs) / 60, 1)}
    pooled = {arm: _pooled(recs) for arm, recs in results.items()}
    for arm in arms:
        summary[arm]["pooled_oof"] = auc_delong(pooled[arm][0], pooled[arm][1])
    if "random" in results:
        for arm in arms:
            if arm != "random":
                diff = [a - b for a, b in zip(summary[arm]["folds"], summary["random"]["folds"])]
                summary[arm]["minus_random_mean"] = statistics.mean(diff)
                summary[arm]["wins_over_random"] = sum(d > 0 for d in diff)
                summary[arm]["pooled_vs_random"] = delong_paired_test(
                    pooled[arm][0], pooled[arm][1], pooled["random"][1])
    out = {"settings": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
           "folds": results, "total_minutes": round((time.perf_counter() - t_start) / 60, 1),
           "torch_threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n{args.folds}-fold patient-level CV, mobilenet_v2 @ {args.size}px, "
          f"{args.head_epochs}+{args.finetune_epochs} epochs, test AUC per arm:")
    print(f"{'arm':<10} {'AUC mean ± sd':>16}  {'per fold':<40} {'min':>5}  vs random")
    for arm in arms:
        s = summary[arm]
        folds = " ".join(f"{a:.3f}" for a in s["folds"])
        vs = (f"{s['minus_random_mean']:+.3f} ({s['wins_over_random']}/{len(s['folds'])} folds)"
              if "minus_random_mean" in s else "")
        print(f"{arm:<10} {s['mean']:>8.3f} ± {s['sd']:.3f}  {folds:<40} {s['minutes']:>5}  {vs}")
    print("pooled out-of-fold logits (all folds, 5 models' scales mixed): AUC [95% DeLong CI]")
    for arm in arms:
        s = summary[arm]
        po = s["pooled_oof"]
        vs = s.get("pooled_vs_random")
        extra = f"  vs random {vs['difference']:+.3f}, paired DeLong p={vs['p']:.2f}" if vs else ""
        print(f"{arm:<10} {po['auc']:.3f} [{po['ci'][0]:.3f}, {po['ci'][1]:.3f}]{extra}")
    print(f"total {out['total_minutes']} min -> {args.out}")
    return out


if __name__ == "__main__":
    main()
