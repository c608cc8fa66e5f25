"""Render report blocks as one self-contained HTML page and as a PDF (matplotlib PdfPages).

Block types: banner, h1/h2/h3, p (style: summary | note | warn), kv (key-value
pairs), list, table (optional ``muted`` rows, ``caption``), figure (PNG by ``key``),
pre (monospace text). Both renderers take the same blocks, so the PDF is the HTML's
content; PdfPages needs nothing beyond matplotlib.
"""
from __future__ import annotations

import base64
import functools
import html
import io
from pathlib import Path
from typing import Any

Block = dict[str, Any]

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:#1b1b1b;
 max-width:1040px;margin:0 auto;padding:0 20px 40px;line-height:1.45;font-size:15px}
.banner{background:#b00020;color:#fff;font-weight:700;font-size:17px;padding:14px 18px;margin:0 -20px 12px;
 border-bottom:4px solid #6d0014}
h1{font-size:25px;margin:18px 0 8px}h2{font-size:20px;margin:30px 0 8px;border-bottom:2px solid #0072B2;
 padding-bottom:3px}h3{font-size:16px;margin:18px 0 6px}
.summary{background:#eef5fb;border-left:5px solid #0072B2;padding:10px 14px;font-size:16px}
.note{color:#444;font-size:13.5px;background:#f6f6f6;padding:6px 10px;border-radius:4px}
.warn{background:#fff4e5;border-left:5px solid #E69F00;padding:8px 12px}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13.5px}
th,td{border:1px solid #c9c9c9;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr.muted td{color:#8a8a8a;background:#fafafa;font-style:italic}
caption{text-align:left;font-weight:600;padding:2px 0 4px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:6px 0 12px}
dl.kv dt{font-weight:600}dl.kv dd{margin:0;word-break:break-all}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #ddd}
.figrow{display:flex;gap:16px;flex-wrap:wrap}.figrow figure{flex:1 1 440px;margin:10px 0}
figcaption{font-size:13px;color:#444}
pre{background:#f6f6f6;padding:10px;font-size:12px;overflow-x:auto;max-height:520px}
@media print{.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}figure{break-inside:avoid}}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _group_halves(blocks: list[Block], figures: dict[str, bytes]) -> list[Block]:
    """Consecutive ``half`` figures become one side-by-side row (same in HTML and PDF)."""
    out: list[Block] = []
    for b in blocks:
        if b["type"] == "figure" and b["key"] not in figures:
            continue
        if b["type"] == "figure" and b.get("half") and out and out[-1]["type"] == "figrow" \
                and len(out[-1]["items"]) < 2:
            out[-1]["items"].append(b)
        elif b["type"] == "figure" and b.get("half"):
            out.append({"type": "figrow", "items": [b]})
        else:
            out.append(b)
    return out


def render_html(blocks: list[Block], figures: dict[str, bytes], title: str) -> str:
    """One HTML document; figures inlined as base64 PNG (no external requests at all)."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width,initial-scale=1">',
           f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"]
    for b in _group_halves(blocks, figures):
        t = b["type"]
        if t == "banner":
            out.append(f'<div class="banner" role="alert">{_e(b["text"])}</div>')
        elif t in ("h1", "h2", "h3"):
            out.append(f"<{t}>{_e(b['text'])}</{t}>")
        elif t == "p":
            cls = f' class="{b["style"]}"' if b.get("style") else ""
            out.append(f"<p{cls}>{_e(b['text'])}</p>")
        elif t == "list":
            out.append("<ul>" + "".join(f"<li>{_e(i)}</li>" for i in b["items"]) + "</ul>")
        elif t == "kv":
            out.append('<dl class="kv">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in b["items"])
                       + "</dl>")
        elif t == "table":
            muted = b.get("muted") or [False] * len(b["rows"])
            rows = "".join(f'<tr{" class=muted" if mu else ""}>' + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>"
                           for r, mu in zip(b["rows"], muted))
            out.append(f"<table><caption>{_e(b.get('caption', ''))}</caption><thead><tr>"
                       + "".join(f"<th>{_e(h)}</th>" for h in b["header"])
                       + f"</tr></thead><tbody>{rows}</tbody></table>")
        elif t == "figure":
            out.append(_html_figure(b, figures))
        elif t == "figrow":
            out.append('<div class="figrow">' + "".join(_html_figure(f, figures) for f in b["items"]) + "</div>")
        elif t == "pre":
            out.append(f"<h3>{_e(b.get('caption', ''))}</h3><pre>{_e(b['text'])}</pre>")
        else:
            raise ValueError(f"report block type {t!r}; allowed: banner, h1, h2, h3, p, list, kv, table, figure, pre")
    out.append("</body></html>")
    return "\n".join(out)


def _html_figure(b: Block, figures: dict[str, bytes]) -> str:
    data = base64.b64encode(figures[b["key"]]).decode("ascii")
    return (f'<figure><img alt="{_e(b["caption"])}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(b['caption'])}</figcaption></figure>")


# ------------------------------------------------------------------ PDF


@functools.lru_cache(maxsize=20000)
def text_width(text: str, size: float, weight: str = "normal", family: str = "sans-serif",
               style: str = "normal") -> float:
    """Width in inches of ``text`` as matplotlib will draw it (real font metrics)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(family=family, weight=weight, style=style, size=size)
    w, _, _ = TextToPath().get_text_width_height_descent(text, prop, ismath=False)
    return w / 72.0


def wrap(text: str, width: float, size: float, weight: str = "normal", family: str = "sans-serif",
         style: str = "normal") -> list[str]:
    """Greedy word wrap to ``width`` inches; words longer than a line are split."""
    fits = lambda t: text_width(t, size, weight, family, style) <= width  # noqa: E731
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if fits(cand):
                line = cand
                continue
            if line:
                lines.append(line)
            while not fits(word) and len(word) > 1:  # hashes, long paths: hard break
                k = len(word) - 1
                while k > 1 and not fits(word[:k]):
                    k -= 1
                lines.append(word[:k])
                word = word[k:]
            line = word
        lines.append(line)
    return lines


class _Pdf:
    """Flows blocks down A4 pages of matplotlib text; figures at page or half-page width."""

    W, H, M = 8.27, 11.69, 0.6  # inches: A4 portrait, margin

    def __init__(self, pdf: Any, title: str, banner: str | None):
        self.pdf, self.title, self.banner = pdf, title, banner
        self.page, self.fig, self.y = 0, None, 0.0

    def _new_page(self) -> None:
        from matplotlib.figure import Figure

        self._flush()
        self.page += 1
        self.fig = Figure(figsize=(self.W, self.H))
        self.y = self.H - self.M
        foot = f"{self.title}  -  page {self.page}"
        self.fig.text(self.M / self.W, 0.3 / self.H, foot, fontsize=7.5, color="#666")
        if self.banner:
            self.fig.text(1 - self.M / self.W, 0.3 / self.H, self.banner, fontsize=7.5, color="#b00020",
                          ha="right", weight="bold")

    def _flush(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig = None

    def need(self, h: float) -> None:
        if self.fig is None or self.y - h < self.M + 0.2:
            self._new_page()

    def text(self, s: str, size: float = 10, weight: str = "normal", color: str = "#1b1b1b",
             indent: float = 0.0, family: str = "sans-serif", bg: str | None = None,
             width: float | None = None) -> None:
        width = width or self.W - 2 * self.M - indent
        lh = size / 72 * 1.4
        for line in wrap(s, width - (0.06 if bg else 0.0), size, weight, family):
            self.need(lh)
            self.y -= lh
            kw = {"bbox": {"fc": bg, "ec": "none", "pad": 2}} if bg else {}
            self.fig.text((self.M + indent) / self.W, self.y / self.H, line, fontsize=size, weight=weight,
                          color=color, family=family, va="bottom", **kw)

    def gap(self, h: float) -> None:
        self.y -= h

    def table(self, header: list[str], rows: list[list[Any]], muted: list[bool], caption: str) -> None:
        cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
        ncol = len(header)
        width = self.W - 2 * self.M
        size = 8.0 if ncol <= 6 else 7.0
        pad = 0.1

        def w(t: str, i: int) -> float:
            return text_width(t, size, "bold" if i == 0 else "normal")

        natural = [max(w(r[j], i) for i, r in enumerate(cells)) + pad for j in range(ncol)]
        # never narrower than the longest word of a column: numbers must not break mid-value
        floor = [max(w(word, i) for i, r in enumerate(cells) for word in (r[j].split() or [""])) + pad
                 for j in range(ncol)]
        colw = list(natural)
        while sum(colw) > width + 1e-6:
            slack = [c - f for c, f in zip(colw, floor)]
            if max(slack) <= 1e-6:
                break  # cannot shrink further; the table runs a little wide
            excess = sum(colw) - width
            total = sum(sl for sl in slack if sl > 0)
            colw = [max(f, c - excess * sl / total) if sl > 0 else c for c, f, sl in zip(colw, floor, slack)]
        self.need(0.5)
        self.text(caption, size=9, weight="bold")
        lh = size / 72 * 1.35
        for i, r in enumerate(cells):
            wrapped = [wrap(c, colw[j] - pad + 1e-3, size, "bold" if i == 0 else "normal")
                       for j, c in enumerate(r)]
            nl = max(len(x) for x in wrapped)
            self.need(nl * lh + 0.04)
            top = self.y
            grey = i > 0 and muted[i - 1]
            x = self.M
            for j, lines in enumerate(wrapped):
                for k, line in enumerate(lines):
                    self.fig.text(x / self.W, (top - (k + 1) * lh) / self.H, line, fontsize=size, va="bottom",
                                  weight="bold" if i == 0 else "normal", color="#8a8a8a" if grey else "#1b1b1b",
                                  style="italic" if grey else "normal")
                x += colw[j]
            self.y = top - nl * lh - 0.04
            self.fig.add_artist(_hline(self.M / self.W, (self.M + width) / self.W, (self.y + 0.02) / self.H,
                                       "#999" if i == 0 else "#ddd"))
        self.gap(0.12)

    def image(self, png: bytes, caption: str) -> None:
        self.images([(png, caption)])

    def images(self, items: list[tuple[bytes, str]]) -> None:
        """One figure at page width, or two side by side, captions underneath."""
        import matplotlib.image as mpimg

        gutter = 0.2
        slot = (self.W - 2 * self.M - gutter * (len(items) - 1)) / len(items)
        decoded = [mpimg.imread(io.BytesIO(png), format="png") for png, _ in items]
        sizes = []
        for img in decoded:
            h_px, w_px = img.shape[:2]
            w, h = slot, slot * h_px / w_px
            if h > self.H - 2 * self.M - 0.8:
                h = self.H - 2 * self.M - 0.8
                w = h * w_px / h_px
            sizes.append((w, h))
        row_h = max(h for _, h in sizes)
        room = self.y - (self.M + 0.2) - 0.46 if self.fig is not None else 0.0
        if row_h > room >= 0.65 * row_h:  # shrink a little rather than orphan the heading above
            sizes = [(w * room / row_h, h * room / row_h) for w, h in sizes]
            row_h = room
        self.need(row_h + 0.45)
        top = self.y
        for k, (img, (w, h), (_, caption)) in enumerate(zip(decoded, sizes, items)):
            x = self.M + k * (slot + gutter)
            ax = self.fig.add_axes((x / self.W, (top - h) / self.H, w / self.W, h / self.H))
            ax.imshow(img, interpolation="lanczos")
            ax.axis("off")
            self.y = top - row_h - 0.05
            self.text(caption, size=8, color="#444", indent=x - self.M, width=slot)
            bottom = self.y if k == 0 else min(bottom, self.y)
        self.y = bottom
        self.gap(0.1)

    def close(self) -> None:
        self._flush()


def _hline(x0: float, x1: float, y: float, colour: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], lw=0.5, color=colour)


def render_pdf(blocks: list[Block], figures: dict[str, bytes], path: str | Path, *, title: str,
               page_banner: str | None = None) -> Path:
    """Write the blocks to ``path`` as an A4 PDF (text pages with the figures in flow)."""
    from matplotlib.backends.backend_pdf import PdfPages

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with PdfPages(tmp, metadata={"Title": title, "Creator": "fibrosis"}) as pdf:
        doc = _Pdf(pdf, title, page_banner)
        for b in _group_halves(blocks, figures):
            t = b["type"]
            if t == "banner":
                doc.need(0.6)
                doc.text(b["text"], size=12, weight="bold", color="white", bg="#b00020")
                doc.gap(0.15)
            elif t in ("h1", "h2", "h3"):
                size = {"h1": 17, "h2": 13.5, "h3": 11}[t]
                doc.need(0.9 if t != "h1" else 0.4)  # keep a heading with what follows it
                doc.gap(0.12 if t != "h1" else 0)
                doc.text(b["text"], size=size, weight="bold", color="#0b3c5d" if t == "h2" else "#1b1b1b")
                doc.gap(0.05)
            elif t == "p":
                colour = {"note": "#444", "warn": "#8a4b00"}.get(b.get("style"), "#1b1b1b")
                summary = b.get("style") == "summary"
                doc.text(b["text"], size=10.5 if summary else 9.5, color="#0b3c5d" if summary else colour)
                doc.gap(0.08)
            elif t == "list":
                for item in b["items"]:
                    doc.text(f"- {item}", size=9.5, indent=0.1)
                doc.gap(0.08)
            elif t == "kv":
                for k, v in b["items"]:
                    doc.text(f"{k}: {v}", size=9.5)
                doc.gap(0.08)
            elif t == "table":
                doc.table(b["header"], b["rows"], b.get("muted") or [False] * len(b["rows"]), b.get("caption", ""))
            elif t == "figure":
                doc.image(figures[b["key"]], b["caption"])
            elif t == "figrow":
                doc.images([(figures[f["key"]], f["caption"]) for f in b["items"]])
            elif t == "pre":
                doc.text(b.get("caption", ""), size=11, weight="bold")
                doc.text(b["text"], size=7.5, family="monospace")
        doc.close()
    tmp.replace(path)
    return path
