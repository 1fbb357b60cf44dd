"""Markdown rendering of the report: GitHub-flavoured tables, figures linked as ``figures/<name>.png``."""

from __future__ import annotations

from custom.report.document import FigureBlock, Paragraph, Report
from custom.report.tables import Table

__all__ = ["FIGURE_DIR", "render_markdown"]

#: Folder of the figure PNGs, relative to ``report.md``.
FIGURE_DIR = "figures"


def _paragraph(block: Paragraph) -> str:
    if block.kind == "caption":
        return f"*{block.text}*"
    if block.kind == "note":
        return f"> {block.text}"
    if block.kind == "alert":
        return f"**{block.text}**"
    return block.text


def _table(block: Table) -> str:
    parts = [f"**{block.title}.**" + (f" {block.caption}" if block.caption else ""), block.to_markdown()]
    return "\n\n".join(parts)


def _figure(block: FigureBlock) -> str:
    return f"![{block.title}]({FIGURE_DIR}/{block.name}.png)\n\n*{block.title}.* {block.caption}"


def render_markdown(report: Report) -> str:
    """The report as markdown text.

    Args:
        report: the document from :func:`custom.report.document.build_report`.

    Returns:
        Markdown whose figures are relative links ``figures/<name>.png``; the caller writes the PNGs there.
    """
    lines = [f"# {report.title}", ""]
    lines += [f"- **{label}:** " + (f"`{value}`" if label == "Command" else value) for label, value in report.fields]
    for section in report.sections:
        lines.append("")
        if section.title:
            lines += [f"## {section.title}", ""]
        rendered = []
        for block in section.blocks:
            if isinstance(block, Table):
                rendered.append(_table(block))
            elif isinstance(block, FigureBlock):
                rendered.append(_figure(block))
            else:
                rendered.append(_paragraph(block))
        lines.append("\n\n".join(rendered))
    return "\n".join(lines).rstrip() + "\n"
