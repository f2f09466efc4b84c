"""A hosted site's privacy ledger and budget: spend recorded before training, composed
over every experiment on the dataset, and a round refused at the budget whatever the
experiment asks (a dropout with the reason shown)."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant

from aggregation import services
from aggregation.models import ClientUpdate, PrivacyLedgerEntry
from aggregation.reasons import Reason
from aggregation.services import privacy
from fedhealth.ml.privacy import ALPHAS, composed_epsilon

pytestmark = pytest.mark.django_db


def private_experiment(make_experiment, dataset, **kwargs):
    fields = {"num_rounds": 3, "local_epochs": 1, "batch_size": 50, "dp_mode": "record", "dp_epsilon": 2.0}
    experiment = make_experiment([dataset], **(fields | kwargs))
    services.start_experiment(experiment.pk)
    return experiment


def update_for(experiment, number):
    return ClientUpdate.objects.get(round__experiment=experiment, round__number=number)


def run_round(experiment, number):
    update = update_for(experiment, number)
    outcome = services.train_hosted_update(update.pk)
    if outcome == "submitted":
        services.aggregate_round(update.round_id)
    return outcome


def test_each_round_is_recorded_before_it_is_sent_and_reaches_the_target(site_a, make_dataset, make_experiment):
    dataset = make_dataset(site_a, rows=400, seed=1)
    experiment = private_experiment(make_experiment, dataset)

    for number in (1, 2, 3):
        assert run_round(experiment, number) == "submitted"

    entries = list(PrivacyLedgerEntry.objects.filter(dataset=dataset).order_by("round_number"))
    assert [e.round_number for e in entries] == [1, 2, 3]
    assert all(e.experiment_id == experiment.pk and e.source == "hosted" for e in entries)
    # The derived noise spends the target over the experiment's 3 rounds, not far under it.
    assert 0.9 * 2.0 <= entries[-1].epsilon_total <= 2.0
    assert entries[0].epsilon_total < entries[1].epsilon_total < entries[2].epsilon_total
    assert privacy.budget_status(dataset).spent == pytest.approx(entries[-1].epsilon_total, rel=1e-9)


def test_a_site_at_its_budget_does_not_train_even_when_the_experiment_asks(site_a, make_dataset, make_experiment):
    dataset = make_dataset(site_a, rows=400, seed=1)
    # The experiment asks for epsilon 8 over 3 rounds; the site allows 6 in all.
    experiment = private_experiment(make_experiment, dataset, dp_epsilon=8.0)
    privacy.set_budget(dataset, 6.0)

    outcomes = [run_round(experiment, 1)]
    # Round 1 alone (about 5.3) fits; round 2 would cross 6 and is refused, untrained.
    second = update_for(experiment, 2)
    outcomes.append(services.train_hosted_update(second.pk))

    assert outcomes[0] == "submitted"
    assert outcomes[1] == "failed: privacy budget"
    second.refresh_from_db()
    assert second.status == ClientUpdate.Status.FAILED
    assert second.error_code == Reason.PRIVACY_BUDGET
    assert second.error.startswith(Reason.PRIVACY_BUDGET.label)
    assert "of 6.000" in second.error
    assert not second.weights_file
    # Nothing recorded for the refused round; the ledger stays within the budget.
    assert PrivacyLedgerEntry.objects.filter(dataset=dataset).count() == 1
    assert privacy.budget_status(dataset).spent <= 6.0


def test_the_ledger_is_exact_across_two_experiments_and_survives_a_restart(site_a, make_dataset, make_experiment):
    dataset = make_dataset(site_a, rows=400, seed=1)
    first = private_experiment(make_experiment, dataset, num_rounds=2, dp_epsilon=1.0)
    second = private_experiment(make_experiment, dataset, num_rounds=2, dp_epsilon=3.0, dp_clip_norm=0.5)

    for experiment in (first, second):
        for number in (1, 2):
            assert run_round(experiment, number) == "submitted"

    entries = list(PrivacyLedgerEntry.objects.filter(dataset=dataset))
    assert len(entries) == 4
    accountant = RDPAccountant()
    for e in entries:
        for _ in range(e.steps):
            accountant.step(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate)
    expected = accountant.get_epsilon(delta=max(e.delta for e in entries), alphas=list(ALPHAS))
    status = privacy.budget_status(dataset)
    assert status.spent == pytest.approx(expected, rel=1e-9)
    assert status.rounds == 4
    # More than either experiment alone, less than their sum (RDP composes sub-additively).
    assert max(entries[1].epsilon_total, entries[3].epsilon_total) < status.spent
    assert status.spent < entries[1].epsilon_total + entries[3].epsilon_total
    # "A restart": everything is read back from the database, nothing from memory.
    assert composed_epsilon(privacy.spends(dataset.pk)) == pytest.approx(status.spent, rel=1e-12)


def test_spend_is_recorded_before_training_so_a_crash_over_counts(site_a, make_dataset, make_experiment, monkeypatch):
    dataset = make_dataset(site_a, rows=400, seed=1)
    experiment = private_experiment(make_experiment, dataset)
    update = update_for(experiment, 1)

    def crash(*args, **kwargs):
        raise ValueError("the worker died while training")

    monkeypatch.setattr("aggregation.services.sitework.train_at_site", crash)
    assert services.train_hosted_update(update.pk) == "failed: training"

    assert PrivacyLedgerEntry.objects.filter(dataset=dataset, round_number=1).count() == 1


def test_settings_a_site_cannot_meet_fail_the_update_with_their_reason(site_a, make_dataset, make_experiment):
    dataset = make_dataset(site_a, rows=400, seed=1)
    # delta 0.01 is not below 1/300 training rows.
    experiment = private_experiment(make_experiment, dataset, dp_delta=0.01)
    update = update_for(experiment, 1)

    assert services.train_hosted_update(update.pk) == "failed: privacy settings"
    update.refresh_from_db()
    assert update.error_code == Reason.PRIVACY_SETTINGS
    assert not PrivacyLedgerEntry.objects.exists()
