"""Re-render a run's report from its results: ``python -m custom.report --work_dir W``."""

from __future__ import annotations

import fire

from custom.report import write_report


def main(work_dir: str) -> str:
    """Write ``W/report.md`` and ``W/report.html`` from ``W/results.json``; returns the two paths."""
    markdown, html = write_report(work_dir)
    return f"{markdown}\n{html}"


if __name__ == "__main__":
    fire.Fire(main)
