"""Screenshots of `fibrosis review` for the README: the worklist and a study view with its Grad-CAM
overlay, taken by Playwright driving Debian's chromium (no browser download).

    .venv/bin/python scripts/review_screenshots.py --scores work/demo/scores.csv \\
        --run work/demo/mobilenet_v2-demo --out docs/screenshots

The server runs on a free port with a throw-away labels file: taking the pictures records no label.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("review_screenshots")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scores", type=Path, required=True, help="scores CSV written by `fibrosis score`")
    ap.add_argument("--run", type=Path, required=True, help="the run that scored them")
    ap.add_argument("--labels", type=Path, default=None,
                    help="a reader labels file to show (copied: the copy is the one the server may write)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="folder for the PNGs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    labels = Path(tempfile.mkdtemp(prefix="review-shots-")) / "labels.csv"
    if args.labels is not None:
        shutil.copyfile(args.labels, labels)
    cmd = [sys.executable, "-m", "fibrosis.cli", "review", "--scores", str(args.scores), "--run", str(args.run),
           "--labels-out", str(labels), "--reader", "JD", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = ""
        assert proc.stderr is not None
        for line in proc.stderr:
            m = re.search(r"review: open (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        if not url:
            raise SystemExit("`fibrosis review` did not start")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 880}, device_scale_factor=1)
            page.goto(url + "?sort=probability&desc=1")
            page.screenshot(path=str(args.out / "review-worklist.png"))
            page.click("#worklist tbody tr:first-child a.open")
            page.wait_for_selector("#overlay-toggle")
            page.click("#overlay-toggle")
            for _ in range(600):  # the heat map is computed on its first request
                if page.eval_on_selector("#heat", "img => img.complete && img.naturalWidth > 0"):
                    break
                page.wait_for_timeout(50)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(args.out / "review-study.png"))
            browser.close()
        logger.info("screenshots: %s, %s", args.out / "review-worklist.png", args.out / "review-study.png")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


if __name__ == "__main__":
    main()
