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


def test_plotly_js_is_the_cartesian_build_of_the_bundled_plotly_version():
    bundled = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()[:300]
    version = re.search(r"plotly\.js v(\S+)", bundled).group(1)
    served = finders.find("vendor/plotly.min.js")

    assert served is not None
    text = Path(served).read_text()
    assert f"plotly.js (cartesian - minified) v{version}" in text[:300]
    # Map traces fetch tiles from, and link to, other hosts: not in this build.
    for host in ("openstreetmap.org", "esri.com", "maplibre.org", "mapbox.com"):
        assert host not in text


def test_charts_switch_off_the_plotly_logo_link():
    # The bundle's only outside link is the mode bar's logo; the pages never show it.
    live = (ROOT / "static" / "js" / "live.js").read_text()

    assert "displaylogo: false" in live
