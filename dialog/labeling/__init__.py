"""Offline SSA labeling: export tasks for raters, import their answers, report, feed preferences to RL.

The flow functions (``dialog.labeling.workflow``) are what ``repliq ssa ...`` calls; each raises ``LabelingError`` (a
``ValueError``) whose message lists every bad row, and none of them leaves a half-written result.
"""

from __future__ import annotations

from dialog.labeling.formats import FORMATS
from dialog.labeling.report import build_report
from dialog.labeling.store import Label, LabelStore, default_labels_path
from dialog.labeling.tasks import Honeypot, LabelingError, RowProblem, read_contexts, read_honeypots
from dialog.labeling.workflow import (
    Responder,
    export_pairwise,
    export_pointwise,
    export_preferences,
    import_labels,
)

__all__ = [
    "FORMATS", "Honeypot", "Label", "LabelStore", "LabelingError", "Responder", "RowProblem", "build_report",
    "default_labels_path", "export_pairwise", "export_pointwise", "export_preferences", "import_labels",
    "read_contexts", "read_honeypots",
]
