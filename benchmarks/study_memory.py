"""Peak RSS and time of the per-study table of `fibrosis score` (``scores.studies.csv``) at
archive scale: a generated ``scores.csv`` of N rows (two images per study, all frontal and
ok, in path order) is aggregated in a fresh child process, which reports its own peak RSS
(VmHWM). A dict per study would peak at 781 MB at 1M rows (107 MB at 100k); the scratch SQLite table keeps it at 44 MB at both.

    nice python benchmarks/study_memory.py --n 100000,1000000
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = ("import sys, time; from pathlib import Path; from fibrosis.score import output as so; t = time.perf_counter(); "
         "k = so.write_studies(Path(sys.argv[1]), Path(sys.argv[2]), 'max'); "
         "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]; "
         "print('RESULT', k, int(hwm) / 1024, time.perf_counter() - t)")


def write_scores(path: Path, n: int) -> None:
    from fibrosis.score import output as so

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(so.COLUMNS)
        for i in range(n):
            r = dict.fromkeys(so.COLUMNS, "")
            r.update(path=f"/archive/src/{i // 1000:04d}/{i:07d}.dcm", status="ok", view_position="PA",
                     study_uid=f"1.2.826.0.1.3680043.9.8.{(i * 7919) % n // 2}",  # a study's images far apart
                     patient_key=f"{(i * 7919) % n // 2:016x}", probability_calibrated=f"{(i % 997) / 997:.6f}",
                     decision_fibrosis=str(int(i % 997 > 498)), threshold_name="youden", threshold="0.5", model_id="m")
            w.writerow([r[c] for c in so.COLUMNS])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="100000,1000000", help="comma-separated row counts")
    args = ap.parse_args()
    for n in [int(x) for x in args.n.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            scores = Path(tmp) / "scores.csv"
            write_scores(scores, n)
            out = subprocess.run([sys.executable, "-c", CHILD, str(scores), str(Path(tmp) / "studies.csv")],
                                 capture_output=True, text=True, check=True, cwd=REPO).stdout
        _, k, rss, secs = next(x for x in out.splitlines() if x.startswith("RESULT")).split()
        print(f"N={n:>8d}  studies {k:>7s}  peak RSS {float(rss):6.0f} MB  {float(secs):6.1f} s", flush=True)


if __name__ == "__main__":
    main()
