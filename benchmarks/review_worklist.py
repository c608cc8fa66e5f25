"""`fibrosis review` at archive scale: the worklist's first page and a study view for 100,000 scored
rows against 1,000, in the same run. Each size gets its own server process (`fibrosis review`, as a
user starts it); the requests go over HTTP from here and time the first byte of each response; the
server's RSS (VmRSS, and its peak VmHWM) is read from /proc after the requests.

Rows point at the demo's scoring DICOMs (data/demo/score, with their real content hashes), so a study
view decodes a real file through the pixel function; two images per study, three manufacturers,
random probabilities. No model (``--model``): what is measured is the worklist and the view, not torch.

    nice .venv/bin/python benchmarks/review_worklist.py                 # 1,000 vs 100,000
    nice .venv/bin/python benchmarks/review_worklist.py --sizes 1000,1000000
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fibrosis.io import file_sha256  # noqa: E402
from fibrosis.score.output import META_COLUMNS, RowWriter, meta_path, studies_path, write_studies  # noqa: E402

REPEATS = 7  # warm requests per measure (the median is shown)


def write_scores(path: Path, n: int) -> None:
    files = sorted(p for p in (REPO / "data" / "demo" / "score").glob("*.dcm") if "truncated" not in p.name)
    hashes = [file_sha256(p) for p in files]
    rng = np.random.default_rng(0)
    prob = rng.uniform(size=n)
    rows, meta = RowWriter(path), RowWriter(meta_path(path), META_COLUMNS)
    for i in range(n):
        f = i % len(files)
        rows.write({"path": str(files[f]), "status": "ok", "sop_uid": f"2.25.{i}", "series_uid": f"2.25.{i // 2}.1",
                    "study_uid": f"2.25.{i // 2}.0", "patient_key": f"{i // 4:016x}", "view_position": "PA",
                    "logit": f"{np.log(prob[i] / (1 - prob[i])):.6f}", "probability": f"{prob[i]:.6f}",
                    "decision": int(prob[i] >= 0.5), "threshold_name": "youden", "threshold": "0.5",
                    "model_id": "bench", "engine": "eager", "content_hash": hashes[f] if i < len(files) else
                    f"{i:064x}"})
        meta.write({"path": str(files[f]), "manufacturer": ("ACME", "Zeta", "Other")[i % 3]})
    rows.close()
    meta.close()
    write_studies(path, studies_path(path), "max")  # as `fibrosis score` leaves it


class Server:
    def __init__(self, scores: Path, labels: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "fibrosis.cli", "review", "--scores", str(scores),
                                      "--labels-out", str(labels), "--port", "0", "--reader", "BENCH"],
                                     cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        self.port = 0
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            m = re.search(r"review: open http://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            raise RuntimeError("the server did not start")
        self.ready_s = time.perf_counter() - t0
        threading.Thread(target=lambda: [None for _ in self.proc.stderr or ()], daemon=True).start()

    def get(self, url: str) -> tuple[float, bytes]:
        """(seconds to the first byte of the response, the body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        t0 = time.perf_counter()
        conn.request("GET", url)
        res = conn.getresponse()
        first = res.read(1)
        ttfb = time.perf_counter() - t0
        body = first + res.read()
        conn.close()
        if res.status != 200:
            raise RuntimeError(f"GET {url}: {res.status} {body[:200]!r}")
        return ttfb, body

    def rss_mb(self) -> tuple[float, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)}
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def measure(n: int, folder: Path) -> dict[str, float]:
    scores = folder / f"scores-{n}.csv"
    write_scores(scores, n)
    server = Server(scores, folder / f"labels-{n}.csv")
    try:
        out: dict[str, float] = {"ready_s": server.ready_s}
        cold, page = server.get("/")
        out["first_page_cold_s"] = cold
        out["first_page_s"] = statistics.median(server.get("/")[0] for _ in range(REPEATS))
        out["sorted_page_s"] = statistics.median(
            server.get(f"/?level=image&sort=probability&desc={i % 2}&manufacturer=Zeta")[0] for i in range(REPEATS))
        last = int(re.search(rb"page 1 of (\d+)", page).group(1))  # type: ignore[union-attr]
        out["last_page_s"] = statistics.median(server.get(f"/?page={last}")[0] for _ in range(REPEATS))
        views = [u.decode().replace("&amp;", "&") for u in re.findall(rb'href="(/view/study/[^"]+)"', page)]
        out["study_view_cold_s"] = server.get(views[0])[0]  # decodes the image: the pixel function
        out["study_view_s"] = statistics.median(server.get(views[0])[0] for _ in range(REPEATS))
        out["rss_mb"], out["peak_rss_mb"] = server.rss_mb()
        return out
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,100000", help="baseline,large row counts (default 1000,100000)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    small, large = (int(v) for v in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        res = {n: measure(n, Path(tmp)) for n in (small, large)}
    print(f"{'measure':<22}{small:>12,} rows{large:>12,} rows{'ratio':>10}")
    for key in res[small]:
        a, b = res[small][key], res[large][key]
        unit = "MB" if key.endswith("_mb") else "ms"
        scale = 1 if unit == "MB" else 1000
        print(f"{key:<22}{a * scale:>12.1f} {unit}{b * scale:>12.1f} {unit}{b / a:>9.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"sizes": [small, large], "results": {str(k): v for k, v in res.items()}},
                                        indent=1))


if __name__ == "__main__":
    main()
