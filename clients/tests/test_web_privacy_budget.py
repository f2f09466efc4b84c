"""The site home shows each dataset's privacy spend and budget; only the site's admin sets
the budget, and only for the site's own datasets."""

from __future__ import annotations

import pytest
from django.urls import reverse

from aggregation.models import PrivacyBudget
from aggregation.services import privacy
from fedhealth.ml.privacy import PrivacySettings, plan_round_spend

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_a(make_user, site_a):
    return make_user("ada", site_a, role="site_admin")


def spend_one_round(dataset, make_experiment):
    experiment = make_experiment([dataset], dp_mode="record")
    spend = plan_round_spend(PrivacySettings(epsilon=2.0, rounds=3), round_number=1, rows=225, epochs=1, batch_size=32)
    privacy.reserve_round(dataset.pk, experiment, spend)
    return spend


def test_the_site_home_shows_spent_and_remaining(client, admin_a, site_a, make_dataset, make_experiment):
    dataset = make_dataset(site_a, rows=300)
    spend = spend_one_round(dataset, make_experiment)
    privacy.set_budget(dataset, 5.0)
    client.force_login(admin_a)

    page = client.get(reverse("site_home")).content.decode()

    assert f"epsilon {spend.epsilon_total:.3f}" in page
    assert f"{5.0 - spend.epsilon_total:.3f} left" in page
    assert reverse("dataset_privacy_budget", args=[dataset.pk]) in page


def test_a_site_admin_sets_and_removes_the_budget(client, admin_a, site_a, make_dataset):
    dataset = make_dataset(site_a, rows=300)
    client.force_login(admin_a)
    url = reverse("dataset_privacy_budget", args=[dataset.pk])

    assert client.post(url, {"epsilon": "4.5"}).status_code == 302
    assert PrivacyBudget.objects.get(dataset=dataset).epsilon == 4.5
    assert PrivacyBudget.objects.get(dataset=dataset).updated_by == admin_a
    response = client.post(url, {"epsilon": "-1"}, follow=True)
    assert "The privacy budget must be a number from 0 to 100, not &#x27;-1&#x27;." in response.content.decode()
    assert PrivacyBudget.objects.get(dataset=dataset).epsilon == 4.5
    client.post(url, {"epsilon": ""})
    assert not PrivacyBudget.objects.filter(dataset=dataset).exists()


def test_a_member_cannot_set_it_and_another_site_gets_404(client, alice, bob, make_user, site_a, site_b, make_dataset):
    dataset = make_dataset(site_a, rows=300)
    url = reverse("dataset_privacy_budget", args=[dataset.pk])

    client.force_login(alice)  # a member of site A, not its admin
    assert client.post(url, {"epsilon": "9"}).status_code == 403
    client.force_login(make_user("bea", site_b, role="site_admin"))  # another site's admin
    assert client.post(url, {"epsilon": "9"}).status_code == 404
    client.force_login(alice)
    assert client.get(url).status_code == 405
    assert not PrivacyBudget.objects.exists()
