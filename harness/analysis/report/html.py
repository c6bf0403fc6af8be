"""The leaderboard as one self-contained HTML file: no server, no network, no CDN.

`leaderboard_html(rows, intro)` renders analysis/leaderboard.py's rows: the loss-against-balance
figure of the closed division on top (an inline SVG, `front_svg`), then one table per division;
a few lines of plain JavaScript sort a table by a column (click its header) and filter rows by
text. `#sort=KEY` or `#sort=-KEY` in the address sorts on load (KEY a column's data-key), so a
link can share an order. Pure functions of a DataFrame; the SVG is written here rather than by
matplotlib so the page is the same bytes on every machine (`reference check` compares them).
"""

from __future__ import annotations

import html
import math

import pandas as pd

WIDTH, HEIGHT, PAD = 960, 480, 56
FLOOR = 0.01  # NOTE: MaxVio 0 (expert choice) on a log axis: drawn at this floor, labelled "<= 0.01"

SCRIPT = """
function cellValue(row, i) {
  const v = row.cells[i].dataset.v;
  const n = parseFloat(v);
  return v === "" || v === undefined ? null : (isNaN(n) ? v : n);
}
function sortTable(table, key, descending) {
  const heads = Array.from(table.tHead.rows[0].cells);
  const i = heads.findIndex(h => h.dataset.key === key);
  if (i < 0) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, i), y = cellValue(b, i);
    if (x === null) return 1;
    if (y === null) return -1;
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return descending ? -c : c;
  });
  rows.forEach(r => body.appendChild(r));
  heads.forEach(h => h.removeAttribute("aria-sort"));
  heads[i].setAttribute("aria-sort", descending ? "descending" : "ascending");
}
function filterRows(text) {
  const q = text.trim().toLowerCase();
  document.querySelectorAll("table.board tbody tr").forEach(r => {
    r.hidden = q !== "" && !r.textContent.toLowerCase().includes(q);
  });
}
document.querySelectorAll("table.board").forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach(h => h.addEventListener("click", () =>
    sortTable(table, h.dataset.key, h.getAttribute("aria-sort") === "ascending")));
});
document.getElementById("filter").addEventListener("input", e => filterRows(e.target.value));
const wanted = new URLSearchParams(location.hash.slice(1)).get("sort");
if (wanted) {
  document.querySelectorAll("table.board").forEach(t =>
    sortTable(t, wanted.replace(/^-/, ""), wanted.startsWith("-")));
}
"""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1400px; padding: 0 16px; color: #222; }
table.board { border-collapse: collapse; width: 100%; margin: 8px 0 28px; font-size: 13px; }
table.board th { cursor: pointer; background: #f0f2f5; position: sticky; top: 0; text-align: left; padding: 4px 6px; }
table.board th[aria-sort=ascending]::after { content: " \\25B2"; }
table.board th[aria-sort=descending]::after { content: " \\25BC"; }
table.board td { border-top: 1px solid #e3e6ea; padding: 3px 6px; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.tied td.method::after { content: " (tied with the first)"; color: #a15c00; font-size: 11px; }
tr.leader td.method { font-weight: 600; }
td.small { font-size: 11px; color: #555; }
#filter { padding: 4px 8px; width: 320px; }
svg text { font: 11px system-ui, sans-serif; }
"""

COLUMNS = [  # (data-key, header, title)
    ("rank", "rank [95 %]", "rank by mean val loss in its setting, with its interval over seed draws"),
    ("method", "method", "the suite's label(s) of this config; rows that trained identically are one"),
    ("val_loss", "val loss [95 %]", "mean over seeds with its t-interval"),
    ("maxvio_global", "MaxVio global [95 %]", "mean over seeds, interval on the log scale"),
    ("speed_vs_dense", "tokens/s / dense", "training tokens/s over the dense twin of equal active width"),
    ("seeds", "seeds (settled)", "seeds run, and how many of them had settled balance by the end"),
    ("diff_vs_baseline", "val loss - baseline [95 %]", "paired over common seeds; unadjusted (exploratory)"),
    ("front_verdict", "against the aux front", "the study's own verdict; hover for the interval"),
    ("studies", "study", "the studies that ran it"),
    ("commit", "commit", "the code the runs ran"),
    ("command", "command", "what reproduces them"),
]


def number(value: float, fmt: str = "{:.3f}") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def with_interval(mean: float, low: float, high: float, fmt: str = "{:.3f}") -> str:
    shown = number(mean, fmt)
    return shown if not shown or math.isnan(low) else f"{shown} [{fmt.format(low)}, {fmt.format(high)}]"


def verdict_word(verdict: str) -> str:
    """The verdict's words without the interval: `not distinguishable from the front`."""
    return "; ".join(part.split(", d = ")[0] for part in str(verdict).split("; ")) if verdict else ""


def cells(row: dict) -> list[tuple[str, str, str]]:
    """(sort value, shown text, css class) per column of one row."""
    seeds = f"{row['seeds']} ({int(row['settled'])})" if not math.isnan(float(row["settled"])) else str(row["seeds"])
    return [
        (str(row["rank"]), f"{row['rank']} [{row['rank_low']}, {row['rank_high']}]", "num"),
        (row["method"], html.escape(row["method"]), "method"),
        (number(row["val_loss"], "{:.6f}"), with_interval(row["val_loss"], row["val_loss_low"], row["val_loss_high"]), "num"),
        (number(row["maxvio_global"], "{:.6f}"),
         with_interval(row["maxvio_global"], row["maxvio_global_low"], row["maxvio_global_high"]), "num"),
        (number(row["speed_vs_dense"], "{:.6f}"), number(row["speed_vs_dense"], "{:.2f}"), "num"),
        (str(row["seeds"]), seeds, "num"),
        (number(row["diff_vs_baseline"], "{:.6f}"),
         (with_interval(row["diff_vs_baseline"], row["diff_low"], row["diff_high"], "{:+.3f}") + f" vs {row['baseline']}")
         if row["baseline"] and not math.isnan(row["diff_vs_baseline"]) else
         ("the baseline" if row["baseline"] and row["baseline"] in row["method"].split(" = ") else ""), "num"),
        (verdict_word(row["front_verdict"]),
         f'<span title="{html.escape(row["front_verdict"])}">{html.escape(verdict_word(row["front_verdict"]))}</span>',
         "small"),
        (row["studies"], html.escape(row["studies"]), "small"),
        (row["commit"], html.escape(row["commit"]), "small"),
        (row["command"], f"<code>{html.escape(row['command'])}</code>", "small"),
    ]


def table_html(rows: pd.DataFrame, with_setting: bool) -> str:
    columns = ([("setting", "setting", "model, steps x tokens, corpus/vocabulary")] if with_setting else []) + COLUMNS
    head = "".join(f'<th data-key="{key}" title="{html.escape(title)}">{html.escape(name)}</th>'
                   for key, name, title in columns)
    body = []
    for row in rows.to_dict("records"):
        classes = " ".join(c for c, on in (("leader", row["rank"] == 1), ("tied", row["tied_with_first"])) if on)
        tds = ([(row["setting"], html.escape(row["setting"]), "small")] if with_setting else []) + cells(row)
        body.append(f'<tr class="{classes}">' + "".join(
            f'<td class="{css}" data-v="{html.escape(value, quote=True)}">{shown}</td>' for value, shown, css in tds)
            + "</tr>")
    return f'<table class="board"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body) + "\n</tbody></table>"


class Plane:
    """Data to pixels: x as log10 of the value (held at FLOOR), y as is, inside the plot's padding."""

    def __init__(self, x: pd.Series, y: pd.Series):
        self.x0, self.x1 = math.floor(x.min()), math.ceil(x.max())
        self.y0, self.y1 = y.min() - 0.01, y.max() + 0.01

    def px(self, v: float) -> float:
        return PAD + (v - self.x0) / max(self.x1 - self.x0, 1e-9) * (WIDTH - 2 * PAD)

    def py(self, v: float) -> float:
        return HEIGHT - PAD - (v - self.y0) / max(self.y1 - self.y0, 1e-9) * (HEIGHT - 2 * PAD)


def axes_svg(plane: Plane) -> list[str]:
    """The frame, the decade ticks of x, five ticks of y and both axis titles."""
    parts = [f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" fill="none" stroke="#999"/>']
    for decade in range(plane.x0, plane.x1 + 1):
        label = f"&lt;= {FLOOR:g}" if 10.0 ** decade == FLOOR else f"{10.0 ** decade:g}"
        parts.append(f'<text x="{plane.px(decade):.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle">{label}</text>')
    for tick in [plane.y0 + (plane.y1 - plane.y0) * i / 4 for i in range(5)]:
        parts.append(f'<text x="{PAD - 6}" y="{plane.py(tick) + 4:.1f}" text-anchor="end">{tick:.3f}</text>')
    return parts + [
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">MaxVio_global (log scale; lower is better '
        'balanced)</text>',
        f'<text x="14" y="{HEIGHT / 2}" transform="rotate(-90 14 {HEIGHT / 2})" text-anchor="middle">val loss (lower '
        'is better)</text>',
        f'<text x="{PAD + 8}" y="{PAD + 16}" fill="#c0392b">red: aux-loss fronts, each joined in the order of its '
        'alpha and named at its largest</text>']


def points_svg(rows: pd.DataFrame, plane: Plane, x: pd.Series) -> list[str]:
    """Each front's line in the order of its alpha, then every row as a dot with its title."""
    parts = []
    fronts = rows.assign(_x=x)[rows["front_family"] != ""].sort_values("front_alpha")  # NOTE: alpha's order
    for family, front in fronts.groupby("front_family", sort=True):
        points = " ".join(f"{plane.px(a):.1f},{plane.py(b):.1f}" for a, b in zip(front["_x"], front["val_loss"]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#c0392b" stroke-width="1.2" opacity="0.7"/>')
        last = front.iloc[-1]
        parts.append(f'<text x="{plane.px(last["_x"]) + 6:.1f}" y="{plane.py(last["val_loss"]) + 4:.1f}" '
                     f'fill="#c0392b">{html.escape(family)} (alpha {last["front_alpha"]:g})</text>')
    for row, a in zip(rows.to_dict("records"), x):
        cx, cy = plane.px(a), plane.py(row["val_loss"])
        tip = f"{row['method']}: val loss {row['val_loss']:.3f}, MaxVio_global {row['maxvio_global']:.3f}"
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{"#c0392b" if row["front_family"] else "#1f5fa8"}">'
                     f"<title>{html.escape(tip)}</title></circle>")
        if not row["front_family"]:
            parts.append(f'<text x="{cx + 6:.1f}" y="{cy - 5:.1f}" fill="#555">{html.escape(row["method"].split(" = ")[0])}'
                         "</text>")
    return parts


def front_svg(rows: pd.DataFrame) -> str:
    """Val loss against MaxVio_global (log) of one division's rows: each aux-loss front's members
    joined by a line, every other row a labelled dot; each point's title gives its numbers."""
    x = rows["maxvio_global"].clip(lower=FLOOR).map(math.log10)
    plane = Plane(x, rows["val_loss"])
    return "\n".join([f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
                      'aria-label="val loss against MaxVio_global">', *axes_svg(plane), *points_svg(rows, plane, x),
                      "</svg>"])


def leaderboard_html(rows: pd.DataFrame, title: str, intro: list[str]) -> str:
    """The page: title, the first intro paragraph (HTML), the closed division's figure, the other
    paragraphs, the closed division's table and the open one's."""
    closed, open_ = rows[rows["division"] == "closed"], rows[rows["division"] == "open"]
    setting = closed["setting"].iloc[0] if len(closed) else ""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>", f"<p>{intro[0]}</p>",
        f'<figure id="front">{front_svg(closed)}<figcaption>The closed division ({html.escape(setting)}): val loss '
        "against MaxVio_global, means over seeds; each red line joins one aux-loss front's alphas, smallest to "
        "largest. Hover a point for its method.</figcaption></figure>" if len(closed) else "",
        *[f"<p>{p}</p>" for p in intro[1:]],
        '<p><label>Filter rows: <input id="filter" type="search" placeholder="a method, family, study..."></label> '
        "Click a column's header to sort by it.</p>",
        f"<h2>Closed division: {html.escape(setting)}</h2>",
        table_html(closed, with_setting=False),
        "<h2>Open division: every other setting, ranked within its setting</h2>",
        table_html(open_, with_setting=True),
        f"<script>{SCRIPT}</script>", "</body></html>", ""])
