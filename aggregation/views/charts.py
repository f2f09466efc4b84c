"""Plotly figure dicts, drawn by plotly.js in the browser (static/js/charts.js).

Plain dicts rather than ``plotly.graph_objects``: they serialise straight to JSON and
cost nothing to build on every poll. Metrics may hold NaN (e.g. AUROC on a site with
one class); JSON has no NaN, so every number goes through ``num``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from fedhealth.ml.metrics import json_safe

PALETTE = ["#0f6e8c", "#d9822b", "#4f8a3c", "#8a5cb8", "#c2415d", "#2f9fa8", "#9a7b1c", "#4a5a7a"]
FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12, "color": "#1f2a37"}
METRIC_TITLES = {"loss": "Loss (cross-entropy)", "accuracy": "Accuracy", "auroc": "AUROC"}
Figure = dict[str, Any]


def num(value: Any) -> float | None:
    """A JSON-safe number: None for missing, NaN or infinite values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# Every float made JSON-safe (NaN/inf become None); shared with `simulate --json`.
clean = json_safe


def plain(text: str) -> str:
    """A user-controlled string (a site's name, a column's) as plain text in a figure.

    plotly.js renders a subset of HTML in tick labels, legends and hover text, so a
    site named ``<a href="https://evil.example">x</a>`` would show as a link. It decodes
    ``&amp; &lt; &gt;`` back to the characters, so escaping those three shows the
    name as typed (not ``html.escape``: plotly.js does not decode ``&quot;``).
    """
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "gridcolor": "#e5eaf0", "zeroline": False, "automargin": True, **extra}


def _layout(x_title: str, y_title: str, *, xaxis: dict | None = None, yaxis: dict | None = None, **extra: Any) -> dict:
    return {
        "margin": {"l": 56, "r": 12, "t": 16, "b": 48},
        "height": 280,
        "font": FONT,
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        # Above the plot: below it, long or rotated tick labels would run into it.
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        "xaxis": _axis(x_title, **(xaxis or {})),
        "yaxis": _axis(y_title, **(yaxis or {})),
        **extra,
    }


def _line(name: str, x: Sequence, y: Iterable, color: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "scatter", "mode": "lines+markers", "name": name, "x": list(x), "y": [num(v) for v in y],
        "line": {"color": color, "width": 2}, "marker": {"size": 6}, **extra,
    }


def global_figures(num_rounds: int, versions: Sequence[tuple[int, dict]], train_loss: dict[int, float | None]) -> dict[str, Figure]:
    """Line charts of the global model per round: loss, accuracy, AUROC.

    ``versions`` are (round, mean metrics over the sites' test data); ``train_loss``
    maps a round to the sample-weighted training loss the sites reported. The x axis
    spans every planned round, so the lines fill the chart as the rounds complete.
    """
    rounds = [r for r, m in versions if m]
    means = [m for _, m in versions if m]
    # Whole rounds only: left to itself, plotly ticks a 2-round axis at 0.5 steps, which
    # "d" then prints as "1 1 2 2 3". About ten ticks at most, whatever the rounds.
    step = max(1, math.ceil(max(num_rounds, 1) / 10))
    x_axis = {"range": [0.5, max(num_rounds, 1) + 0.5], "tickformat": "d", "tickmode": "linear",
              "tick0": 0 if step > 1 else 1, "dtick": step}
    figures: dict[str, Figure] = {}
    for key, title in METRIC_TITLES.items():
        data = [_line("Global model, mean over sites' test data", rounds, [m.get(key) for m in means], PALETTE[0])]
        if key == "loss":
            trained = sorted(r for r in train_loss if train_loss[r] is not None)
            data.append(_line("Training loss, sites' weighted mean", trained, [train_loss[r] for r in trained],
                              PALETTE[1], line={"color": PALETTE[1], "width": 2, "dash": "dot"}))
        # Until a point exists, show a sensible empty scale rather than plotly's -1..4.
        y_axis = {} if rounds else {"range": [0, 1]}
        figures[key] = {"data": data, "layout": _layout("Round", title, xaxis=x_axis, yaxis=y_axis)}
    return figures


def site_comparison_figures(rows: Sequence[tuple[str, dict | None, dict | None]]) -> dict[str, Figure]:
    """Grouped bars per site: its local model vs the global model, on its test data.

    ``rows`` are (site name, local metrics or None, global metrics or None). Names,
    like every user-controlled string in these figures, go through ``plain``.
    """
    names = [plain(name) for name, _, _ in rows]
    # Tick labels wrapped on word boundaries: one long line per bar group was clipped
    # on a phone (the bars' x values stay the names, for hover text and tests).
    ticks = {"tickmode": "array", "tickvals": names,
             "ticktext": ["<br>".join(textwrap.wrap(n, 14, break_long_words=False)) or n for n in names]}
    figures: dict[str, Figure] = {}
    for key, title in METRIC_TITLES.items():
        bars = [
            ("Local model (trained at the site)", [(local or {}).get(key) for _, local, _ in rows], PALETTE[1]),
            ("Global model", [(glob or {}).get(key) for _, _, glob in rows], PALETTE[0]),
        ]
        figures[key] = {
            "data": [
                {"type": "bar", "name": label, "x": names, "y": [num(v) for v in values], "marker": {"color": color},
                 "hovertemplate": "%{x}<br>" + label + ": %{y:.3f}<extra></extra>"}
                for label, values, color in bars
            ],
            "layout": _layout("", title, barmode="group", xaxis=ticks,
                              yaxis={"rangemode": "tozero"} if any(local or glob for _, local, glob in rows)
                              else {"range": [0, 1]}),
        }
    return figures


def roc_figure(curves: Sequence[tuple[str, dict]]) -> Figure:
    """ROC curve per site (``curves``: site name, {"fpr": [...], "tpr": [...]})."""
    data = [
        _line(plain(name), c.get("fpr", []), c.get("tpr", []), PALETTE[i % len(PALETTE)], mode="lines")
        for i, (name, c) in enumerate(curves)
    ]
    data.append({"type": "scatter", "mode": "lines", "name": "Chance", "x": [0, 1], "y": [0, 1],
                 "line": {"color": "#9aa5b1", "dash": "dash", "width": 1}, "hoverinfo": "skip"})
    unit = {"range": [0, 1], "constrain": "domain"}
    return {"data": data, "layout": _layout("False positive rate", "True positive rate", xaxis=unit, yaxis=unit, height=320)}


def calibration_figure(curves: Sequence[tuple[str, dict]]) -> Figure:
    """Reliability diagram per site (mean predicted vs observed fraction positive)."""
    data = [
        _line(plain(name), c.get("mean_predicted", []), c.get("fraction_positive", []), PALETTE[i % len(PALETTE)],
              text=[f"{int(n)} patients" for n in c.get("count", [])])
        for i, (name, c) in enumerate(curves)
    ]
    data.append({"type": "scatter", "mode": "lines", "name": "Perfect calibration", "x": [0, 1], "y": [0, 1],
                 "line": {"color": "#9aa5b1", "dash": "dash", "width": 1}, "hoverinfo": "skip"})
    unit = {"range": [0, 1]}
    return {"data": data, "layout": _layout("Mean predicted probability", "Observed fraction positive",
                                            xaxis=unit, yaxis=unit, height=320)}


def confusion_figure(counts: dict[str, int], label: str) -> Figure:
    """2x2 heatmap of confusion counts at threshold 0.5 ({"tn", "fp", "fn", "tp"})."""
    z = [[counts.get("tn", 0), counts.get("fp", 0)], [counts.get("fn", 0), counts.get("tp", 0)]]
    names = [f"{plain(label)} = 0", f"{plain(label)} = 1"]
    return {
        "data": [{
            "type": "heatmap", "z": z, "x": names, "y": names, "colorscale": [[0, "#eef5f8"], [1, PALETTE[0]]],
            "showscale": False, "texttemplate": "%{z}", "textfont": {"size": 16},
            # Gaps between the cells also keep plotly.js from drawing the heatmap as one
            # image with an inline style attribute, which the Content-Security-Policy blocks.
            "xgap": 2, "ygap": 2,
            "hovertemplate": "true %{y}<br>predicted %{x}<br>%{z} patients<extra></extra>",
        }],
        "layout": _layout("Predicted", "True", yaxis={"autorange": "reversed"}, height=320),
    }
