"""Render report blocks as one self-contained HTML page, and that page as a PDF.

Block types: banner, h1/h2/h3 (``new_page``: a PDF page break before), p (style: summary |
note | warn), kv (key-value pairs), list, table (optional ``muted`` rows, ``caption``; one
without rows is a sentence; a cell may be a :class:`Link`), figure (PNG by ``key``), pre
(monospace text). The PDF is the same HTML laid out for A4 by WeasyPrint (a real CSS engine),
so the two documents cannot disagree, and text stays text.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fibrosis.io import atomic_target

Block = dict[str, Any]


@dataclass(frozen=True)
class Link:
    """A table cell that links to ``href`` (a relative address: the page stays self-contained)."""
    text: str
    href: str


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
dl.kv dt{font-weight:600}dl.kv dd{margin:0}.tok{overflow-wrap:anywhere}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #ddd}
.figrow{display:flex;gap:16px;flex-wrap:wrap}.figrow figure{flex:1 1 440px;margin:10px 0}
figcaption{font-size:13px;color:#444}
pre{background:#f6f6f6;padding:10px;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
.scroll{max-width:100%}
/* screen only: WeasyPrint (the PDF) does not know these properties and skips screen rules */
@media screen{.scroll{overflow-x:auto}.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
@media screen{@media (max-width:640px){body{padding:0 10px 30px;font-size:14px}dl.kv{grid-template-columns:1fr}
 dl.kv dd{margin-bottom:6px}h1{font-size:21px}h2{font-size:18px}}}
"""
# The PDF is this same HTML paginated by WeasyPrint, so the two cannot say different things;
# these rules (also used when a browser prints the page) fit it to A4, keep headings with
# what follows, and number every page, since PDFs get printed and read a page at a time.
CSS += """
@page{size:A4;margin:16mm 13mm;font-family:"DejaVu Sans",Arial,sans-serif;
 @bottom-right{content:"page " counter(page) " of " counter(pages);font-size:8pt;color:#555}
 @bottom-left{content:string(doctitle);font-size:8pt;color:#555}}
@media print{
body{max-width:none;padding:0;font-size:10pt}h1{string-set:doctitle content()}
.banner{margin:0 0 10px}
h2,h3,caption,p.lead{break-after:avoid}h2.newpage{break-before:page}figure,dl.kv,.summary,.warn{break-inside:avoid}
table{font-size:8.5pt;width:100%}th,td{padding:2px 4px;overflow-wrap:break-word}tr{break-inside:avoid}
table.wide{font-size:7.5pt}
.figrow{display:block;break-inside:avoid}.figrow figure{display:inline-block;width:48%;vertical-align:top;
 margin:6px 1% 6px 0}
pre{font-size:7.5pt}}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


_LONG = re.compile(r"(\S{28,})")  # hashes, paths, joined names: the only words allowed to break anywhere


def _text(v: Any) -> str:
    """Escaped text whose long unbreakable tokens may wrap anywhere (ordinary words never break)."""
    parts = _LONG.split(str(v))  # odd indices: the long tokens
    return "".join(f'<span class="tok">{_e(p)}</span>' if i % 2 else _e(p) for i, p in enumerate(parts))


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
    grouped = _group_halves(blocks, figures)
    for i, b in enumerate(grouped):
        t = b["type"]
        if t == "banner":
            out.append(f'<div class="banner" role="alert">{_e(b["text"])}</div>')
        elif t in ("h1", "h2", "h3"):
            out.append(f"<{t}{' class=newpage' if b.get('new_page') else ''}>{_e(b['text'])}</{t}>")
        elif t == "p":
            # a paragraph that introduces a figure stays on its page (PDF)
            lead = i + 1 < len(grouped) and grouped[i + 1]["type"] in ("figure", "figrow")
            style = " ".join(c for c in (b.get("style"), "lead" if lead else None) if c)
            cls = f' class="{style}"' if style else ""
            out.append(f"<p{cls}>{_text(b['text'])}</p>")
        elif t == "list":
            out.append("<ul>" + "".join(f"<li>{_text(i)}</li>" for i in b["items"]) + "</ul>")
        elif t == "kv":
            out.append('<dl class="kv">' + "".join(f"<dt>{_e(k)}</dt><dd>{_text(v)}</dd>" for k, v in b["items"])
                       + "</dl>")
        elif t == "table":
            out.append(_html_table(b))
        elif t == "figure":
            out.append(_html_figure(b, figures))
        elif t == "figrow":
            out.append('<div class="figrow">' + "".join(_html_figure(f, figures) for f in b["items"]) + "</div>")
        elif t == "pre":
            head = f"<h3>{_e(b['caption'])}</h3>" if b.get("caption") else ""
            out.append(f"{head}<pre>{_e(b['text'])}</pre>")
        else:
            raise ValueError(f"report block type {t!r}; allowed: banner, h1, h2, h3, p, list, kv, table, figure, pre")
    out.append("</body></html>")
    return "\n".join(out)


def _html_table(b: Block) -> str:
    """A table in a horizontally scrolling box (a wide table scrolls itself, never the page);
    more than 8 columns print in a smaller font."""
    if not b["rows"]:  # a header over nothing reads as a layout error: say it in words
        return f'<p class="note">{_e(b.get("caption") or "Table")}: none.</p>'
    muted = b.get("muted") or [False] * len(b["rows"])
    rows = "".join(f'<tr{" class=muted" if mu else ""}>' + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>"
                   for r, mu in zip(b["rows"], muted))
    wide = ' class="wide"' if len(b["header"]) > 8 else ""
    return (f'<div class="scroll"><table{wide}><caption>{_e(b.get("caption", ""))}</caption><thead><tr>'
            + "".join(f"<th>{_e(h)}</th>" for h in b["header"]) + f"</tr></thead><tbody>{rows}</tbody></table></div>")


def _cell(c: Any) -> str:
    return f'<a href="{_e(c.href)}">{_text(c.text)}</a>' if isinstance(c, Link) else _text(c)


def _html_figure(b: Block, figures: dict[str, bytes]) -> str:
    data = base64.b64encode(figures[b["key"]]).decode("ascii")
    return (f'<figure><img alt="{_e(b["caption"])}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(b['caption'])}</figcaption></figure>")


# ------------------------------------------------------------------ PDF

def render_pdf(html_text: str, path: str | Path, *, page_banner: str | None = None) -> Path:
    """Write ``html_text`` (from :func:`render_html`) to ``path`` as an A4 PDF with WeasyPrint.

    ``page_banner`` is repeated in red at the top of every page (e.g. "NOT ImageNet-pretrained").
    Written to a temporary name and renamed, so a failed render leaves no partial file.
    """
    from PIL import ImageFile

    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        import weasyprint
    except OSError as exc:  # the Python package is installed, the system library is not
        raise RuntimeError(f"{path}: cannot render the PDF: WeasyPrint needs the system's Pango "
                           f"(Debian: apt-get install libpango-1.0-0 libpangoft2-1.0-0): {exc}") from None
    finally:
        # Importing WeasyPrint sets Pillow's process-wide LOAD_TRUNCATED_IMAGES; left on, a
        # truncated PNG or JPEG 2000 scored later in this process would decode as a partial
        # image instead of an error (the demo scores right after its report).
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    css = ""
    if page_banner:
        css += ("@page{@top-center{content:\"%s\";color:#b00020;font-weight:700;font-size:10px}}"
                % page_banner.replace("\\", "").replace('"', "'"))
    path = Path(path)
    with atomic_target(path) as tmp:  # a full disk: one line naming the PDF, no partial file
        weasyprint.HTML(string=html_text).write_pdf(tmp, stylesheets=[weasyprint.CSS(string=css)] if css else None)
    return path
