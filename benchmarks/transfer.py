"""Does ImageNet transfer help here, and how much to unfreeze? A thin call of `fibrosis tune`.

    nice python benchmarks/transfer.py            # ../shared NIH sample + shared MobileNetV2 weights

Data: ../shared/data/nih-cxr14-sample (421 NIH ChestX-ray14 PNGs, 36 Fibrosis), ingested
through fibrosis.data.ingest into a cache at --size px and split by `fibrosis split`
(default 60/20/20, seed 0). `fibrosis tune` then runs patient-level 5-fold CV over train+val
(the test split untouched) for the arms of configs/default.yaml (or --arms NAME,..., or any
grid with --set 'tune.arms=[...]'; the labels' finding_labels column feeds auxiliary heads),
selects one by the one-SE rule and leaves the fold ensemble in WORK/tune/best.pt.
Afterwards, once: the ensemble is evaluated on the internal test split
(`fibrosis evaluate`) and compared with the mean test AUC of its single fold models.

Printed: the arms table (pooled OOF AUC, DeLong CI, difference to random init with the
paired DeLong p, chosen epoch budget, minutes per arm) and ensemble vs single-fold test AUC.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibrosis.cli.tune import log_table, run_tune  # noqa: E402
from fibrosis.config import DEFAULT_ARMS, IngestConfig, SplitConfig, load_config  # noqa: E402
from fibrosis.data.cache import CacheReader  # noqa: E402
from fibrosis.model.checkpoint import load_model  # noqa: E402
from fibrosis.model.inference import predict_rows, split_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHA = "221f65aa066671af07650dac6d86a51916c5a61f97e50f238fd3aa7a56bef257"


def prepare_cache(data: Path, cache: Path, size: int) -> Path:
    from fibrosis.data.ingest import ingest
    from fibrosis.data.split import split_cache

    # Every run re-ingests (a no-op on unchanged files) so that a labels or config change since
    # the cache was built (e.g. the auxiliary findings) reaches the manifest; split is a no-op too.
    cfg = IngestConfig(image_size=size, labels_csv=str(data / "labels.csv"), label_column="fibrosis",
                       findings_column="finding_labels")
    logging.getLogger("transfer").warning("ingest: %s", ingest([data / "images"], cache, cfg, progress=False))
    split_cache(cache, SplitConfig())
    return cache


def single_vs_ensemble(run: Path, cache: Path) -> dict:
    """Test AUC of the ensemble (mean logit) and of each fold model alone, from one pass."""
    model, _ = load_model(run / "best.pt")
    rows, idx = split_rows(cache, "test")
    reader = CacheReader(cache, rows)
    y = [int(rows[i]["label"]) for i in idx]
    members = [predict_rows(m, reader, idx, 64, "cpu") for m in getattr(model, "members", [model])]
    single = [float(roc_auc_score(y, z)) for z in members]
    ens = float(roc_auc_score(y, sum(members) / len(members)))
    return {"ensemble": ens, "single": single, "single_mean": statistics.mean(single),
            "n": len(y), "n_pos": sum(y)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "nih-cxr14-sample")
    ap.add_argument("--weights", type=Path, default=SHARED / "weights" / "mobilenet_v2-imagenet-features.pth")
    ap.add_argument("--work", type=Path, default=REPO / "work" / "transfer")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "transfer.json")
    ap.add_argument("--tune-dir", default="tune", help="folder under --work for this tune run (its units resume)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arms", default=None, help="comma-separated arm names of the default grid (default: all)")
    ap.add_argument("--random-unfreeze", default=None,
                    help="unfreeze of the random-init control (default grid: all); e.g. last1 where "
                         "training the whole network from scratch does not fit the CPU budget")
    ap.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if not (args.data / "labels.csv").is_file() or not args.weights.is_file():
        print(f"needs {args.data} and {args.weights} (../shared); not found", file=sys.stderr)
        raise SystemExit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    cache = prepare_cache(args.data, args.work / f"cache{args.size}", args.size)
    overrides = ["model.arch=mobilenet_v2", f"model.weights={args.weights}", f"model.weights_sha256={SHA}",
                 f"model.input_size={args.size}", *args.set]
    if args.arms:
        names = args.arms.split(",")
        grid = {a.name: a for a in DEFAULT_ARMS}
        arms = [dataclasses.replace(grid[n], unfreeze=args.random_unfreeze)
                if grid[n].init == "random" and args.random_unfreeze else grid[n] for n in names if n in grid]
        extra = [n for n in names if n not in {a.name for a in arms}]
        if extra:
            raise SystemExit(f"--arms: unknown {extra}; default grid: {[a.name for a in DEFAULT_ARMS]}")
        spec = ", ".join("{" + f"name: {a.name}, init: {a.init}, unfreeze: {a.unfreeze}, lr_ratio: {a.lr_ratio}" + "}"
                         for a in arms)
        overrides.append(f"tune.arms=[{spec}]")
    cfg = load_config(None, overrides)
    result = run_tune(cfg, cache, args.work / args.tune_dir, device="cpu")
    if result is None:
        raise SystemExit("tune stopped early")
    from fibrosis.evaluate.run import evaluate_run

    metrics = json.loads(evaluate_run(args.work / args.tune_dir, cache, gradcam=False, device="cpu").read_text())
    test = single_vs_ensemble(args.work / args.tune_dir, cache)
    out = {"tune": {k: v for k, v in result.items() if k != "arms"},
           "arms": [{k: v for k, v in a.items() if k not in ("roc", "curve")} for a in result["arms"]],
           "test": test, "test_auc_delong": metrics["discrimination"]["delong"],
           "total_minutes": round((time.perf_counter() - t0) / 60, 1), "torch_threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    log_table(result)
    print(f"internal test ({test['n']} images, {test['n_pos']} positive): ensemble AUC {test['ensemble']:.3f} "
          f"vs single fold models {test['single_mean']:.3f} (mean; {', '.join(f'{a:.3f}' for a in test['single'])})")
    print(f"total {out['total_minutes']} min -> {args.out}")
    return out


if __name__ == "__main__":
    main()
