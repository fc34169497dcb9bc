"""The bank-wide lint report as one standalone, escaped HTML file (for `repliq bank lint --html`)."""

from __future__ import annotations

from jinja2 import Environment, FileSystemLoader, select_autoescape

from dialog.editor.lint import LintReport
from dialog.editor.pages import TEMPLATES


def render_report(report: LintReport) -> str:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    return env.get_template("lint_report.html").render(report=report)
