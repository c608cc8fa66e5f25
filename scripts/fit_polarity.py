"""Fit the polarity check's cue weights (fibrosis.data.polarity.CUE_WEIGHTS) on caches of your own.

No polarity labels are needed: each cached image is taken as shown and its inversion as shown
inverted, and a logistic regression without intercept separates the two. An image the caches
hold inverted is one wrong label among hundreds; the 5-fold cross-validated scores it prints
(lowest first) show such images, and how far the correct ones stay from the thresholds.

    python scripts/fit_polarity.py CACHE [CACHE ...] [--inverted NAME ...]

Build the caches with ``--set ingest.polarity_qa=keep`` (nothing excluded or inverted). The weights
in the package were fitted on the 421 NIH PNGs of ../shared/data/nih-cxr14-sample, the 163 demo
DICOMs and the robustness DICOMs, with --inverted 00017999_000.png
CR_chest_FAKE_MONO1_JPEGbaseline_8bit_SIIM.dcm (looked at: both shown inverted).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from fibrosis.data.polarity import AS_SHOWN_FROM, CUE_WEIGHTS, INVERTED_TO, cues


def content_images(cache: Path):
    """(file name, cached image without its padding) of every manifest row."""
    size = None
    shards: dict[int, np.ndarray] = {}
    with open(cache / "manifest.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            shard = int(row["shard"])
            if shard not in shards:
                shards[shard] = np.load(cache / "shards" / f"shard-{shard:06d}.npy", mmap_mode="r")
            img = np.asarray(shards[shard][int(row["index"])], np.float32)
            img /= float(np.iinfo(shards[shard].dtype).max)
            size = img.shape[0]
            h, w = int(row["rows"]), int(row["cols"])
            scale = size / max(h, w)  # fibrosis.data.pixels.fit_square's geometry
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            top, left = (size - nh) // 2, (size - nw) // 2
            yield Path(row["path"]).name, img[top:top + nh, left:left + nw]


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("caches", nargs="+", type=Path)
    ap.add_argument("--inverted", nargs="*", default=[], help="file names known to be cached inverted")
    args = ap.parse_args()
    names, x, xi = [], [], []
    keys = list(CUE_WEIGHTS)
    for cache in args.caches:
        for name, img in content_images(cache):
            names.append(name)
            x.append([cues(img)[k] for k in keys])
            xi.append([cues(1.0 - img)[k] for k in keys])
    x, xi = np.asarray(x), np.asarray(xi)
    fit = lambda a, b: LogisticRegression(fit_intercept=False, max_iter=1000).fit(  # noqa: E731
        np.r_[a, b], np.r_[np.ones(len(a)), np.zeros(len(b))])
    cv = np.zeros(len(x))
    for train, test in KFold(5, shuffle=True, random_state=0).split(x):
        cv[test] = x[test] @ fit(x[train], xi[train]).coef_[0]
    model = fit(x, xi)
    print("weights:", dict(zip(keys, np.round(model.coef_[0], 2))), " in the package:", CUE_WEIGHTS)
    inverted = np.array([n in set(args.inverted) for n in names])
    ok = cv[~inverted]
    print(f"{len(x)} images; correct films, cross-validated score: min {ok.min():+.2f}, 1st percentile "
          f"{np.percentile(ok, 1):+.2f}, median {np.median(ok):+.2f} (as-shown from {AS_SHOWN_FROM:+g}, "
          f"inverted up to {INVERTED_TO:+g})")
    for i in np.flatnonzero(inverted):
        print(f"  known inverted {names[i]}: {cv[i]:+.2f}")
    print("lowest cross-validated scores:")
    for i in np.argsort(np.where(inverted, -cv, cv))[:10]:
        print(f"  {names[i]}: {cv[i]:+.2f} " + ", ".join(f"{k}={v:+.3f}" for k, v in zip(keys, x[i])))


if __name__ == "__main__":
    main()
