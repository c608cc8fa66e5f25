"""Does ImageNet transfer help here, how much to unfreeze, and does `tune` beat `train`'s preset?

    nice python benchmarks/transfer.py                 # ../shared NIH sample + shared MobileNetV2 weights
    nice python benchmarks/transfer.py --seeds 0,1,2   # tune.seed repeated: spread of the chosen arm's AUC

Data: ../shared/data/nih-cxr14-sample (421 NIH ChestX-ray14 PNGs, 36 Fibrosis), ingested
through fibrosis.data.ingest into a cache at --cache-size px (one fixed salt, so the patient
split is the same on every machine) and split by `fibrosis split` (60/20/20, seed 0).
`fibrosis tune` then runs patient-level 5-fold CV over train+val (the test split untouched)
for the arms of configs/default.yaml (or --arms NAME,..., or any grid with --set
'tune.arms=[...]'; the labels' finding_labels column feeds auxiliary heads), selects one by
its highest pooled OOF AUC kept only if it replicates over the finalists' repeats, and leaves the fold ensemble in
WORK/tune-s<seed>/best.pt. Beside it, `fibrosis train` with the default ``partial`` preset
trains on the same cache and split (WORK/preset). Both are evaluated on the internal test
split and compared there, paired (DeLong), on the same images.

Printed: the arms table (pooled OOF AUC, DeLong CI, AUC per repeat, OOF logit SD and its ratio
to the probe's, epochs, minutes per arm), the chosen arm with its selection-adjusted AUC, the
test comparison with the preset, and with several --seeds the spread of the chosen arm's
selection-adjusted AUC.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibrosis.pipeline.tune import log_table, run_tune  # noqa: E402
from fibrosis.config import DEFAULT_ARMS, load_config  # noqa: E402
from fibrosis.data.cache import CacheReader  # noqa: E402
from fibrosis.evaluate.metrics import auc_delong, delong_paired_test  # noqa: E402
from fibrosis.model.checkpoint import load_model  # noqa: E402
from fibrosis.model.inference import predict_rows, split_rows  # noqa: E402
from nih import DATA, REPO, SHA, WEIGHTS, prepare_cache  # noqa: E402

log = logging.getLogger("transfer")


def test_logits(run: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(labels, model logits, each member's logits) on the test split, from one pass per member."""
    model, _ = load_model(run / "best.pt")
    rows, idx = split_rows(cache, "test")
    reader = CacheReader(cache, rows)
    y = np.array([rows[i].label for i in idx])
    members = [predict_rows(m, reader, idx, 64, "cpu") for m in getattr(model, "members", [model])]
    return y, predict_rows(model, reader, idx, 64, "cpu"), members


def arms_overrides(names: str | None, random_unfreeze: str | None) -> list[str]:
    if not names:
        return []
    grid = {a.name: a for a in DEFAULT_ARMS}
    picked = [dataclasses.replace(grid[n], unfreeze=random_unfreeze)
              if grid[n].init == "random" and random_unfreeze else grid[n] for n in names.split(",") if n in grid]
    extra = [n for n in names.split(",") if n not in grid]
    if extra:
        raise SystemExit(f"--arms: unknown {extra}; default grid: {list(grid)}")
    spec = ", ".join("{" + ", ".join(f"{f.name}: {json.dumps(getattr(a, f.name))}" for f in dataclasses.fields(a)
                                     if getattr(a, f.name) is not None) + "}" for a in picked)
    return [f"tune.arms=[{spec}]"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--work", type=Path, default=REPO / "work" / "transfer")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "transfer.json")
    ap.add_argument("--size", type=int, default=224, help="model input size (px)")
    ap.add_argument("--cache-size", type=int, default=512, help="cache image size (ingest.image_size)")
    ap.add_argument("--seeds", default="0", help="comma-separated tune.seed values (one tune run each)")
    ap.add_argument("--arms", default=None, help="comma-separated arm names of the default grid (default: all)")
    ap.add_argument("--random-unfreeze", default=None, help="unfreeze of the random-init control")
    ap.add_argument("--no-preset", action="store_true", help="skip `fibrosis train` with the partial preset")
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
    cache = prepare_cache(args.data, args.work / f"cache{args.cache_size}", args.cache_size)
    overrides = ["model.arch=mobilenet_v2", f"model.weights={args.weights}", f"model.weights_sha256={SHA}",
                 f"model.input_size={args.size}", *arms_overrides(args.arms, args.random_unfreeze), *args.set]
    from fibrosis.evaluate.run import evaluate_run

    out: dict = {"seeds": {}, "torch_threads": torch.get_num_threads()}
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = load_config(None, overrides + [f"tune.seed={seed}"])
        run = args.work / f"tune-s{seed}"
        result = run_tune(cfg, cache, run, device="cpu")
        if result is None:
            raise SystemExit("tune stopped early")
        metrics = json.loads(evaluate_run(run, cache, gradcam=False, device="cpu").read_text())
        y, z, members = test_logits(run, cache)
        single = [float(auc_delong(y, m)["auc"]) for m in members]
        probe_sd = next((a["oof_sd"] for a in result.arms if a["name"] == "head-only"), None)
        out["seeds"][seed] = {
            "chosen": result.chosen, "first_choice": result.first_choice, "reason": result.reason,
            "selection_adjusted": result.selection_adjusted, "replication": result.replication,
            "minutes": result.minutes_total,
            "arms": [{k: a.get(k) for k in ("name", "auc", "ci", "repeat_aucs", "oof_sd", "epoch", "minutes", "failed")}
                     | {"sd_vs_probe": round(a["oof_sd"] / probe_sd, 2) if probe_sd and a.get("oof_sd") else None}
                     for a in result.arms],
            "test": {"auc": metrics["discrimination"]["delong"], "single_members": single, "n": int(len(y)),
                     "n_pos": int(y.sum())}}
        out["seeds"][seed]["_test_logits"] = z
        log_table(result)
    if not args.no_preset:
        from fibrosis.train.loop import train

        cfg = load_config(None, overrides)
        preset = args.work / "preset"
        if not (preset / "best.pt").is_file() or (preset / "last.pt").is_file():
            train(cfg, cache, preset, resume=(preset / "last.pt").is_file(), device="cpu")
        evaluate_run(preset, cache, gradcam=False, device="cpu")
        y, zp, _ = test_logits(preset, cache)
        out["preset"] = {"test": auc_delong(y, zp)}
        for r in out["seeds"].values():
            t = delong_paired_test(y, r["_test_logits"], zp, 0.95)
            r["test_vs_preset"] = {"difference": t["difference"], "ci": t["ci"], "p": t["p"]}
    for r in out["seeds"].values():
        r.pop("_test_logits")
    adjusted = [r["selection_adjusted"]["auc"] for r in out["seeds"].values()]
    out["selection_adjusted_sd"] = statistics.stdev(adjusted) if len(adjusted) > 1 else None
    out["total_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    for seed, r in out["seeds"].items():
        print(f"\ntune.seed={seed}: chosen {r['chosen']!r} (first choice: {r['first_choice']!r}); selection-adjusted "
              f"OOF AUC {r['selection_adjusted']['auc']:.3f} (pooled {r['selection_adjusted']['pooled_auc']:.3f}); "
              f"{r['minutes']:.1f} min")
        for a in r["arms"]:
            auc = "failed: " + a["failed"] if a["failed"] else f"{a['auc']:.3f} [{a['ci'][0]:.3f}-{a['ci'][1]:.3f}]"
            reps = ", ".join(f"{v:.3f}" for v in (a["repeat_aucs"] or {}).values())
            print(f"  {a['name']:<20} {auc:<24} repeats {reps:<14} sd {a['oof_sd']} (x{a['sd_vs_probe']} probe) "
                  f"epoch {a['epoch']} {a['minutes']:.1f} min")
        t = r["test"]
        line = f"  internal test ({t['n']} images, {t['n_pos']} positive): chosen AUC {t['auc']['auc']:.3f}"
        if "test_vs_preset" in r:
            d = r["test_vs_preset"]
            line += (f" vs `fibrosis train` partial {out['preset']['test']['auc']:.3f}: difference {d['difference']:+.3f} "
                     f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], paired DeLong p = {d['p']:.3f}")
        print(line)
    if out["selection_adjusted_sd"] is not None:
        print(f"selection-adjusted AUC over tune.seed {args.seeds}: {', '.join(f'{a:.3f}' for a in adjusted)} "
              f"(sd {out['selection_adjusted_sd']:.3f})")
    print(f"total {out['total_minutes']} min -> {args.out}")
    return out


if __name__ == "__main__":
    main()
