"""Self-contained HTML rendering of the report: inline CSS, tables as HTML, figures as base64 ``data:`` URIs.

The page loads nothing: no external style sheet, script, font or image, so it can be mailed or archived
as one file.
"""

from __future__ import annotations

import base64
from html import escape

from custom.report.document import FigureBlock, Paragraph, Report
from custom.report.tables import PAPER_COLUMN, Table

__all__ = ["STYLE", "render_html"]

#: The page's whole style sheet.
STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
dl.fields { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dl.fields dt { font-weight: 600; } dl.fields dd { margin: 0; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; word-break: break-all; }
table { border-collapse: collapse; margin: .6em 0 1.4em; font-size: .9em; }
caption { caption-side: top; text-align: left; padding-bottom: .4em; }
caption .title { font-weight: 600; }
th, td { border: 1px solid #d0d0d0; padding: .25em .55em; }
th { background: #f0f0f0; }
td.r { text-align: right; font-variant-numeric: tabular-nums; } td.l { text-align: left; }
th.paper, td.paper { background: #f4f1fa; color: #4b3f72; font-style: italic; }
tr.met td:nth-child(4) { color: #176b2c; font-weight: 600; }
tr.missed td { background: #fdecea; } tr.missed td:nth-child(4) { color: #a0201b; font-weight: 700; }
tr.not-run td { color: #888; }
p.note { border-left: 4px solid #bbb; padding: .3em .8em; color: #555; background: #fafafa; }
p.alert { border-left: 4px solid #c0392b; padding: .3em .8em; background: #fdecea; font-weight: 600; }
figure { margin: 1em 0 1.6em; } figure img { max-width: 100%; border: 1px solid #e0e0e0; }
figcaption { font-size: .9em; color: #333; margin-top: .3em; }
"""


def _paragraph(block: Paragraph) -> str:
    css = f' class="{block.kind}"' if block.kind in ("note", "alert", "caption") else ""
    return f"<p{css}>{escape(block.text)}</p>"


def _table(block: Table) -> str:
    paper = [c.startswith(PAPER_COLUMN) for c in block.columns]
    head = "".join(f'<th class="paper">{escape(c)}</th>' if p else f"<th>{escape(c)}</th>"
                   for c, p in zip(block.columns, paper))
    body = []
    for i, row in enumerate(block.rows):
        style = block.row_classes[i] if i < len(block.row_classes) else None
        cells = "".join(
            f'<td class="{a}{" paper" if p else ""}">{escape(cell)}</td>' for cell, a, p in zip(row, block.align, paper)
        )
        body.append((f'<tr class="{style}">' if style else "<tr>") + cells + "</tr>")
    caption = f'<span class="title">{escape(block.title)}.</span> {escape(block.caption)}'
    return (f"<table>\n<caption>{caption}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>")


def _figure(block: FigureBlock) -> str:
    data = base64.b64encode(block.png).decode("ascii")
    return (f'<figure>\n<img src="data:image/png;base64,{data}" alt="{escape(block.title)}">\n'
            f"<figcaption><strong>{escape(block.title)}.</strong> {escape(block.caption)}</figcaption>\n</figure>")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page.

    Args:
        report: the document from :func:`custom.report.document.build_report`.

    Returns:
        HTML text with the style sheet inline and every figure embedded as a base64 PNG ``data:`` URI.
    """
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{escape(report.title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{escape(report.title)}</h1>", '<dl class="fields">']
    for label, value in report.fields:
        shown = f"<code>{escape(value)}</code>" if label == "Command" else escape(value)
        parts.append(f"<dt>{escape(label)}</dt><dd>{shown}</dd>")
    parts.append("</dl>")
    for section in report.sections:
        if section.title:
            parts.append(f"<h2>{escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_table(block))
            elif isinstance(block, FigureBlock):
                parts.append(_figure(block))
            else:
                parts.append(_paragraph(block))
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
