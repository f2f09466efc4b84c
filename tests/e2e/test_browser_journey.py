"""A site member and the coordinator use the real product in a real browser.

The site member signs in, uploads a CSV with errors and reads the report, then uploads
a good one. The coordinator creates and starts an experiment and watches the progress
bar and the charts move until it completes (the work runs in a real Celery worker);
then a prediction is made. Screenshots of each page, at a desktop's and a phone's
width, go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Page, expect

from aggregation.models import Experiment, ModelVersion
from clients.models import Dataset

from .conftest import DESKTOP, PASSWORD, PHONE, csv_bytes, query

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(600)]

# Enough rounds (each takes well under a second here) for the page to be seen moving.
ROUNDS = 8
BAD_CSV = (
    b"heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n"
    b"72,120,80,97,1\nabc,120,80,98,1\n70,300,80,98,0\n70,120,80,,1\n"
)


# Records Content-Security-Policy violations from the page's start, before any script.
CSP_LISTENER = """window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});"""


def assert_no_csp_violation(page: Page) -> None:
    """The page (as drawn so far, charts included) broke no rule of its policy."""
    seen = page.evaluate("window.__cspViolations")
    assert seen is not None, f"no CSP listener on {page.url}"
    assert seen == [], f"{page.url}: {seen}"


class Watch:
    """Console errors, Content-Security-Policy violations (every page of the context,
    from its first byte), failed requests and any request leaving the product's host."""

    def __init__(self, page: Page, host: str) -> None:
        self.problems: list[str] = []
        self.pages_with_csp: set[str] = set()
        page.context.add_init_script(CSP_LISTENER)
        page.on("response", self._policy)
        page.on("console", lambda m: (m.type == "error" or "Content Security Policy" in m.text)
                and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        # A poll cut short by leaving the page is aborted, not failed.
        page.on("requestfailed", lambda r: "ERR_ABORTED" not in (r.failure or "") and self.problems.append(
            f"failed: {r.url} {r.failure}"))
        page.on("request", lambda r: urlparse(r.url).netloc != host and self.problems.append(f"off-site: {r.url}"))

    def _policy(self, response) -> None:
        """Every HTML page carries the policy: no 'unsafe-inline' or 'unsafe-eval' for
        scripts or styles anywhere."""
        if response.request.resource_type != "document":
            return
        path = urlparse(response.url).path
        header = response.headers.get("content-security-policy", "")
        policy = {d.split()[0]: d.split()[1:] for d in header.split(";") if d.strip()}
        scripts, styles = policy.get("script-src", []), policy.get("style-src", [])
        if "'self'" not in scripts or any("unsafe" in v for v in scripts + styles):
            self.problems.append(f"policy of {response.url}: {header!r}")
        self.pages_with_csp.add(path)


def sign_in(page: Page, url: str, username: str) -> None:
    page.goto(url + "/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def both_widths(browser, page: Page, shoot, name: str, path: str | None = None) -> None:
    """A desktop screenshot of the page, then the same page at a phone's width; neither
    broke the Content-Security-Policy."""
    assert_no_csp_violation(page)
    shoot(page, f"{name}-desktop")
    phone = browser.new_context(viewport=PHONE, storage_state=page.context.storage_state(), is_mobile=True)
    phone.add_init_script(CSP_LISTENER)
    try:
        mobile = phone.new_page()
        console: list[str] = []
        mobile.on("console", lambda m: m.type == "error" and console.append(m.text))
        mobile.goto(path or page.url)
        mobile.wait_for_load_state("networkidle")
        assert_no_csp_violation(mobile)
        assert console == [], console
        assert mobile.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1, f"{name} scrolls sideways"
        shoot(mobile, f"{name}-phone")
    finally:
        phone.close()


def test_site_upload_then_coordinator_runs_an_experiment_then_a_prediction(product, browser, shoot, tmp_path):
    host = urlparse(product.url).netloc
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch = Watch(page, host)

    # -- the site member ---------------------------------------------------------------
    page.goto(product.url + "/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    both_widths(browser, page, shoot, "01-sign-in")
    sign_in(page, product.url, "mary")
    expect(page).to_have_url(product.url + "/site/")
    expect(page.get_by_role("heading", name="St Mary's Hospital")).to_be_visible()
    both_widths(browser, page, shoot, "02-site-home-empty")

    bad = tmp_path / "ward-export.csv"
    bad.write_bytes(BAD_CSV)
    page.get_by_label("Dataset name").fill("Ward 7 export")
    page.get_by_label("CSV file").set_input_files(str(bad))
    page.get_by_role("button", name="Validate and upload").click()
    expect(page.get_by_role("heading", name="The file was not stored")).to_be_visible()
    problems = page.locator("[data-report-problems]")
    expect(problems).to_contain_text("Not a number")
    expect(problems).to_contain_text("heart_rate")
    expect(problems).to_contain_text("abc")
    expect(page.locator("[data-report-counts]")).to_contain_text("Out of range")
    assert_no_csp_violation(page)
    shoot(page, "03-upload-report-desktop")
    assert not query(Dataset.objects.filter(site__slug="st-marys", status=Dataset.Status.READY).exists)

    good = tmp_path / "ward-7.csv"
    good.write_bytes(csv_bytes(3000, seed=7))
    page.get_by_label("Dataset name").fill("Ward 7 vitals, 2024")
    page.get_by_label("Drop the invalid rows and keep the rest").check()
    page.get_by_label("CSV file").set_input_files(str(good))
    page.get_by_role("button", name="Validate and upload").click()
    expect(page.get_by_role("status")).to_contain_text("is ready: 3,000 rows")
    expect(page.get_by_role("heading", name="Per-feature summary")).to_be_visible()
    both_widths(browser, page, shoot, "04-dataset-summary")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login/$"))

    # -- the coordinator --------------------------------------------------------------
    sign_in(page, product.url, "carol")
    expect(page).to_have_url(product.url + "/coordinator/")
    expect(page.get_by_role("row", name=re.compile("St Mary's Hospital"))).to_contain_text("3000")
    both_widths(browser, page, shoot, "05-dashboard")

    page.get_by_role("link", name="New experiment").click()
    page.get_by_label("Experiment name").fill("Browser study")
    page.get_by_label("St Mary's Hospital").select_option(index=1)
    page.get_by_label("Riverside Clinic").select_option(index=1)
    page.get_by_label("Rounds", exact=True).fill(str(ROUNDS))
    page.get_by_label("Local epochs per round").fill("2")
    page.get_by_label("Minimum sites per round").fill("2")
    page.locator("#id_strategy").select_option("fedavg")
    both_widths(browser, page, shoot, "06-new-experiment")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("heading", name="Browser study")).to_be_visible()
    expect(page.locator("[data-progress-text]")).to_have_text(f"Not started · {ROUNDS} rounds planned")

    page.get_by_role("button", name="Start experiment").click()
    expect(page.get_by_role("status").first).to_contain_text("Experiment started")
    seen = watch_progress(page, shoot)
    assert len(seen) >= 3, seen  # the text moved while the page stayed put
    assert seen[-1] == f"Completed · {ROUNDS} of {ROUNDS} rounds"
    expect(page.locator("#chart-accuracy")).to_have_attribute("data-points", str(ROUNDS), timeout=60_000)
    assert page.evaluate("document.getElementById('chart-auroc').data[0].x.length") == ROUNDS
    assert page.evaluate("document.querySelector('.progress').getAttribute('aria-valuenow')") == "100"
    expect(page.locator("#chart-sites")).to_have_attribute("data-points", "4")  # 2 sites x local/global
    both_widths(browser, page, shoot, "08-experiment-completed")

    page.get_by_role("link", name="Model versions & analytics").click()
    expect(page.get_by_role("heading", name="Model versions")).to_be_visible()
    expect(page.locator("#chart-roc")).to_have_attribute("data-points", re.compile(r"[1-9]\d*"))
    both_widths(browser, page, shoot, "09-models")

    # -- a prediction --------------------------------------------------------------------
    page.get_by_role("link", name="Predict", exact=True).click()
    page.get_by_label("Heart rate (bpm)").fill("300")
    page.get_by_label("Systolic blood pressure (mmHg)").fill("118")
    page.get_by_label("Diastolic blood pressure (mmHg)").fill("76")
    page.get_by_label("SpO2 (oxygen saturation) (%)").fill("98")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(page.get_by_text("heart_rate must be between 50 and 120 bpm, got 300")).to_be_visible()
    page.get_by_label("Heart rate (bpm)").fill("72")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(page.locator("[data-probability]")).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
    expect(page.locator("[data-label]")).to_have_text(re.compile("^(Healthy|Not healthy)$"))
    both_widths(browser, page, shoot, "10-predict", path=product.url + "/predict/")

    # -- the API's documentation page (the README's /api/docs/), under the same policy -----
    page.goto(product.url + "/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("FedHealth API")
    assert_no_csp_violation(page)
    page.goto(product.url + "/predict/")

    assert watch.problems == [], watch.problems
    assert {"/login/", "/site/", "/coordinator/", "/predict/", "/api/docs/"} <= watch.pages_with_csp, watch.pages_with_csp

    # -- five wrong passwords lock signing in, with a page that says so (HTTP 429) ------
    page.get_by_role("button", name="Sign out").click()
    for _ in range(5):
        page.get_by_label("Username").fill("carol")
        page.get_by_label("Password").fill("not-the-password")
        page.get_by_role("button", name="Sign in").click()
        if page.get_by_role("heading", name="Signing in is locked").is_visible():
            break
        page.goto(product.url + "/login/")
    expect(page.get_by_role("heading", name="Signing in is locked")).to_be_visible()
    assert_no_csp_violation(page)
    shoot(page, "11-locked-out-desktop")

    context.close()
    experiment = query(lambda: Experiment.objects.get(name="Browser study"))
    assert experiment.status == Experiment.Status.COMPLETED
    assert query(ModelVersion.objects.filter(experiment=experiment).count) == ROUNDS


def watch_progress(page: Page, shoot, timeout: float = 300) -> list[str]:
    """The progress texts the page shows, in order, until the experiment completes;
    a screenshot is taken the first time a chart has points while rounds still run."""
    seen: list[str] = []
    shot = False
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = page.locator("[data-progress-text]").inner_text()
        if not seen or seen[-1] != text:
            seen.append(text)
        if text.startswith("Completed"):
            return seen
        if not shot and page.locator("#chart-loss").get_attribute("data-points") not in (None, "0"):
            shoot(page, "07-experiment-running-desktop")
            shot = True
        page.wait_for_timeout(100)
    pytest.fail(f"the experiment did not complete on the page; progress seen: {seen}")
