"""The report page, written twice in step: Markdown (images in plots/) and self-contained HTML
(images embedded, so the page can be mailed as one file)."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness import tables


def markdown_table(table: pd.DataFrame) -> str:
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    rows = [[str(i)] + [str(v) for v in row] for i, row in zip(table.index, table.itertuples(index=False))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(table: pd.DataFrame) -> str:
    """The table as HTML, its markdown bold (**best**) as <b>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", table.to_html(escape=True))


def _png_base64(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=130, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


class Page:
    """A report written twice in step: Markdown (images in plots/) and self-contained HTML."""

    def __init__(self, folder: Path, title: str):
        self.folder, self.title = folder, title
        self.md = [f"# {title}", ""]
        self.html = [f"<h1>{html.escape(title)}</h1>"]

    def section(self, heading: str) -> None:
        self.md += [f"## {heading}", ""]
        self.html.append(f"<h2>{html.escape(heading)}</h2>")

    def text(self, markdown: str, plain: str | None = None, code: str | None = None) -> None:
        """A paragraph; `plain` is its HTML-escaped form where Markdown differs, `code` an inline code suffix."""
        self.md += [markdown, ""]
        body = html.escape(plain if plain is not None else markdown)
        self.html.append(f"<p>{body}{'' if code is None else f'<code>{html.escape(code)}</code>.'}</p>")

    def bullets(self, lines: list[str]) -> None:
        self.md += [f"- {line}" for line in lines] + [""]
        self.html.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")

    def table(self, frame: pd.DataFrame, as_html: str | None = None) -> None:
        self.md += [markdown_table(frame), ""]
        self.html.append(as_html if as_html is not None else _html_table(frame))

    def figure(self, stem: str, fig: plt.Figure, caption: str) -> None:
        fig.savefig(self.folder / "plots" / f"{stem}.png", dpi=150)
        self.md += [f"![{stem}](plots/{stem}.png)", "", f"*{caption}*", ""]
        self.html.append(f'<figure><img alt="{stem}" src="data:image/png;base64,{_png_base64(fig)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        plt.close(fig)

    def write(self) -> list[Path]:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
                 "td,th{padding:3px 8px;border-bottom:1px solid #ddd}img{max-width:100%}")
        page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title.split(':')[0])}" \
               f"</title><style>{style}</style></head><body>{''.join(self.html)}</body></html>"
        tables.write_text_atomic(self.folder / "report.html", page)
        tables.write_text_atomic(self.folder / "report.md", "\n".join(self.md))
        return [self.folder / "report.html", self.folder / "report.md"]
