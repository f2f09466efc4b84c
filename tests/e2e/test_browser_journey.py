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
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Page, expect

from aggregation.models import ClientUpdate, Experiment, ModelVersion
from aggregation.services import pause_experiment, resume_experiment, start_experiment
from clients.models import Dataset
from tests.consent_support import accept_invitations
from tests.support import wait_until

from .conftest import DESKTOP, PASSWORD, PHONE, csv_bytes, query

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(600)]

# Enough rounds (each takes well under a second here) for the page to be seen moving.
ROUNDS = 8
BAD_CSV = (
    b"heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n"
    b"72,120,80,97,1\nabc,120,80,98,1\n70,30,80,98,0\n70,120,80,,1\n"
    + b"xyz,120,80,98,1\n" * 12  # past the 10 listed per kind: the full report is offered
)
LONG_ROUNDS = 100


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


# Every table-wrap fits its card (no sideways scrolling inside it), every cell of a
# stacked table and every header item lies within the screen's width.
PHONE_LAYOUT = """(width) => {
  const out = [];
  const inside = (el) => { const r = el.getBoundingClientRect(); return r.left >= -1 && r.right <= width + 1; };
  document.querySelectorAll(".table-wrap, .table-scroll").forEach((el) => {
    if (el.offsetParent && el.scrollWidth > el.clientWidth + 1) {
      out.push(`table scrolls sideways: ${el.scrollWidth} > ${el.clientWidth}: ${el.innerText.slice(0, 40)}`);
    }
  });
  document.querySelectorAll(".table-stack td[data-label], .table-stack th[scope=row]").forEach((el) => {
    if (el.offsetParent && !inside(el)) { out.push(`cell off-screen: ${el.getAttribute("data-label")}`); }
  });
  document.querySelectorAll(".topbar a, .topbar button, .topbar .who").forEach((el) => {
    if (!el.offsetParent || !inside(el)) { out.push(`header item not reachable: ${el.textContent.trim()}`); }
  });
  return out;
}"""
# Chart toolbars put eight buttons per chart in the tab order.
CHART_TAB_STOPS = """() => [...document.querySelectorAll(".chart a, .chart button, .chart [tabindex]")]
  .filter((el) => el.tabIndex >= 0).length"""


def assert_phone_layout(page: Page, name: str, visible: tuple[str, ...] = ()) -> None:
    """At a phone's width: no sideways scrolling of the page or of a table inside a card,
    the key columns (``visible``: selectors) and every header item on screen."""
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1, f"{name} scrolls sideways"
    assert page.evaluate(PHONE_LAYOUT, PHONE["width"]) == [], name
    for selector in visible:
        cells = page.locator(selector)
        assert cells.count() > 0, f"{name}: no {selector}"
        for i in range(cells.count()):
            box = cells.nth(i).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 1, f"{name}: {selector} {box}"
    assert page.evaluate(CHART_TAB_STOPS) == 0, f"{name}: chart controls in the tab order"


def assert_header_focus_visible(page: Page) -> None:
    """Tabbing through the header, every link and button shows a focus ring (outline or
    box shadow) other than the page's teal one, which the dark header swallowed."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    seen = 0
    for _ in range(20):
        page.keyboard.press("Tab")
        style = page.evaluate("""() => { const el = document.activeElement;
          if (!el.closest(".topbar")) { return null; }
          const s = getComputedStyle(el);
          return {text: el.textContent.trim(), outline: s.outlineStyle, width: parseFloat(s.outlineWidth),
                  color: s.outlineColor, shadow: s.boxShadow}; }""")
        if style is None:
            if seen:
                break
            continue
        seen += 1
        ring = (style["outline"] != "none" and style["width"] >= 2) or style["shadow"] != "none"
        assert ring and style["color"] != "rgba(15, 110, 140, 0.45)", style
    assert seen >= 4, seen


def both_widths(browser, page: Page, shoot, name: str, path: str | None = None,
                visible: tuple[str, ...] = ()) -> None:
    """A desktop screenshot of the page, then the same page at a phone's width; neither
    broke the Content-Security-Policy, and the phone's layout holds (assert_phone_layout)."""
    assert_no_csp_violation(page)
    assert page.evaluate(CHART_TAB_STOPS) == 0, f"{name}: chart controls in the tab order"
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
        assert_phone_layout(mobile, name, visible)
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
    with page.expect_download() as report:
        page.locator("[data-full-report]").click()
    lines = Path(report.value.path()).read_text().splitlines()
    assert lines[0] == "line,column,problem,value,details" and len(lines) == 1 + 15, lines[:3]
    page.set_viewport_size(PHONE)  # the report is a POST's answer: the same page, narrowed
    assert_phone_layout(page, "03-upload-report")
    shoot(page, "03-upload-report-phone")
    page.set_viewport_size(DESKTOP)
    with page.expect_download() as template:
        page.locator("[data-template-link]").click()
    assert Path(template.value.path()).read_text().splitlines()[0] == "heart_rate,systolic_bp,diastolic_bp,spo2,healthy"
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
    assert_header_focus_visible(page)
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

    # -- consent: nothing is trained until each site's admin accepts -----------------------
    expect(page.locator("[data-start-quorum]")).to_contain_text("Start waits for the quorum: at least 2 invited sites")
    expect(page.locator("[data-participants] [data-consent='invited']")).to_have_count(2)
    study_url = page.url
    query(lambda: make_site_admin("riverside", "rita"))
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, product.url, "rita")
    invitation = page.locator("[data-invitation]", has_text="Browser study")
    expect(invitation).to_contain_text("What leaves your site")
    expect(invitation).to_contain_text("2 sites invited")
    expect(invitation.locator("[data-consent-state]")).to_have_text("Invited: waiting for the site's decision")
    both_widths(browser, page, shoot, "06b-site-invitation", visible=("[data-invitation] button",))
    invitation.get_by_role("button", name="Accept").click()
    expect(page.get_by_role("status").first).to_contain_text("accepted")
    expect(page.locator("[data-invitation]", has_text="Browser study").locator("[data-consent-state]")).to_have_text(
        "Accepted")
    # St Mary's admin accepts on the same page (through the same service, to keep this short).
    query(lambda: accept_invitations(Experiment.objects.get(name="Browser study").pk, sites=["st-marys"]))
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, product.url, "carol")
    page.goto(study_url)
    expect(page.locator("[data-participants] [data-consent='accepted']")).to_have_count(2)

    asked: list[str] = []
    page.wait_for_load_state("load")
    page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.get_by_role("button", name="Start experiment").click()
    expect(page.get_by_role("status").first).to_contain_text("Experiment started")
    assert asked and asked[0].startswith("Start this experiment?"), asked
    seen = watch_progress(page, shoot)
    assert len(seen) >= 3, seen  # the text moved while the page stayed put
    assert seen[-1] == f"Completed · {ROUNDS} of {ROUNDS} rounds"
    expect(page.locator("#chart-accuracy")).to_have_attribute("data-points", str(ROUNDS), timeout=60_000)
    assert page.evaluate("document.getElementById('chart-auroc').data[0].x.length") == ROUNDS
    assert page.evaluate("document.querySelector('.progress').getAttribute('aria-valuenow')") == "100"
    expect(page.locator("#chart-sites")).to_have_attribute("data-points", "4")  # 2 sites x local/global
    expect(page.get_by_role("status").filter(has_text="Experiment started")).to_have_count(0)  # stale once completed
    both_widths(browser, page, shoot, "08-experiment-completed", visible=("[data-site-metrics] td",))

    page.get_by_role("link", name="Model versions & analytics").click()
    expect(page.get_by_role("heading", name="Model versions")).to_be_visible()
    expect(page.locator("#chart-roc")).to_have_attribute("data-points", re.compile(r"[1-9]\d*"))
    both_widths(browser, page, shoot, "09-models")

    # -- a prediction --------------------------------------------------------------------
    page.get_by_role("link", name="Predict", exact=True).click()
    chosen = page.locator("#id_version option:checked").inner_text()
    assert chosen.startswith(f"v{ROUNDS} (recommended) · round {ROUNDS} · "), chosen
    page.get_by_label("Heart rate (bpm)").fill("301")
    page.get_by_label("Systolic blood pressure (mmHg)").fill("118")
    page.get_by_label("Diastolic blood pressure (mmHg)").fill("76")
    page.get_by_label("SpO2 (oxygen saturation) (%)").fill("98")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(page.get_by_text("heart_rate must be between 20 and 300 bpm (hard limits), got 301")).to_be_visible()
    page.get_by_label("Heart rate (bpm)").fill("72")
    page.get_by_role("button", name="Predict", exact=True).click()
    expect(page.locator("[data-probability]")).to_have_text(re.compile(r"^[<>]?\d{1,3}\.\d%$"))
    expect(page.locator("[data-label]")).to_have_text(re.compile("^(Healthy|Not healthy)$"))
    both_widths(browser, page, shoot, "10-predict", path=product.url + "/predict/")

    # -- a 100-round experiment: every round of every site on a phone's screen --------------
    long = query(lambda: long_experiment(Experiment.objects.get(name="Browser study").pk))
    page.goto(f"{product.url}/experiments/{long}/")
    expect(page.locator("[data-round-strips] li")).to_have_count(2 * LONG_ROUNDS)
    expect(page.locator("[data-update-failures]")).to_contain_text(f"Round {LONG_ROUNDS} · Riverside Clinic:")
    both_widths(browser, page, shoot, "12-experiment-100-rounds",
                visible=("[data-round-strips] li:last-child", "[data-update-failures] li"))

    # -- the API's documentation page (the README's /api/docs/), under the same policy -----
    page.goto(product.url + "/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("FedHealth API")
    assert_no_csp_violation(page)
    assert page.request.get(product.url + "/favicon.ico").ok  # asked for by the admin and API pages
    page.goto(product.url + "/predict/")

    assert watch.problems == [], watch.problems
    assert {"/login/", "/site/", "/coordinator/", "/predict/", "/api/docs/"} <= watch.pages_with_csp, watch.pages_with_csp

    # -- the site member's home after the run: local and global figures on a phone ----------
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, product.url, "mary")
    study = page.locator("[data-site-experiments] tr", has_text="Browser study")
    expect(study.locator("[data-global]")).to_contain_text(f"(v{ROUNDS})")
    expect(study.locator("[data-local]")).to_contain_text(f"(round {ROUNDS})")
    both_widths(browser, page, shoot, "13-site-home-after-run",
                visible=("[data-site-experiments] [data-local]", "[data-site-experiments] [data-global]"))

    # -- a site admin withdraws from a running experiment: asked no more from the next round --
    withdrawal = query(paused_study)
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, product.url, "rita")
    card = page.locator("[data-invitation]", has_text="Withdrawal study")
    expect(card.locator("[data-consent-state]")).to_have_text("Accepted")
    page.once("dialog", lambda d: d.accept())
    card.get_by_role("button", name="Withdraw").click()
    expect(page.get_by_role("status").first).to_contain_text("withdrawn")
    card = page.locator("[data-invitation]", has_text="Withdrawal study")
    expect(card.locator("[data-consent-state]")).to_have_text("Withdrawn")
    expect(card).to_contain_text("Withdrawn from round 2 on.")
    assert_no_csp_violation(page)
    shoot(page, "13b-site-withdrawn-desktop")
    query(lambda: resume_experiment(withdrawal))
    wait_until(lambda: query(lambda: Experiment.objects.get(pk=withdrawal).status) == Experiment.Status.COMPLETED,
               timeout=180, what="the withdrawal study to complete", watch=product.processes)
    asked = query(lambda: sorted(ClientUpdate.objects.filter(round__experiment_id=withdrawal).values_list(
        "round__number", "site__slug")))
    assert [n for n, slug in asked if slug == "riverside"] == [1], asked  # never asked after round 1
    assert [n for n, slug in asked if slug == "st-marys"] == [1, 2, 3], asked

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


def make_site_admin(slug: str, username: str) -> None:
    from django.contrib.auth import get_user_model

    from clients.models import Membership, Site

    user = get_user_model().objects.create_user(username, password=PASSWORD)
    Membership.objects.create(user=user, site=Site.objects.get(slug=slug), role=Membership.Role.SITE_ADMIN)


def paused_study() -> int:
    """A three-round experiment of both sites, accepted by both, started and paused at once
    (round 1 finishes; round 2 waits for Resume)."""
    from aggregation.services.creation import create_experiment

    datasets = Dataset.objects.filter(status=Dataset.Status.READY, site__slug__in=["st-marys", "riverside"])
    experiment = create_experiment(name="Withdrawal study", datasets=list(datasets.order_by("site__slug")),
                                   num_rounds=3, local_epochs=1, min_sites=1)
    accept_invitations(experiment.pk)
    start_experiment(experiment.pk)
    pause_experiment(experiment.pk)
    return experiment.pk


def long_experiment(experiment_id: int) -> int:
    """A finished 100-round experiment of the same two sites, written to the database:
    St Mary's reported every round, Riverside every round but each tenth, and failed
    the last."""
    from django.utils import timezone

    from aggregation.models import ClientUpdate, Participant, Round
    from aggregation.reasons import Reason, text

    source = Experiment.objects.get(pk=experiment_id)
    long = Experiment.objects.create(name="Hundred rounds", schema=source.schema, num_rounds=LONG_ROUNDS,
                                     status=Experiment.Status.COMPLETED, started_at=timezone.now(),
                                     finished_at=timezone.now())
    now = timezone.now()
    for p in source.participants.all():
        Participant.objects.create(experiment=long, site=p.site, dataset=p.dataset, consent=p.consent)
    sites = {p.site.slug: p.site for p in source.participants.select_related("site")}
    for n in range(1, LONG_ROUNDS + 1):
        round_ = Round.objects.create(experiment=long, number=n, status=Round.Status.COMPLETED, deadline=now)
        ClientUpdate.objects.create(round=round_, site=sites["st-marys"], status=ClientUpdate.Status.RECEIVED)
        if n == LONG_ROUNDS:
            ClientUpdate.objects.create(round=round_, site=sites["riverside"], status=ClientUpdate.Status.FAILED,
                                        error_code=Reason.MISSED_DEADLINE, error=text(Reason.MISSED_DEADLINE))
        elif n % 10:
            ClientUpdate.objects.create(round=round_, site=sites["riverside"], status=ClientUpdate.Status.RECEIVED)
    return long.pk


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
