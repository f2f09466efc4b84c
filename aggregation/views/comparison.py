"""The alone / global / personalised table for a page (aggregation/policy/comparison.py
decides what the viewer may see; this only writes it)."""

from __future__ import annotations

from typing import Any

from .. import policy
from ..figure_words import class_words, metric_text
from ..models import Experiment
from ..reasons import text as reason_text

# Leading figures first (issue 10): balanced accuracy and AUROC, then the rest.
COLUMNS = (
    ("balanced_accuracy", "Balanced accuracy"),
    ("auroc", "AUROC"),
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
)
KINDS = (("alone", "Alone (your rows only)"), ("global", "Global (selected version)"), ("personalized", "Personalised"))
AGGREGATE_KINDS = (("alone", "Alone (each site's rows only)"), ("global", "Global (selected version)"),
                   ("personalized", "Personalised"))
MODE_NAMES = {"fedper": "FedPer", "finetune": "fine-tuning", "ditto": "Ditto"}


def _cells(metrics: dict[str, Any] | None, defined: dict[str, int] | None = None, sites: int = 0) -> list[tuple[str, str]]:
    """``(column label, text)`` per column: "n/a" where undefined, and a mean over fewer
    sites than reported says over how many."""
    cells = []
    for key, label in COLUMNS:
        text = metric_text((metrics or {}).get(key))
        if defined is not None and text != "n/a" and defined.get(key, sites) < sites:
            text += f" ({defined[key]} of {sites} sites)"
        cells.append((label, text))
    return cells


def comparison_context(viewer: policy.Viewer, experiment: Experiment) -> dict[str, Any] | None:
    """What the page shows of the comparison: None before the experiment completed or
    for a viewer without a row; else ``{"own", "columns", "rows", "notes", "warning",
    "pending", "withheld"}``."""
    if experiment.status != Experiment.Status.COMPLETED:
        return None
    shown = policy.comparison(viewer, experiment)
    if shown is None:
        return None
    columns = [label for _, label in COLUMNS]
    statement = class_words(experiment.schema)["statement"]
    if not viewer.is_coordinator:
        done = shown["status"] == "done"
        rows = [
            {"kind": kind, "label": label, "cells": _cells(shown[kind])}
            for kind, label in KINDS if kind != "personalized" or shown["personalized"] is not None
        ]
        notes = []
        if done and shown["mode"]:
            beat = shown["personalized_beats_alone"]
            notes.append(f"Personalised by {MODE_NAMES.get(shown['mode'], shown['mode'])} from global version "
                         f"v{shown['version']}; it stays at your site."
                         + ("" if beat is None else " It beat your local-only model." if beat
                            else " It did not beat your local-only model."))
        return {
            "own": True, "columns": columns, "rows": rows if done else [], "notes": notes,
            "statement": statement,
            "warning": ("The finished global model did worse on your site's test rows than a model trained on "
                        "your rows alone." if shown["global_worse_than_alone"] else ""),
            "pending": shown["status"] in ("pending", "running"),
            "failed": reason_text(shown["error_code"]) if shown["status"] == "failed" else "",
            "withheld": False,
        }
    rows, notes, warning = [], [], ""
    if not shown["withheld"]:
        for kind, label in AGGREGATE_KINDS:
            if shown["mean"].get(kind):
                rows.append({"kind": kind, "label": label,
                             "cells": _cells(shown["mean"][kind], shown["defined"][kind], shown["reported"])})
        notes.append(f"Means over the {shown['reported']} sites that reported; a metric undefined at a site "
                     f"(one class in its test rows) is left out of its mean.")
        if shown["personalized_compared"]:
            notes.append(f"Personalised beat alone at {shown['personalized_beats_alone']} of "
                         f"{shown['personalized_compared']} sites.")
        if shown["global_worse_than_alone"]:
            n = shown["global_worse_than_alone"]
            warning = (f"The finished global model did worse than the site's local-only model at {n} "
                       f"site{'' if n == 1 else 's'}.")
    return {
        "own": False, "columns": columns, "rows": rows, "notes": notes, "warning": warning,
        "statement": statement,
        "pending": shown["reported"] + shown["failed"] < shown["sites"],
        "failed": "",
        "withheld": shown["withheld"],
        "reported": shown["reported"], "sites": shown["sites"], "min_sites": policy.min_sites(),
    }


def finish_text(experiment: Experiment) -> str:
    """Why a completed experiment finished before its last round, in the product's words."""
    if experiment.status != Experiment.Status.COMPLETED or not experiment.finish_code:
        return ""
    detail = (f"It stopped after round {experiment.stopped_after_round} of {experiment.num_rounds} "
              f"(patience {experiment.early_stopping} rounds).") if experiment.stopped_after_round else ""
    return reason_text(experiment.finish_code, detail)
