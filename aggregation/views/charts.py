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
# Balanced accuracy and AUROC lead (issue 10): with unbalanced classes, plain accuracy
# rewards a model that always answers the majority class.
METRIC_TITLES = {
    "balanced_accuracy": "Balanced accuracy",
    "auroc": "AUROC",
    "accuracy": "Accuracy",
    "loss": "Loss (cross-entropy)",
}
REFERENCE = {"color": "#9aa5b1", "dash": "dash", "width": 1}
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


def chance_levels(prevalence: float | None) -> dict[str, tuple[float, str]]:
    """What a model without skill scores, per metric: (level, legend text).

    Balanced accuracy and AUROC: 0.5 whatever the classes. Accuracy: always answering
    the majority class; loss: always predicting the prevalence (both need it).
    """
    levels = {"balanced_accuracy": (0.5, "Chance (0.5)"), "auroc": (0.5, "Chance (0.5)")}
    if prevalence is not None and 0.0 < prevalence < 1.0:
        p = prevalence
        levels["accuracy"] = (max(p, 1 - p), f"Always the majority class ({max(p, 1 - p):.0%})")
        entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
        levels["loss"] = (entropy, f"Predicting the prevalence ({p:.0%})")
    return levels


def _reference(level: float, text: str, x0: float, x1: float) -> dict[str, Any]:
    # hoverinfo "skip": live.js does not count it as a data point (the "no data" note stays).
    return {"type": "scatter", "mode": "lines", "name": text, "x": [x0, x1], "y": [level, level],
            "line": REFERENCE, "hoverinfo": "skip"}


def global_figures(
    num_rounds: int,
    versions: Sequence[tuple[int, dict]],
    train_loss: dict[int, float | None],
    *,
    partial: dict[int, str] | None = None,
    prevalence: float | None = None,
) -> dict[str, Figure]:
    """Line charts of the global model per round: balanced accuracy, AUROC, accuracy, loss.

    ``versions`` are (round, mean metrics over the sites' test data); ``train_loss``
    maps a round to the sample-weighted training loss the sites reported. ``partial``
    maps a round still being scored to how far ("2 of 3 sites"): its point is drawn
    apart (hollow, labelled), never on the final line. ``prevalence`` (share of the
    positive class) places the chance lines of accuracy and loss. The x axis spans
    every planned round, so the lines fill the chart as the rounds complete.
    """
    partial = partial or {}
    final = [(r, m) for r, m in versions if m and r not in partial]
    scoring = [(r, m) for r, m in versions if m and r in partial]
    rounds = [r for r, _ in final]
    means = [m for _, m in final]
    levels = chance_levels(prevalence)
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
        if scoring:
            data.append({
                "type": "scatter", "mode": "markers+text", "name": "Still being scored (partial)",
                "x": [r for r, _ in scoring], "y": [num(m.get(key)) for _, m in scoring],
                "text": [f"partial: {partial[r]}" for r, _ in scoring], "textposition": "top center",
                "marker": {"size": 9, "symbol": "circle-open", "color": PALETTE[0]},
                "hovertemplate": "round %{x}: %{y:.3f}<br>%{text}, not final<extra></extra>",
            })
        if key in levels:
            data.append(_reference(*levels[key], 0.5, max(num_rounds, 1) + 0.5))
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
        extra: dict[str, Any] = {}
        if key in ("balanced_accuracy", "auroc"):
            # The chance level across the whole plot (a shape: the x axis is categorical).
            extra = {"shapes": [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": 0.5,
                                 "y1": 0.5, "line": REFERENCE}],
                     "annotations": [{"xref": "paper", "x": 1, "yref": "y", "y": 0.5, "text": "chance",
                                      "showarrow": False, "xanchor": "right", "yanchor": "bottom",
                                      "font": {"size": 10, "color": REFERENCE["color"]}}]}
        figures[key] = {
            "data": [
                {"type": "bar", "name": label, "x": names, "y": [num(v) for v in values], "marker": {"color": color},
                 # A missing bar is n/a at that site (one class in its test rows): say so.
                 "text": ["n/a" if num(v) is None and (glob or local) else "" for v, (_, local, glob)
                          in zip(values, rows, strict=True)], "textposition": "outside",
                 "hovertemplate": "%{x}<br>" + label + ": %{y:.3f}<extra></extra>"}
                for label, values, color in bars
            ],
            "layout": _layout("", title, barmode="group", xaxis=ticks,
                              yaxis={"rangemode": "tozero"} if any(local or glob for _, local, glob in rows)
                              else {"range": [0, 1]}, **extra),
        }
    return figures


def roc_figure(curves: Sequence[tuple[str, dict]], *, positive: str = "", negative: str = "") -> Figure:
    """ROC curve per site (``curves``: site name, {"fpr": [...], "tpr": [...]}), for the
    positive class named ``positive`` (the other: ``negative``)."""
    data = [
        _line(plain(name), c.get("fpr", []), c.get("tpr", []), PALETTE[i % len(PALETTE)], mode="lines")
        for i, (name, c) in enumerate(curves)
    ]
    data.append({"type": "scatter", "mode": "lines", "name": "Chance", "x": [0, 1], "y": [0, 1],
                 "line": {"color": "#9aa5b1", "dash": "dash", "width": 1}, "hoverinfo": "skip"})
    unit = {"range": [0, 1], "constrain": "domain"}
    x_title = f"False positive rate ({plain(negative)} patients flagged)" if negative else "False positive rate"
    y_title = f"True positive rate ({plain(positive)} patients flagged)" if positive else "True positive rate"
    return {"data": data, "layout": _layout(x_title, y_title, xaxis=unit, yaxis=unit, height=320)}


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


def confusion_figure(counts: dict[str, int], label: str, *, positive: str = "", negative: str = "") -> Figure:
    """2x2 heatmap of confusion counts at threshold 0.5 ({"tn", "fp", "fn", "tp"}, the
    positive class's: "positive" is ``positive``, named as the schema names it)."""
    z = [[counts.get("tn", 0), counts.get("fp", 0)], [counts.get("fn", 0), counts.get("tp", 0)]]
    names = ([f"{plain(negative)}", f"{plain(positive)} (positive)"] if positive
             else [f"{plain(label)} = 0", f"{plain(label)} = 1"])
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
