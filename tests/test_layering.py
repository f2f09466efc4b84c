"""The project package sits above the apps: it may import them only in its URL
configuration, so the apps can be read, tested and replaced without the package."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("clients", "aggregation", "audit")
# The URL configuration wires the apps' views in; nothing else in the package may.
ALLOWED = {"fedhealth/urls.py", "fedhealth/api_urls.py", "fedhealth/web_urls.py"}


def app_imports(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names if n.split(".")[0] in APPS]
    return found


def test_the_project_package_imports_the_apps_only_in_its_url_configuration():
    offending = []
    for path in sorted((ROOT / "fedhealth").rglob("*.py")):
        if str(path.relative_to(ROOT)) not in ALLOWED:
            offending += app_imports(path)

    assert offending == []


def test_the_check_finds_an_app_import(tmp_path):
    """The walker itself: an app import in a module is reported, with its line."""
    module = tmp_path / "probe.py"
    module.write_text("import os\nfrom clients.models import Site\nimport aggregation.tasks\n")

    assert app_imports(module, tmp_path) == ["probe.py:2 clients.models", "probe.py:3 aggregation.tasks"]
