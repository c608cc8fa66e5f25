"""The input and linear-probe defaults of `fibrosis tune`, chosen by repeated cross-validation.

    nice python benchmarks/probe_choices.py [--repeats 5]      # ../shared NIH sample + MobileNetV2

Data: ../shared/data/nih-cxr14-sample, ingested into 8-bit caches of 224, 256, 448 and 512 px
and a 16-bit cache of 224 px (one salt, so patient keys match), split by `fibrosis split` (seed 0); the development images are
train + val of the 512 px cache (the images every cache kept). Model: the shared MobileNetV2
ImageNet weights at 224 px. Every option is scored on the same R repeats of patient-level
5-fold CV (fibrosis.train.folds, as `fibrosis tune` deals them), so comparisons are paired:

1. stem: the exact per-channel RGB stem against the summed fold of older checkpoints;
2. resize and cache-to-input ratio: area against linear from each cache size (and 8 against 16
   bits where the cache is the input size);
3. the probe's C criterion (calibrated log-loss against AUC) and standardised or raw features,
   beside the scikit-learn reference (fibrosis.train.probe.fit_reference);
4. ``tune.final``: the fold ensemble against one model refitted on all training rows, by
   nested CV (inside each outer fold: k inner fold models averaged, or one refit).

Printed per option: pooled out-of-fold AUC per repeat, their mean and sd; per comparison the
paired difference per repeat (mean, min, max) and DeLong's 95% CI of the difference of the
repeat-averaged logits. Features are cached under --work, so a rerun is the CV alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibrosis.config import TuneConfig  # noqa: E402
from fibrosis.data.cache import CacheReader  # noqa: E402
from fibrosis.evaluate.metrics import delong_paired_test  # noqa: E402
from fibrosis.data.manifest import read_manifest  # noqa: E402
from fibrosis.model.inference import extract_features  # noqa: E402
from fibrosis.model.net import build_model  # noqa: E402
from fibrosis.train.folds import make_folds, near_duplicate_links, patient_groups  # noqa: E402
from fibrosis.train.probe import fit_probe, fit_reference  # noqa: E402
from nih import DATA, REPO, SHA, WEIGHTS, prepare_cache  # noqa: E402

INPUT = 224
# name -> (ingest.image_size, ingest.cache_dtype)
CACHES = {"224": (224, "uint8"), "256": (256, "uint8"), "448": (448, "uint8"), "512": (512, "uint8"),
          "224-uint16": (224, "uint16")}
log = logging.getLogger("probe_choices")


def features(cache: Path, hashes: list[str], weights: Path, stem: str, resize: str, work: Path) -> np.ndarray:
    path = work / f"feat-{cache.name}-{stem}-{resize}.npy"
    if path.is_file():
        return np.load(path)
    rows = read_manifest(cache / "manifest.csv")
    pos = {r.content_hash: i for i, r in enumerate(rows)}
    model = build_model("mobilenet_v2", str(weights), weights_sha256=SHA, input_size=INPUT, resize=resize,
                        gray_fold=stem)
    t0 = time.perf_counter()
    f = extract_features(model, CacheReader(cache, rows), [pos[h] for h in hashes], 32, "cpu",
                         channels_last=True).numpy().astype(np.float64)
    log.info("features %s %s %s: %.1f s", cache.name, stem, resize, time.perf_counter() - t0)
    np.save(path, f)
    return f


def cached(work: Path, key: str, compute) -> np.ndarray:
    """An option's logits, kept under --work so an interrupted run resumes option by option."""
    path = work / ("z-" + "".join(c if c.isalnum() else "_" for c in key) + ".npy")
    if path.is_file():
        return np.load(path)
    z = compute()
    np.save(path, z)
    return z


def cv_logits(fit, feats: np.ndarray, y: np.ndarray, groups: list[str], folds: list[list[tuple]],
              ) -> np.ndarray:
    """(repeats, n) out-of-fold logits of ``fit(x, y, groups, seed) -> Probe``."""
    out = np.zeros((len(folds), len(y)))
    for r, rep in enumerate(folds):
        for k, (tr, ho) in enumerate(rep):
            probe = fit(feats[tr], y[tr], [groups[i] for i in tr], 1000 * r + k)
            out[r, ho] = probe.logits(feats[ho])
    return out


def nested(fit, feats: np.ndarray, y: np.ndarray, groups: list[str], folds: list[list[tuple]],
           inner: int) -> tuple[np.ndarray, np.ndarray]:
    """tune.final by nested CV: per outer fold, ``inner`` fold models averaged vs one refit."""
    from sklearn.model_selection import StratifiedGroupKFold

    ens, refit = np.zeros((len(folds), len(y))), np.zeros((len(folds), len(y)))
    for r, rep in enumerate(folds):
        for k, (tr, ho) in enumerate(rep):
            g = [groups[i] for i in tr]
            refit[r, ho] = fit(feats[tr], y[tr], g, 1000 * r + k).logits(feats[ho])
            skf = StratifiedGroupKFold(n_splits=inner, shuffle=True, random_state=1000 * r + k)
            zs = []
            for j, (itr, _) in enumerate(skf.split(feats[tr], y[tr], g)):
                sub = tr[itr]
                zs.append(fit(feats[sub], y[sub], [groups[i] for i in sub], 1000 * r + 100 * k + j).logits(feats[ho]))
            ens[r, ho] = np.mean(zs, 0)
    return ens, refit


def summary(y: np.ndarray, z: np.ndarray) -> dict:
    aucs = [float(roc_auc_score(y, zr)) for zr in z]
    return {"per_repeat": [round(a, 4) for a in aucs], "mean": round(statistics.mean(aucs), 4),
            "sd": round(statistics.stdev(aucs), 4) if len(aucs) > 1 else 0.0}


def paired(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """a - b: per repeat (those both ran), and DeLong on the repeat-averaged logits."""
    r = min(len(a), len(b))
    a, b = a[:r], b[:r]
    d = [float(roc_auc_score(y, za) - roc_auc_score(y, zb)) for za, zb in zip(a, b)]
    t = delong_paired_test(y, a.mean(0), b.mean(0), 0.95)
    return {"mean": round(statistics.mean(d), 4), "min": round(min(d), 4), "max": round(max(d), 4),
            "positive": sum(x > 0 for x in d), "of": len(d),
            "delong_mean_logits": {"difference": round(t["difference"], 4), "ci": [round(c, 4) for c in t["ci"]],
                                   "p": round(t["p"], 4)}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--work", type=Path, default=REPO / "work" / "probe_choices")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "probe_choices.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.data / "labels.csv").is_file() or not args.weights.is_file():
        print(f"needs {args.data} and {args.weights} (../shared); not found", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    caches = {s: prepare_cache(args.data, args.work / f"cache{s}", *CACHES[s]) for s in CACHES}
    # Development images: train + val of the 512 px cache that every cache also kept.
    rows = read_manifest(caches["512"] / "manifest.csv")
    kept = set.intersection(*({r.content_hash for r in read_manifest(c / "manifest.csv")} for c in caches.values()))
    rows = [r for r in rows if r.content_hash in kept]
    folds_all = make_folds(rows, args.folds, args.repeats, args.seed, near_duplicate_links(caches["512"]))
    dev = sorted({i for f in folds_all for i in f.heldout})
    at = {row: p for p, row in enumerate(dev)}
    hashes = [rows[i].content_hash for i in dev]
    y = np.array([rows[i].label for i in dev])
    groups = patient_groups([rows[i].patient_key for i in dev], near_duplicate_links(caches["512"]))
    folds = [[(np.array([at[i] for i in f.train]), np.array([at[i] for i in f.heldout]))
              for f in folds_all if f.repeat == r] for r in range(args.repeats)]
    log.info("%d development images (%d positive), %d x %d folds", len(y), int(y.sum()), args.repeats, args.folds)

    tcfg = TuneConfig()
    probe = lambda x, yy, g, s, **kw: fit_probe(x, yy, g, tcfg.probe_c, tcfg.probe_inner_folds, s, **kw)  # noqa: E731
    fitters = {
        "probe (calibrated-loss, standardised)": probe,
        "reference (scikit-learn LogisticRegressionCV)": lambda x, yy, g, s: fit_reference(x, yy, g, s),
    }
    variants = [("rgb-stem", "area", "512"), ("summed", "area", "512")] + [
        ("rgb-stem", m, s) for s in ("448", "256") for m in ("area", "linear")] + [
        ("rgb-stem", "linear", "512"), ("rgb-stem", "area", "224"), ("rgb-stem", "area", "224-uint16")]
    z: dict[str, np.ndarray] = {}
    for stem, resize, size in variants:
        f = features(caches[size], hashes, args.weights, stem, resize, args.work)
        for name, fit in fitters.items():
            t1 = time.perf_counter()
            key = f"{name} | {stem} | {resize} from {size}"
            z[key] = cached(args.work, key, lambda fit=fit, f=f: cv_logits(fit, f, y, groups, folds))
            log.info("%s: OOF AUC %s (%.0f s)", key, summary(y, z[key]), time.perf_counter() - t1)
    base = "probe (calibrated-loss, standardised) | rgb-stem | area from 512"
    ref = "reference (scikit-learn LogisticRegressionCV) | rgb-stem | area from 512"
    f512 = features(caches["512"], hashes, args.weights, "rgb-stem", "area", args.work)
    wide = (*tcfg.probe_c, 10.0, 100.0)
    extra = {"probe (auc, standardised)": lambda x, yy, g, s: probe(x, yy, g, s, criterion="auc"),
             "probe (calibrated-loss, standardised, C up to 100)":
                 lambda x, yy, g, s: fit_probe(x, yy, g, wide, tcfg.probe_inner_folds, s),
             # L-BFGS on the raw features (scales 0-6, unequal) needs thousands of iterations per fit:
             # the same C grid, but three repeats only.
             "probe (calibrated-loss, raw features)": lambda x, yy, g, s: probe(x, yy, g, s, standardise=False)}
    for name, fit in extra.items():
        key = f"{name} | rgb-stem | area from 512"
        reps = folds[:3] if "raw" in name else folds
        z[key] = cached(args.work, key, lambda fit=fit, reps=reps: cv_logits(fit, f512, y, groups, reps))
        log.info("%s: OOF AUC %s", key, summary(y, z[key]))
    finals = {}
    for name, fit in fitters.items():
        t1 = time.perf_counter()
        both = cached(args.work, f"final {name}", lambda fit=fit: np.stack(nested(fit, f512, y, groups, folds, args.folds)))
        ens, refit = both[0], both[1]
        finals[name] = {"ensemble": summary(y, ens), "refit": summary(y, refit), "refit - ensemble": paired(y, refit, ens)}
        log.info("tune.final, %s: %s (%.0f s)", name, finals[name], time.perf_counter() - t1)

    out = {"n": len(y), "n_pos": int(y.sum()), "repeats": args.repeats, "folds": args.folds,
           "options": {k: summary(y, v) for k, v in z.items()},
           "versus default probe": {k: paired(y, v, z[base]) for k, v in z.items() if k != base},
           "versus reference": {k: paired(y, v, z[ref]) for k, v in z.items() if k != ref},
           "final": finals, "minutes": round((time.perf_counter() - t0) / 60, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    for k, v in out["options"].items():
        d = out["versus default probe"].get(k)
        print(f"{k:<90s} {v['mean']:.3f} (sd {v['sd']:.3f})"
              + (f"  vs default {d['mean']:+.3f} [{d['min']:+.3f}, {d['max']:+.3f}] "
                 f"{d['positive']}/{d['of']} > 0" if d else "  (default)"))
    for name, v in finals.items():
        d = v["refit - ensemble"]
        print(f"tune.final, {name}: ensemble {v['ensemble']['mean']:.3f}, refit {v['refit']['mean']:.3f}, "
              f"refit - ensemble {d['mean']:+.3f} [{d['min']:+.3f}, {d['max']:+.3f}]")
    print(f"total {out['minutes']} min -> {args.out}")
    return out


if __name__ == "__main__":
    main()
