"""The experiment form switches the local training settings to DP-SGD's measured ones
(DP_TRAIN_DEFAULTS: batch 256, learning rate 0.03) when record-level DP is turned on,
back when it is turned off, and never overwrites a value the coordinator typed. Real
gunicorn with the production CSP, the script served from static/, Debian's Chromium."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from aggregation.models import Experiment
from fedhealth.ml.privacy import DP_TRAIN_DEFAULTS

from .conftest import query
from .test_browser_journey import sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration, pytest.mark.timeout(300)]


def test_record_level_dp_switches_batch_and_learning_rate(product, browser):
    plain = {name: Experiment._meta.get_field(name).default for name in DP_TRAIN_DEFAULTS}
    page = browser.new_context().new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, product.url, "carol")
    page.goto(product.url + "/experiments/new/")
    batch, lr = page.locator("#id_batch_size"), page.locator("#id_lr")
    expect(batch).to_have_value(str(plain["batch_size"]))

    page.locator("input[name='dp_mode'][value='record']").check()
    expect(batch).to_have_value(str(DP_TRAIN_DEFAULTS["batch_size"]))
    expect(lr).to_have_value(str(DP_TRAIN_DEFAULTS["lr"]))

    page.locator("input[name='dp_mode'][value='off']").check()
    expect(batch).to_have_value(str(plain["batch_size"]))
    assert float(lr.input_value()) == plain["lr"]

    # A typed value stays, both ways; site-level DP (no DP-SGD) changes nothing.
    batch.fill("64")
    page.locator("input[name='dp_mode'][value='record']").check()
    expect(batch).to_have_value("64")
    expect(lr).to_have_value(str(DP_TRAIN_DEFAULTS["lr"]))
    page.locator("input[name='dp_mode'][value='site']").check()
    expect(batch).to_have_value("64")
    assert float(lr.input_value()) == plain["lr"]

    # What the form submits is what was shown: a record-level draft with DP's settings.
    batch.fill(str(DP_TRAIN_DEFAULTS["batch_size"]))
    page.locator("input[name='dp_mode'][value='record']").check()
    page.get_by_label("Experiment name").fill("DP defaults")
    page.get_by_label("Riverside Clinic").select_option(index=1)
    page.get_by_label("Minimum sites per round").fill("1")
    page.get_by_role("button", name="Save draft").click()
    page.wait_for_url(lambda url: "/experiments/new/" not in url)
    stored = query(lambda: Experiment.objects.get(name="DP defaults"))
    assert (stored.dp_mode, stored.batch_size, stored.lr) == (
        "record", DP_TRAIN_DEFAULTS["batch_size"], DP_TRAIN_DEFAULTS["lr"])
    assert errors == []
