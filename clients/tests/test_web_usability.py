"""The upload page and the dashboard as a hospital user expects them (issue 13)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from fedhealth.ml import validation as v
from fedhealth.ml.schema import DEFAULT_SCHEMA
from fedhealth.ml.synthetic import generate_site

pytestmark = pytest.mark.django_db


def post_upload(client, text: str, name: str = "Ward 7"):
    upload = SimpleUploadedFile("vitals.csv", text.encode(), content_type="text/csv")
    return client.post(reverse("dataset_upload"), {"name": name, "policy": "reject", "file": upload})


def test_the_template_csv_has_the_schemas_columns_and_a_valid_example_row(client, alice):
    client.force_login(alice)
    page = client.get(reverse("dataset_upload")).content.decode()
    response = client.get(reverse("dataset_template"))

    assert f'href="{reverse("dataset_template")}" download data-template-link' in page
    assert response["Content-Type"].startswith("text/csv")
    assert re.search(r'attachment; filename="[^"]+\.csv"', response["Content-Disposition"])
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == DEFAULT_SCHEMA.columns
    # The example row is one the validation accepts, inside every expected range (one
    # class only is a kept warning about a one-row file, not a bad value).
    report = v.validate_csv(response.content, DEFAULT_SCHEMA).report
    assert report.ok and set(report.counts) <= {v.SINGLE_CLASS}, report.format()


def test_past_ten_problems_of_a_kind_the_full_report_is_offered_as_csv(client, alice):
    frame = generate_site(40, seed=3)
    frame["heart_rate"] = frame["heart_rate"].astype(object)
    frame.loc[::2, "heart_rate"] = "abc"  # 20 bad values: 10 shown
    frame.loc[1, "spo2"] = 150
    client.force_login(alice)

    response = post_upload(client, frame.to_csv(index=False))
    html = response.content.decode()

    block = re.search(r'<script id="full-report-csv" type="application/json">(.*?)</script>', html, re.S)
    rows = list(csv.DictReader(io.StringIO(json.loads(block.group(1)))))
    assert len(rows) == 21
    assert [int(r["line"]) for r in rows] == sorted(int(r["line"]) for r in rows)  # by line
    assert {r["problem"] for r in rows} == {"Not a number", "Out of range"}
    assert rows[0] == {"line": "2", "column": "heart_rate", "problem": "Not a number", "value": "abc",
                       "details": rows[0]["details"]} and rows[0]["details"]
    assert 'data-download-from="full-report-csv"' in html and "js/download.js" in html
    assert "10 more “not a number” not listed here: they are all in the full report" in html


def test_a_short_report_lists_everything_and_offers_no_download(client, alice):
    client.force_login(alice)
    html = post_upload(client, "heart_rate,systolic_bp,diastolic_bp,spo2,healthy\nabc,120,80,98,1\n70,120,80,98,0\n").content.decode()

    assert "full-report-csv" not in html and "data-report-problems" in html


def test_the_problems_can_be_read_by_line(client, alice):
    client.force_login(alice)
    text = ("heart_rate,systolic_bp,diastolic_bp,spo2,healthy\n"
            "abc,30,80,98,1\n70,120,80,98,0\n70,120,80,,1\n")
    html = post_upload(client, text).content.decode()

    by_line = html[html.index("data-report-by-line"):html.index("</details>", html.index("data-report-by-line"))]
    lines = re.findall(r'<th scope="row" class="num">(\w+)</th>', by_line)
    assert lines == ["2", "4"]
    first = by_line[by_line.index(">2</th>"):by_line.index(">4</th>")]
    assert "<code>heart_rate</code>: not a number" in first and "<code>systolic_bp</code>: out of range" in first


def test_a_sites_row_total_counts_an_identical_copy_once(client, charlie, site_a, make_dataset):
    make_dataset(site_a, rows=300, seed=1)
    make_dataset(site_a, rows=300, seed=1)  # the same file uploaded again
    make_dataset(site_a, rows=200, seed=2)
    client.force_login(charlie)

    html = client.get(reverse("dashboard")).content.decode()
    row = html[html.index(site_a.name):html.index("</tr>", html.index(site_a.name))]

    assert 'data-rows>500</td>' in row
    assert ">2 <span" in row and "+1 identical copy, not counted" in row


def test_favicon_ico_is_served_to_anyone(client):
    response = client.get("/favicon.ico")

    assert response.status_code == 301 and response["Location"].endswith(".svg")


def test_a_sites_row_total_counts_the_datasets_in_use(client, charlie, site_a, site_b, make_dataset,
                                                      make_experiment):
    """Once a site's dataset is chosen for an experiment, its other uploads (older
    samples, test files) no longer add to its row total."""
    used = make_dataset(site_a, rows=300, seed=1)
    make_dataset(site_a, rows=200, seed=2)  # uploaded, never used
    make_experiment([used, make_dataset(site_b, rows=250, seed=3)])
    client.force_login(charlie)

    html = client.get(reverse("dashboard")).content.decode()
    row = html[html.index(site_a.name):html.index("</tr>", html.index(site_a.name))]

    assert 'data-rows>300</td>' in row
