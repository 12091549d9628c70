"""The report of a run: numbers in files (``test.json``, ``test.md``, the confusion matrix), overlays of what
the model looks at, and ``report/index.html``, a page that opens from the folder (no server) with the
training curves, the confusion matrix, per-class accuracy, the most confused pairs with example images,
and the overlays with true label, prediction and probability.

The trainer calls :func:`write_final_report` after the test; ``fgvc report RUN`` calls :func:`build_html`
to rebuild the page from the files a run folder holds. :mod:`.metrics` holds the evaluation's arithmetic and
the reading of ``metrics.jsonl``; :mod:`.plots` the pictures; :mod:`.page` the page; :mod:`.files` the rest.
The report imports nothing of the engine that calls it.
"""

from __future__ import annotations

from .files import (
           save_predictions,
           write_final_report,
           write_overlays,
           write_split_report,
)
from .metrics import classification_report, read_metrics
from .page import build_html, html_page

__all__ = ["write_split_report", "write_final_report", "write_overlays", "build_html", "save_predictions",
           "html_page", "classification_report", "read_metrics"]
