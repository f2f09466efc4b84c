"""The pages' assets are the app's own: nothing from a CDN, no web fonts."""

from __future__ import annotations

import re
from pathlib import Path

import plotly
from django.contrib.staticfiles import finders

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", re.I)


def own_assets() -> list[Path]:
    files = [*(ROOT / "templates").rglob("*.html"), *(ROOT / "static" / "css").rglob("*.css"),
             *(ROOT / "static" / "js").rglob("*.js")]
    assert len(files) > 20
    return files


def test_no_page_or_asset_loads_anything_from_another_host():
    offenders = [str(p.relative_to(ROOT)) for p in own_assets() if EXTERNAL.search(p.read_text())]

    assert offenders == []


def test_no_web_fonts():
    css = "".join(p.read_text() for p in (ROOT / "static" / "css").rglob("*.css"))

    assert "@font-face" not in css


def test_plotly_js_is_the_copy_bundled_with_the_plotly_package():
    bundled = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    served = finders.find("vendor/plotly.min.js")

    assert served is not None
    assert Path(served).read_bytes() == bundled.read_bytes()
