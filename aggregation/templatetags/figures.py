"""Template filters for figures: ``{{ value|metric }}`` writes "n/a" where undefined."""

from __future__ import annotations

from typing import Any

from django import template

from ..figure_words import metric_label as _label
from ..figure_words import metric_text

register = template.Library()


@register.filter
def metric(value: Any, digits: int = 3) -> str:
    """A metric with ``digits`` decimals, or "n/a" (None, NaN, infinity, not a number)."""
    return metric_text(value, int(digits))


@register.filter
def metric_label(key: str) -> str:
    return _label(str(key))


@register.filter
def get(mapping: Any, key: Any) -> Any:
    """``mapping[key]`` or None (templates cannot index by a variable)."""
    return mapping.get(key) if isinstance(mapping, dict) else None
