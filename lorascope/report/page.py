"""The sweep report as one self-contained HTML page: every image, file, style and script inline (data:
URIs), so the page opens from disk, by mail or in a lab notebook, with no server and no network."""

from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path

from lorascope.report.collect import FINDINGS, Item, Report, RunInfo

MIME = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".pdf": "application/pdf",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".tex": "application/x-tex",
}
LONG_TABLE = 20  # rows above which a table starts folded
STATUS_CLASS = {"complete": "ok", "skipped": "ok", "failed": "bad"}

CSS = """
:root { --fg: #1d2330; --muted: #5d6675; --line: #dde1e8; --bg: #f6f7f9; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       background: var(--bg); }
nav { position: fixed; top: 0; left: 0; bottom: 0; width: 230px; overflow-y: auto; padding: 18px 14px;
      background: #fff; border-right: 1px solid var(--line); font-size: 13px; }
nav a { display: block; color: var(--fg); text-decoration: none; padding: 3px 6px; border-radius: 4px; }
nav a:hover { background: var(--bg); color: var(--accent); }
nav .title { font-weight: 600; font-size: 15px; margin-bottom: 10px; word-break: break-all; }
main { margin-left: 230px; padding: 24px 32px 80px; max-width: 1500px; }
h1 { margin: 0 0 4px; font-size: 24px; } h2 { margin: 36px 0 10px; font-size: 19px; }
.meta { color: var(--muted); font-size: 13px; }
section { scroll-margin-top: 12px; }
table { border-collapse: collapse; background: #fff; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #eef1f6; position: sticky; top: 0; cursor: pointer; }
td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; max-width: 420px; }
.ok { color: #17803d; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.other { color: #a15c00; font-weight: 600; }
details > summary { cursor: pointer; color: var(--accent); }
pre { background: #f1f3f6; padding: 8px; overflow-x: auto; font-size: 12px; text-align: left;
      max-height: 420px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 16px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.card.wide { grid-column: 1 / -1; overflow-x: auto; }
.card img { width: 100%; height: auto; cursor: zoom-in; display: block; }
.card .name { font-family: ui-monospace, monospace; font-size: 12px; color: var(--muted); }
.files a { font-size: 12px; margin-right: 8px; color: var(--accent); }
.markdown { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 4px 20px; }
.markdown table { font-size: 12px; }
#zoom { position: fixed; inset: 0; background: rgba(20, 24, 32, .85); display: none; cursor: zoom-out;
        align-items: center; justify-content: center; z-index: 10; }
#zoom img { max-width: 96vw; max-height: 96vh; background: #fff; }
"""

# A little behaviour: zoom an image, sort the runs table, open or close every run's config at once.
JS = """
(function () {
  var zoom = document.getElementById("zoom"), big = zoom.querySelector("img");
  document.querySelectorAll(".card img").forEach(function (img) {
    img.addEventListener("click", function () { big.src = img.src; zoom.style.display = "flex"; });
  });
  zoom.addEventListener("click", function () { zoom.style.display = "none"; });
  document.querySelectorAll("a[data-image]").forEach(function (a) {
    a.href = document.getElementById(a.getAttribute("data-image")).src;  // the image's own data: URI
  });
  var table = document.getElementById("runs-table");
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.getAttribute("data-dir") === "up" ? -1 : 1;
      th.setAttribute("data-dir", dir === 1 ? "up" : "down");
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        var nx = parseFloat(x), ny = parseFloat(y);
        if (!isNaN(nx) && !isNaN(ny)) { return dir * (nx - ny); }
        return dir * String(x).localeCompare(String(y));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var toggle = document.getElementById("toggle-configs");
  toggle.addEventListener("click", function () {
    var all = document.querySelectorAll("#runs details"), open = toggle.textContent.indexOf("open") === 0;
    all.forEach(function (d) { d.open = open; });
    toggle.textContent = open ? "close every config" : "open every config";
  });
})();
"""


def data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix, "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    # html=False: Markdown from run folders is shown, never executed as markup.
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-v="">–</td>'
    if column == "status":
        cls = STATUS_CLASS.get(str(value), "other")
        return f'<td class="text {cls}" data-v="{_esc(value)}">{_esc(value)}</td>'
    if isinstance(value, float):
        shown = f"{value:.1f} s" if column == "wall_time_s" else f"{value:.4g}"
        return f'<td data-v="{value!r}">{shown}</td>'
    cls = ' class="text"' if isinstance(value, str) else ""
    return f'<td{cls} data-v="{_esc(value)}">{_esc(value)}</td>'


def _runs_table(runs: list[RunInfo], columns: list[str]) -> str:
    names = {"wall_time_s": "wall time", "val_accuracy": "accuracy", "val_loss": "val loss"}
    head = "".join(f"<th>{_esc(names.get(c, c.replace('_', ' ')))}</th>" for c in [*columns, "config"])
    rows = []
    for r in runs:
        cells = "".join(_cell(c, r.row.get(c)) for c in columns)
        details = (
            f"<details><summary>config.yaml</summary><pre>{_esc(r.config or '(none)')}</pre></details>"
            f"<details><summary>summary.json</summary><pre>{_esc(r.summary or '(none)')}</pre></details>"
        )
        rows.append(f'<tr data-run="{_esc(r.name)}">{cells}<td class="text">{details}</td></tr>')
    return (
        '<button id="toggle-configs" type="button">open every config</button>'
        f'<table id="runs-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _card(item: Item, n: int) -> str:
    image, table = item.image, item.table
    body, links = "", []
    if image is not None:
        body = f'<img id="img{n}" src="{data_uri(image)}" alt="{_esc(item.stem)}">'
    elif table is not None:
        text = table.read_text(errors="replace")
        body = markdown(text)
        rows = max(0, text.count("\n|") - 1)  # Markdown table lines less the header rule
        if rows > LONG_TABLE:  # a table of every layer is there to look things up: folded
            body = f"<details><summary>{rows} rows</summary>{body}</details>"
    for suffix, path in sorted(item.files.items()):
        kb = f"{path.stat().st_size / 1024:.0f} kB"
        if path == image:  # the image is in the page already: its link borrows the data: URI by script
            href = f'href="#img{n}" data-image="img{n}"'
        else:
            href = f'href="{data_uri(path)}"'
        links.append(f'<a {href} download="{_esc(path.name)}" data-file="{_esc(path.name)}">'
                     f"{_esc(suffix.lstrip('.').upper())} <small>({kb})</small></a>")  # fmt: skip
    caption = f" — {_esc(item.caption)}" if item.caption else ""
    wide = " wide" if image is None else ""
    return (
        f'<div class="card{wide}" id="{_esc(item.stem)}">{body}'
        f'<div class="name">{_esc(item.stem)}{caption}</div><div class="files">{"".join(links)}</div></div>'
    )


def render(report: Report) -> str:
    """The whole page, as one string."""
    nav = ['<a href="#runs">Runs</a>']
    parts = [f'<section id="runs"><h2>Runs</h2>{_runs_table(report.runs, report.columns)}</section>']
    if report.findings:
        nav.append('<a href="#findings">Findings</a>')
        parts.append(
            f'<section id="findings"><h2>Findings</h2><div class="markdown">{markdown(report.findings)}</div>'
            f'<div class="files"><a href="{data_uri(report.figures_dir / FINDINGS)}" download="{FINDINGS}" '
            f'data-file="{FINDINGS}">findings.md</a></div></section>'
        )
    n = 0
    for s in report.sections:
        nav.append(f'<a href="#sec-{_esc(s.key)}">{_esc(s.label)}</a>')
        cards = []
        for item in s.items:
            cards.append(_card(item, n))
            n += 1
        grid = f'<div class="grid">{"".join(cards)}</div>'
        parts.append(f'<section id="sec-{_esc(s.key)}"><h2>{_esc(s.title)}</h2>{grid}</section>')
    if report.figures_dir is None:
        parts.append(
            f"<p>No figures yet: <code>lorascope figures {_esc(report.sweep)}</code> draws them.</p>"
        )
    counts: dict[str, int] = {}
    for r in report.runs:
        counts[str(r.row.get("status"))] = counts.get(str(r.row.get("status")), 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    title = _esc(report.sweep.name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>lorascope: {title}</title><style>{CSS}</style></head>
<body><nav><div class="title">{title}</div>{"".join(nav)}</nav>
<main><h1>{title}</h1>
<div class="meta">{_esc(report.sweep)} · {len(report.runs)} runs ({_esc(summary)}) ·
{sum(len(s.items) for s in report.sections)} figures and tables · written
{time.strftime("%Y-%m-%d %H:%M")} by <code>lorascope report</code></div>
{"".join(parts)}</main>
<div id="zoom"><img alt="zoomed figure"></div>
<script>{JS}</script></body></html>
"""
