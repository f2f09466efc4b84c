"""The experiment page's privacy chart: each site's epsilon after each round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .charts import PALETTE, Figure, _layout, _line, plain


def privacy_figure(num_rounds: int, rows: Sequence[dict[str, Any]]) -> Figure:
    """One line per site (``policy.privacy_rounds`` rows, already scoped to the viewer):
    its epsilon after each round, with the noise multiplier in the hover text."""
    sites = sorted({r["site"] for r in rows})
    data = []
    for i, site in enumerate(sites):
        mine = [r for r in rows if r["site"] == site]
        data.append(_line(
            plain(site), [r["round"] for r in mine], [r["epsilon"] for r in mine], PALETTE[i % len(PALETTE)],
            text=[f"noise {r['noise_multiplier']:.3f}, delta {r['delta']:.1e}" for r in mine],
            hovertemplate="round %{x}: epsilon %{y:.3f}<br>%{text}<extra>%{fullData.name}</extra>",
        ))
    x_axis = {"range": [0.5, max(num_rounds, 1) + 0.5], "tickformat": "d"}
    return {"data": data, "layout": _layout("Round", "Epsilon spent (this experiment)", xaxis=x_axis,
                                            yaxis={} if data else {"range": [0, 1]})}
